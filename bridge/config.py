"""BridgeConfig: every setting of typemoe-bridge, validated; the CLI and the TOML file both fill it.

A TOML file mirrors the command-line flags (same names, `-` or `_`), e.g.

    midi_api = "jack"
    osc_port = 9000
    mode = "manual"
    tempo = 96.0
    condition_key = "F# major"
    condition_meter = "3/4"
    guidance = 1.5
    head_guidance = 20.0
    meter_guidance = 3.0
    key_lock = false

Flags given on the command line override the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from typemoe.infill import SUFFIX_WEIGHT, SUFFIX_WEIGHT_MAX
from typemoe.key_steering import DEFAULT_HEAD_GUIDANCE, HEAD_GUIDANCE_MAX
from typemoe.meter_steering import DEFAULT_METER_GUIDANCE, METER_GUIDANCE_MAX
from typemoe.sampling import DEFAULT_GUIDANCE

MIDI_APIS = ("auto", "alsa", "jack", "coremidi", "winmm")
CLOCK_SOURCES = ("auto", "internal", "midi")
MODES = ("respond", "manual", "analyze")
DEFAULT_TRIGGER_CC = 20  # CC 20 is "undefined" in the MIDI spec, so no controller sends it by accident


@dataclass(kw_only=True)
class BridgeConfig:
    """Settings of one bridge run. Field names are the CLI flags with `_` for `-`."""

    # -- MIDI ----------------------------------------------------------------------------------------
    midi_api: str = "auto"  # auto | alsa | jack | coremidi | winmm
    in_port: str = "TypeMoE In"  # name of the virtual input port we open
    out_port: str = "TypeMoE Out"  # name of the virtual output port we open
    connect_in: str | None = None  # connect to an existing input port whose name contains this instead
    connect_out: str | None = None  # connect to an existing output port whose name contains this instead
    no_midi: bool = False  # OSC only: open no MIDI port at all
    out_channel: int = 1  # MIDI channel 1..16 of generated notes
    trigger_cc: int = (
        DEFAULT_TRIGGER_CC  # CC number whose rising edge (value >= 64) asks for a continuation; -1 = none
    )
    port_check_s: float = 0.5  # how often a --connect-* port that vanished is looked for again

    # -- OSC -----------------------------------------------------------------------------------------
    osc_host: str = "127.0.0.1"  # address the OSC server binds (0.0.0.0 opens it to the network)
    osc_port: int = 9000  # OSC input port (UDP)
    reply_host: str = "127.0.0.1"  # where /typemoe/key, /note, /error, /pong go
    reply_port: int = 9001

    # -- clock ---------------------------------------------------------------------------------------
    clock: str = "auto"  # auto: follow MIDI beat clock while it arrives, else internal | internal | midi
    tempo: float = 120.0  # internal clock tempo (BPM); /typemoe/tempo changes it
    latency_ms: float = 0.0  # send notes this much before they are due (the DAW's output latency)

    # -- model and generation --------------------------------------------------------------------------
    model: str | None = None  # exported model directory, or "toy" (rule-based stand-in to test routing)
    provider: str = "auto"  # ONNX Runtime provider: auto | cpu | cuda
    mode: str = "respond"  # respond | manual | analyze
    respond_after_beats: float = 2.0  # respond mode: answer after this many beats of silence
    bars: float = 2.0  # length of a manual continuation (bars of 4 beats)
    max_bars: float = 8.0  # longest continuation, also for respond mode's "about the call's length"
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int | None = None  # sampling seed; None = a new one each time
    condition_key: str = ""  # "" = free; e.g. "A minor" (same as /typemoe/condition)
    condition_meter: str = ""  # "" = free; e.g. "6/8"; continuations start on its bar lines
    guidance: float = DEFAULT_GUIDANCE  # classifier-free guidance of a condition (>= 1; 1 = off)
    head_guidance: float = DEFAULT_HEAD_GUIDANCE  # pitches steered to condition_key by the key head (0 = off)
    meter_guidance: float = DEFAULT_METER_GUIDANCE  # condition_meter's bars accented (0 = off)
    key_lock: bool = False  # only pitches of condition_key's scale (else of the key being reported)
    suffix_weight: float = SUFFIX_WEIGHT  # infill: 0 = the continuation reading, 1 = the infilling one

    # -- robustness and reporting ----------------------------------------------------------------------
    inbox_size: int = 4096  # events waiting for the loop; more are dropped and counted
    max_notes_per_s: float = 200.0  # performer notes entering the model stream; a flood beyond is dropped
    max_note_beats: float = 16.0  # a held note ends for the model after this long (lost note-offs)
    analysis_every_note: bool = False  # send /typemoe/key and /meter after every update, not only on change
    stats_every_s: float = 30.0  # log latency percentiles this often (0 = never)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _choice("midi_api", self.midi_api, MIDI_APIS)
        _choice("clock", self.clock, CLOCK_SOURCES)
        _choice("mode", self.mode, MODES)
        _choice("provider", self.provider, ("auto", "cpu", "cuda"))
        _range("out_channel", self.out_channel, 1, 16)
        if not (self.trigger_cc == -1 or 0 <= self.trigger_cc <= 127):
            raise ValueError(f"trigger_cc must be 0..127 or -1 (none), got {self.trigger_cc}")
        _range("osc_port", self.osc_port, 1, 65535)
        _range("reply_port", self.reply_port, 1, 65535)
        _range("tempo", self.tempo, 20.0, 400.0)
        _range("latency_ms", self.latency_ms, 0.0, 500.0)
        _range("respond_after_beats", self.respond_after_beats, 0.25, 64.0)
        _range("max_bars", self.max_bars, 0.25, 64.0)
        _range("bars", self.bars, 0.25, self.max_bars)
        _range("temperature", self.temperature, 0.0, 5.0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        g = self.guidance
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 1.0 <= g < math.inf:
            raise ValueError(f"guidance must be a number >= 1 (1 = off), got {self.guidance!r}")
        _range("suffix_weight", self.suffix_weight, 0.0, SUFFIX_WEIGHT_MAX)
        _range("head_guidance", self.head_guidance, 0.0, HEAD_GUIDANCE_MAX)
        _range("meter_guidance", self.meter_guidance, 0.0, METER_GUIDANCE_MAX)
        if not isinstance(self.key_lock, bool):
            raise ValueError(f"key_lock must be true or false (1 or 0), got {self.key_lock!r}")
        _range("inbox_size", self.inbox_size, 16, 1_000_000)
        _range("max_notes_per_s", self.max_notes_per_s, 1.0, 100_000.0)
        _range("max_note_beats", self.max_note_beats, 1.0, 1024.0)
        _range("port_check_s", self.port_check_s, 0.05, 60.0)
        if not (self.in_port and self.out_port):
            raise ValueError("in_port and out_port names must not be empty")

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000.0


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _range(name: str, value: float, lo: float, hi: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or not lo <= value <= hi
    ):
        raise ValueError(f"{name} must be a number in {lo}..{hi}, got {value!r}")


FIELD_NAMES = tuple(f.name for f in fields(BridgeConfig))


def load_toml(path: str | Path) -> dict[str, object]:
    """Read a TOML config file into {field: value}; unknown keys raise ValueError naming them."""
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as err:
            raise ValueError("reading a TOML config on Python 3.10 needs `pip install tomli`") from err
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read config file {p}: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{p} is not valid TOML: {err}") from err
    out = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(out) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown settings in {p}: {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}")
    return out


def make_config(file_values: dict[str, object] | None = None, **overrides: object) -> BridgeConfig:
    """Defaults <- TOML values <- explicit overrides (None overrides are ignored). Validates once."""
    values: dict[str, object] = dict(file_values or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return BridgeConfig(**values)
