"""The OSC protocol as one table (`ADDRESSES`): address -> argument checking -> a typed command.

Pure: no sockets. `parse_command(address, args)` returns a command object or raises `OscInputError` whose
message is what /typemoe/error replies. Max sends integers as `i`, Pd sends every number as `f`: numeric
arguments accept both (an integer argument must be a whole number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typemoe.bridge import config

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
class InfillCmd:
    start_bar: int  # 1-based, inclusive
    end_bar: int


@dataclass(frozen=True)
class SimpleCmd:
    name: str  # reset | panic | ping


# Settings /typemoe/set may change at run time (others need a restart: ports, model, OSC addresses).
SETTABLE = (
    "temperature",
    "top_p",
    "guidance",
    "key_lock",
    "head_guidance",
    "meter_guidance",
    "suffix_weight",
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
        raise OscInputError(f"{what} must be a number, got {_short(x)}")
    return float(x)


def _integer(x: object, what: str, lo: int, hi: int) -> int:
    v = _number(x, what)
    if v != int(v) or not lo <= v <= hi:
        raise OscInputError(f"{what} must be a whole number in {lo}..{hi}, got {_short(x)}")
    return int(v)


def _string(x: object, what: str) -> str:
    if not isinstance(x, str):
        raise OscInputError(f"{what} must be a string, got {_short(x)}")
    return x


def _free(x: str) -> str:
    """ "" means free; so do "free", "none" and "-" (Pd cannot type an empty symbol)."""
    return "" if x.strip().lower() in ("", "free", "none", "-") else x


def _note(args: tuple) -> NoteCmd:
    channel = _integer(args[2], "channel", 1, 16) - 1 if len(args) == 3 else 0
    return NoteCmd(_integer(args[0], "pitch", 0, 127), _integer(args[1], "velocity", 0, 127), channel)


def _continue(args: tuple) -> ContinueCmd:
    if not args:
        return ContinueCmd(None)
    bars = _number(args[0], "bars")
    if not 0.25 <= bars <= 64:
        raise OscInputError(f"bars must be in 0.25..64, got {bars}")
    return ContinueCmd(bars)


def _condition(args: tuple) -> ConditionCmd:
    key = _free(_string(args[0], "key"))
    return ConditionCmd(key, _free(_string(args[1], "meter")) if len(args) > 1 else "")


def _tempo(args: tuple) -> TempoCmd:
    bpm = _number(args[0], "bpm")
    if not 20 <= bpm <= 400:
        raise OscInputError(f"bpm must be in 20..400, got {bpm}")
    return TempoCmd(bpm)


def _infill(args: tuple) -> InfillCmd:
    start = _integer(args[0], "start_bar", 1, 100_000)
    end = _integer(args[1], "end_bar", 1, 100_000)
    if start > end:
        raise OscInputError(f"start_bar {start} is after end_bar {end}")
    return InfillCmd(start, end)


def _set(args: tuple) -> SetCmd:
    key = _string(args[0], "setting name")
    key = _ALIASES.get(key, key)
    if key not in SETTABLE:
        raise OscInputError(f"unknown setting {_short(args[0])}; settable: {', '.join(SETTABLE)}")
    return SetCmd(key, _coerce(key, args[1]))


@dataclass(frozen=True)
class Address:
    """One row of the protocol: /typemoe/<name>, its arguments, what it does, and its parser."""

    name: str
    min_args: int
    max_args: int
    usage: str
    doc: str
    parse: object  # (args) -> command


# The whole input protocol. The help text (`table_text`) and the examples' tables (`markdown_table`) are
# generated from it; an address not listed here is an error, never a default action.
ADDRESSES = (
    Address(
        "note",
        2,
        3,
        "pitch i, velocity i [, channel i 1-16]",
        "a live note, as if from MIDI (velocity 0 = off)",
        _note,
    ),
    Address("continue", 0, 1, "[bars f]", "generate a continuation now", _continue),
    Address(
        "condition",
        1,
        2,
        "key s [, meter s]",
        'steer key/meter ("" or "free" = free); continuations start on the meter\'s bar lines',
        _condition,
    ),
    Address(
        "infill",
        2,
        2,
        "start_bar i, end_bar i",
        "new notes for those heard bars (1-based, of the music's meter), between the bars around them",
        _infill,
    ),
    Address("tempo", 1, 1, "bpm f", "internal clock tempo (refused while following MIDI clock)", _tempo),
    Address(
        "set",
        2,
        2,
        "name s, value",
        "a setting (see settable), e.g. guidance 1.5 (>= 1, 1 = off), key_lock 1, seed -1 (random)",
        _set,
    ),
    Address("reset", 0, 0, "", "forget the context (the condition stays)", lambda a: SimpleCmd("reset")),
    Address(
        "panic",
        0,
        0,
        "",
        "note-off for every note it plays, then All Notes Off",
        lambda a: SimpleCmd("panic"),
    ),
    Address("ping", 0, 0, "", "answered with /typemoe/pong", lambda a: SimpleCmd("ping")),
)
_BY_NAME = {a.name: a for a in ADDRESSES}
REPLIES = (
    (
        "key",
        "name s, confidence f",
        "the key estimate: when it changes (it must lead the reported one by a margin) and every bar; "
        "a held chord is analysed at its note-on",
    ),
    ("meter", "name s, confidence f", "the meter estimate: the same"),
    (
        "note",
        "pitch i, velocity i, onset_beats f, duration_beats f",
        "each generated note, when it sounds (onset on the bridge's beat timeline)",
    ),
    (
        "infill",
        "first_bar i, last_bar i, notes i, beat f",
        "an infill's notes are scheduled; beat is where its first bar starts",
    ),
    ("error", "message s", "a bad message or a failure (rate-limited); the bridge keeps running"),
    ("pong", "", "the answer to /typemoe/ping"),
)


def table_text() -> str:
    """The protocol as a plain-text table (CLI help, docs)."""
    rows = ["OSC in (to --osc-port):"]
    rows += [f"  {PREFIX}{a.name:<10} {a.usage:<36} {a.doc}" for a in ADDRESSES]
    rows.append("OSC out (to --reply-port):")
    rows += [f"  {PREFIX}{n:<10} {u:<36} {d}" for n, u, d in REPLIES]
    rows.append("settable: " + ", ".join(SETTABLE))
    return "\n".join(rows)


def markdown_table(in_port: int = 9000, out_port: int = 9001) -> str:
    """The protocol as the Markdown tables of examples/README.md (between its osc-table markers; a test
    keeps them equal: `python -m typemoe.bridge.osc_api` prints them)."""
    rows = [f"| in (to {in_port}) | arguments | effect |", "| --- | --- | --- |"]
    rows += [f"| `{PREFIX}{a.name}` | {a.usage} | {a.doc} |" for a in ADDRESSES]
    rows += ["", f"| out (to {out_port}) | arguments | when |", "| --- | --- | --- |"]
    rows += [f"| `{PREFIX}{n}` | {u} | {d} |" for n, u, d in REPLIES]
    rows += ["", "Settable with `/typemoe/set`: " + ", ".join(f"`{s}`" for s in SETTABLE) + "."]
    return "\n".join(rows)


def _short(x: object, limit: int = 80) -> str:
    text = repr(x) if not isinstance(x, tuple) or len(x) < 16 else f"({len(x)} values)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_command(address: str, args: tuple):
    """Check one incoming message and turn it into a command.

    Raises:
        OscInputError: unknown address, wrong argument count or types, values out of range.
    """
    if not address.startswith(PREFIX):
        raise OscInputError(f"unknown address {_short(address)}; the bridge listens to /typemoe/...")
    row = _BY_NAME.get(address[len(PREFIX) :])
    if row is None:
        raise OscInputError(f"unknown address {_short(address)}; known: {', '.join(_BY_NAME)}")
    if not row.min_args <= len(args) <= row.max_args:
        usage = row.usage or "no arguments"
        raise OscInputError(f"{address} takes {usage}; got {len(args)} argument(s) {_short(args)}")
    return row.parse(args)


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


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown_table() + "\n")
