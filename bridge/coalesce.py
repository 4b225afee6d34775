"""Coalescing of OSC control messages: last value wins per address within a short window. Pure, no I/O.

A Max dial mapped to /typemoe/condition sends a value per pixel, 100 a second or more; each change would
re-prefill the model's context. The first message after a quiet window goes through at once (a single
change is not delayed); later ones within `window_s` of it are held, each replacing the one held before,
and the last is released when the window ends. Keys: the address, plus the setting name for /typemoe/set
(two different settings never replace each other).

    co = Coalescer(0.05)
    for msg in co.admit(osc_in, now): handle(msg)      # 0 or 1 message
    for msg in co.due(now): handle(msg)                 # held messages whose window ended
    co.deadline()                                       # when due() next has something, or None
"""

from __future__ import annotations

from typemoe.bridge.events import OscIn

CONTROL_ADDRESSES = ("/typemoe/condition", "/typemoe/tempo", "/typemoe/set")


def _key(msg: OscIn) -> tuple:
    if msg.address == "/typemoe/set" and msg.args and isinstance(msg.args[0], str):
        return (msg.address, msg.args[0])
    return (msg.address,)


class Coalescer:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[tuple, float] = {}  # key -> when one last went through
        self._held: dict[tuple, OscIn] = {}
        self.coalesced = 0  # messages replaced before they ran

    def admit(self, msg: OscIn, now: float) -> list[OscIn]:
        """The messages to handle now for `msg`: itself, or nothing when it is held."""
        if msg.address not in CONTROL_ADDRESSES:
            return [msg]
        key = _key(msg)
        if key not in self._held and now - self._last.get(key, -1e18) >= self.window_s:
            self._last[key] = now
            return [msg]
        if key in self._held:
            self.coalesced += 1
        self._held[key] = msg
        return []

    def due(self, now: float) -> list[OscIn]:
        """Held messages whose window has ended, in the order they arrived."""
        ready = [k for k in self._held if now - self._last.get(k, -1e18) >= self.window_s]
        out = sorted((self._held.pop(k) for k in ready), key=lambda m: m.t)
        for k in ready:
            self._last[k] = now
        return out

    def deadline(self) -> float | None:
        if not self._held:
            return None
        return min(self._last[k] + self.window_s for k in self._held)
