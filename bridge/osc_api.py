"""The OSC address table (DESIGN.md section 8): address -> argument checking -> a typed command.

Pure: no sockets. `parse_command(address, args)` returns a command object or raises `OscInputError` whose
message is what /typemoe/error replies. Max sends integers as `i`, Pd sends every number as `f`: numeric
arguments accept both (an integer argument must be a whole number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bridge import config

PREFIX = "/typemoe/"


class OscInputError(ValueError):
    """A message the bridge cannot act on; the text is sent back as /typemoe/error."""


@dataclass(frozen=True)
class NoteCmd:
    pitch: int
    velocity: int
    channel: int  # 0..15


@dataclass(frozen=True)
class ContinueCmd:
    bars: float | None


@dataclass(frozen=True)
class ConditionCmd:
    key: str
    meter: str


@dataclass(frozen=True)
class TempoCmd:
    bpm: float


@dataclass(frozen=True)
class SetCmd:
    name: str
    value: object


@dataclass(frozen=True)
class SimpleCmd:
    name: str  # reset | panic | ping


# Settings /typemoe/set may change at run time (others need a restart: ports, model, OSC addresses).
SETTABLE = (
    "temperature",
    "top_p",
    "bars",
    "max_bars",
    "mode",
    "respond_after_beats",
    "latency_ms",
    "seed",
    "trigger_cc",
    "out_channel",
    "analysis_every_note",
    "max_notes_per_s",
    "max_note_beats",
)
_ALIASES = {"respond_after": "respond_after_beats", "latency": "latency_ms", "channel": "out_channel"}
_FIELD_TYPES = {f: t for f, t in config.BridgeConfig.__annotations__.items()}


def _number(x: object, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise OscInputError(f"{what} must be a number, got {x!r}")
    return float(x)


def _integer(x: object, what: str, lo: int, hi: int) -> int:
    v = _number(x, what)
    if v != int(v) or not lo <= v <= hi:
        raise OscInputError(f"{what} must be a whole number in {lo}..{hi}, got {x!r}")
    return int(v)


def _string(x: object, what: str) -> str:
    if not isinstance(x, str):
        raise OscInputError(f"{what} must be a string, got {x!r}")
    return x


def _free(x: str) -> str:
    """ "" means free; so do "free", "none" and "-" (Pd cannot type an empty symbol)."""
    return "" if x.strip().lower() in ("", "free", "none", "-") else x


def _arity(address: str, args: tuple, lo: int, hi: int, usage: str) -> None:
    if not lo <= len(args) <= hi:
        raise OscInputError(f"{address} takes {usage}; got {len(args)} argument(s) {args!r}")


def parse_command(address: str, args: tuple):
    """Check one incoming message and turn it into a command.

    Raises:
        OscInputError: unknown address, wrong argument count or types, values out of range.
    """
    if not address.startswith(PREFIX):
        raise OscInputError(f"unknown address {address!r}; the bridge listens to /typemoe/...")
    name = address[len(PREFIX) :]
    if name == "note":
        _arity(address, args, 2, 3, "pitch i, velocity i [, channel i]")
        channel = _integer(args[2], "channel", 1, 16) - 1 if len(args) == 3 else 0
        return NoteCmd(_integer(args[0], "pitch", 0, 127), _integer(args[1], "velocity", 0, 127), channel)
    if name == "continue":
        _arity(address, args, 0, 1, "[bars f]")
        if not args:
            return ContinueCmd(None)
        bars = _number(args[0], "bars")
        if not 0.25 <= bars <= 64:
            raise OscInputError(f"bars must be in 0.25..64, got {bars}")
        return ContinueCmd(bars)
    if name == "condition":
        _arity(address, args, 1, 2, 'key s, meter s ("" or "free" = free)')
        key = _free(_string(args[0], "key"))
        return ConditionCmd(key, _free(_string(args[1], "meter")) if len(args) > 1 else "")
    if name == "tempo":
        _arity(address, args, 1, 1, "bpm f")
        bpm = _number(args[0], "bpm")
        if not 20 <= bpm <= 400:
            raise OscInputError(f"bpm must be in 20..400, got {bpm}")
        return TempoCmd(bpm)
    if name == "set":
        _arity(address, args, 2, 2, "name s, value")
        key = _string(args[0], "setting name")
        key = _ALIASES.get(key, key)
        if key not in SETTABLE:
            raise OscInputError(f"unknown setting {args[0]!r}; settable: {', '.join(SETTABLE)}")
        return SetCmd(key, _coerce(key, args[1]))
    if name in ("reset", "panic", "ping"):
        _arity(address, args, 0, 0, "no arguments")
        return SimpleCmd(name)
    raise OscInputError(
        f"unknown address {address!r}; known: note, continue, condition, tempo, set, reset, panic, ping"
    )


def _coerce(name: str, value: object) -> object:
    kind = _FIELD_TYPES[name]
    if kind == "float":
        return _number(value, name)
    if kind == "int":
        return _integer(value, name, -(2**31), 2**31 - 1)
    if kind == "int | None":  # seed: -1 means "random each time"
        v = _integer(value, name, -1, 2**31 - 1)
        return None if v == -1 else v
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off"):
            return value.lower() in ("true", "on")
        return bool(_integer(value, name, 0, 1))
    return _string(value, name)
