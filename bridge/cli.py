"""typemoe-bridge: live MIDI/OSC in, key/meter analysis and continuations out.

    typemoe-bridge                                  # virtual ports "TypeMoE In"/"TypeMoE Out", OSC 9000 -> 9001
    typemoe-bridge --list-ports [--midi-api jack]
    typemoe-bridge --connect-in "loopMIDI In" --connect-out "loopMIDI Out"    # Windows
    typemoe-bridge --mode manual --trigger-cc 20 --tempo 96
    typemoe-bridge --config bridge.toml              # same settings as TOML; flags win
    typemoe-bridge --demo [--model toy]              # built-in tune, no DAW; writes demo_continuation.mid

Runs in the foreground, logs to stderr, stops on Ctrl-C / SIGTERM with every note off.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from typemoe.bridge import config, osc_api
from typemoe.bridge.config import BridgeConfig

log = logging.getLogger("bridge")

_HELP = {
    "midi_api": "MIDI backend",
    "in_port": "name of the virtual input port",
    "out_port": "name of the virtual output port",
    "connect_in": "connect to an existing input port whose name contains NAME (Windows: a loopMIDI port)",
    "connect_out": "connect to an existing output port whose name contains NAME",
    "no_midi": "open no MIDI ports (OSC only)",
    "out_channel": "MIDI channel of generated notes (1-16)",
    "trigger_cc": "CC number whose rising edge (>= 64) asks for a continuation; -1 = none",
    "port_check_s": "seconds between checks of the JACK server and of --connect-* ports",
    "osc_host": "address the OSC server binds; anything but loopback lets the network drive the bridge",
    "osc_port": "OSC input port",
    "reply_host": "host that receives OSC replies",
    "reply_port": "port that receives OSC replies",
    "clock": "auto: follow MIDI beat clock when it arrives; internal; midi",
    "tempo": "internal tempo, BPM",
    "latency_ms": "send notes this much early: the DAW's output latency (see examples/README.md)",
    "model": "exported model directory, or 'toy' (rule-based, to test routing); none = the shipped model",
    "provider": "ONNX Runtime provider",
    "mode": "respond (call and response) | manual | analyze",
    "respond_after_beats": "respond mode: beats of silence before answering",
    "bars": "length of a manual continuation in bars",
    "max_bars": "longest continuation in bars",
    "temperature": "sampling temperature (0 = greedy)",
    "top_p": "nucleus sampling mass",
    "seed": "sampling seed; none = a new one each time",
    "condition_key": "steer generation to a key, e.g. 'A minor'",
    "condition_meter": "steer generation to a meter, e.g. '6/8'; continuations start on its bar lines",
    "guidance": "classifier-free guidance weight of the condition, >= 1 (1 = off; costs a second decode)",
    "key_lock": "only pitches of --condition-key's scale (without one: of the key being reported)",
    "head_guidance": "steer the pitches toward --condition-key by the model's own ear for keys (0 = off; each pitch "
    "costs a few more decode steps)",
    "meter_guidance": "accent the bars of --condition-meter: onsets on its strong positions, a long downbeat, the "
    "bar before's rhythm (0 = off; costs nothing measurable)",
    "suffix_weight": "infill: how far new bars lean from continuing the bars before them toward the bars after "
    "them (0-4; 1 = the infilling reading alone, no second stream)",
    "inbox_size": "events queued before dropping",
    "max_notes_per_s": "performer notes per second entering the model; more are dropped",
    "max_note_beats": "a note held longer ends for the model (lost note-offs)",
    "analysis_every_note": "send /typemoe/key and /meter after every update, not only on change",
    "stats_every_s": "log latency statistics this often (0 = never)",
    "log_level": "DEBUG, INFO, WARNING",
}


_METAVAR = {
    "connect_in": "NAME",
    "connect_out": "NAME",
    "tempo": "BPM",
    "temperature": "T",
    "model": "DIR",
    "guidance": "G",
    "suffix_weight": "W",
    "head_guidance": "W",
    "meter_guidance": "W",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="typemoe-bridge",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=osc_api.table_text(),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below")
    p.add_argument("--list-ports", action="store_true", help="list MIDI ports and exit")
    p.add_argument("--demo", action="store_true", help="play a built-in tune through the bridge and exit")
    p.add_argument(
        "--demo-out", default="demo_continuation.mid", metavar="FILE", help="MIDI file the demo writes"
    )
    p.add_argument(
        "--demo-tune", default=None, metavar="TUNE", help="demo tune: a MIDI file, or a music21 corpus name"
    )
    p.add_argument("--demo-tempo", type=float, default=300.0, metavar="BPM", help="demo tempo (BPM)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every event (DEBUG)")
    defaults = BridgeConfig()
    for f in config.fields(BridgeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        default = getattr(defaults, f.name)
        shown = "none" if default in (None, "") else default
        help_text = _HELP[f.name] if kind == "bool" else f"{_HELP[f.name]} (default: {shown})"
        if kind == "bool":
            p.add_argument(flag, action="store_const", const=True, default=None, help=help_text)
        else:
            caster = {"int": int, "float": float, "int | None": int}.get(kind, str)
            choices = {
                "midi_api": config.MIDI_APIS,
                "clock": config.CLOCK_SOURCES,
                "mode": config.MODES,
                "provider": ("auto", "cpu", "cuda"),
            }.get(f.name)
            p.add_argument(
                flag,
                type=caster,
                default=None,
                choices=choices,
                help=help_text,
                metavar=_METAVAR.get(f.name, f.name.split("_")[-1].upper()) if choices is None else None,
            )
    return p


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("typemoe")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _check_condition(cfg: BridgeConfig) -> None:
    """A bad --condition-key/--condition-meter is a usage error before anything opens (ValueError)."""
    from typemoe import analysis

    if cfg.condition_key:
        try:
            analysis.parse_key(cfg.condition_key)
        except ValueError as err:
            raise ValueError(f"--condition-key: {err}") from None
    if cfg.condition_meter:
        try:
            analysis.parse_meter(cfg.condition_meter)
        except ValueError as err:
            raise ValueError(f"--condition-meter: {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in config.fields(BridgeConfig)}
    try:
        file_values = config.load_toml(args.config) if args.config else {}
        cfg = config.make_config(file_values, **overrides)
        _check_condition(cfg)
    except ValueError as err:
        print(f"typemoe-bridge: {err}", file=sys.stderr)
        return 2
    level = "DEBUG" if args.verbose else ("WARNING" if args.demo else cfg.log_level.upper())
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if args.list_ports:
        return _list_ports(cfg)
    from typemoe.bridge.demo import DemoTuneError
    from typemoe.bridge.midi_io import MidiSetupError
    from typemoe.bridge.model import ModelNotFoundError, load_model

    try:
        if args.demo:
            return _demo(args, cfg)
        model = load_model(cfg.model, provider=cfg.provider)
        from typemoe.bridge.daemon import Bridge

        return asyncio.run(Bridge(cfg, model).run())
    except (ModelNotFoundError, MidiSetupError, DemoTuneError, OSError) as err:
        print(f"typemoe-bridge: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the loop installed its handler
        return 0


def _list_ports(cfg: BridgeConfig) -> int:
    from typemoe.bridge.midi_io import MidiSetupError, list_ports

    try:
        ports = list_ports(cfg.midi_api)
    except MidiSetupError as err:
        print(f"typemoe-bridge: {err}", file=sys.stderr)
        return 2
    print(f"MIDI API: {ports['api']}")
    for kind, flag in (("inputs", "--connect-in"), ("outputs", "--connect-out")):
        print(
            f"ports to read from ({flag} NAME):" if kind == "inputs" else f"ports to write to ({flag} NAME):"
        )
        for name in ports[kind] or ["(none)"]:
            print(f"  {name}")
    return 0


def _demo(args, cfg: BridgeConfig) -> int:
    from typemoe.bridge.demo import run_demo
    from typemoe.bridge.model import ModelNotFoundError, load_model

    try:
        model = load_model(cfg.model, provider=cfg.provider)
    except ModelNotFoundError as err:
        if cfg.model is not None:
            raise
        log.warning("%s -- the demo uses the toy stand-in meanwhile", err)
        model = load_model("toy")
    return run_demo(
        cfg,
        model,
        out_path=Path(args.demo_out),
        tune_source=args.demo_tune,
        tempo=args.demo_tempo,
        bars=cfg.bars if cfg.bars != BridgeConfig().bars else 4.0,
        emit=print,
    )


if __name__ == "__main__":
    sys.exit(main())
