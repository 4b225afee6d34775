"""Raw MIDI bytes -> the few message kinds the engine cares about.

Tolerant by design: SysEx, running status (data bytes without a status byte, reusing the last channel
status), out-of-range or truncated messages, and real-time bytes are all handled; anything unusable
returns None and is counted by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

NOTE_OFF, NOTE_ON, CONTROL_CHANGE = 0x80, 0x90, 0xB0
CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
ALL_NOTES_OFF = 123
_DATA_LEN = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}


@dataclass(frozen=True, slots=True)
class Note:
    pitch: int
    velocity: int  # 0 = off
    channel: int  # 0..15


@dataclass(frozen=True, slots=True)
class Control:
    number: int
    value: int
    channel: int


@dataclass(frozen=True, slots=True)
class Realtime:
    status: int  # CLOCK, START, CONTINUE, STOP


@dataclass(frozen=True, slots=True)
class SongPosition:
    sixteenths: int


Parsed = Note | Control | Realtime | SongPosition


class MidiParser:
    """Stateful only for running status."""

    def __init__(self) -> None:
        self._running: int | None = None

    def parse(self, data: tuple[int, ...] | list[int] | bytes) -> list[Parsed]:
        """All messages in one packet (a packet may hold several with running status)."""
        out: list[Parsed] = []
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if not 0 <= b <= 0xFF:
                return out
            if b >= 0xF8:  # real-time bytes may appear anywhere, even inside other messages
                if b in (CLOCK, START, CONTINUE, STOP):
                    out.append(Realtime(b))
                i += 1
                continue
            if b == 0xF0:  # SysEx: skip to its end; cancels running status
                self._running = None
                end = next((j for j in range(i + 1, n) if data[j] == 0xF7), n - 1)
                i = end + 1
                continue
            if b >= 0xF0:  # system common
                self._running = None
                if b == SONG_POSITION and i + 2 < n and data[i + 1] < 0x80 and data[i + 2] < 0x80:
                    out.append(SongPosition(data[i + 1] | (data[i + 2] << 7)))
                    i += 3
                else:
                    i += 1 + {0xF1: 1, 0xF2: 2, 0xF3: 1}.get(b, 0)
                continue
            if b >= 0x80:
                status, i = b, i + 1
                self._running = status
            elif self._running is not None:
                status = self._running
            else:
                i += 1  # stray data byte
                continue
            k = _DATA_LEN[status & 0xF0]
            args = list(data[i : i + k])
            if len(args) < k or any(not 0 <= a < 0x80 for a in args):
                return out  # truncated or corrupt: drop the rest of the packet
            i += k
            kind, ch = status & 0xF0, status & 0x0F
            if kind == NOTE_ON:
                out.append(Note(args[0], args[1], ch))
            elif kind == NOTE_OFF:
                out.append(Note(args[0], 0, ch))
            elif kind == CONTROL_CHANGE:
                out.append(Control(args[0], args[1], ch))
        return out


def note_on(pitch: int, velocity: int, channel: int) -> tuple[int, int, int]:
    return (NOTE_ON | channel, pitch, velocity)


def note_off(pitch: int, channel: int) -> tuple[int, int, int]:
    return (NOTE_OFF | channel, pitch, 0)


def all_notes_off(channel: int) -> tuple[int, int, int]:
    return (CONTROL_CHANGE | channel, ALL_NOTES_OFF, 0)
