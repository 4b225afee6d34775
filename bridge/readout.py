"""The key and meter the bridge reports (/typemoe/key, /typemoe/meter), with hysteresis. Pure.

    readout = Readout(key_names, meter_names)
    key_new, meter_new, key_changed = readout.update(key_probs, meter_probs, provisional=False)
    readout.key, readout.meter            # (name, probability) or None before the first analysis

The reported key (meter) changes only when the new estimate's probability beats the reported one's, in the
same final analysis, by a margin; a provisional analysis (held notes, lengths so far) refreshes the
confidence but never changes the estimate: changes need the final notes.
"""

from __future__ import annotations

import math

# Relative keys (A major / F# minor) share their notes and their probabilities cross back and forth on
# ambiguous bars. Measured with `typemoe.bridge.bench` on the demo chorale (first 96 beats, the shipped model): 26.6
# key changes a minute at 0.15 when provisional analyses could change the key, 10.6 at 0.15 without, 5.3 at
# 0.25 without; a real modulation moves the probabilities by more and gets through.
KEY_MARGIN = 0.25
METER_MARGIN = 0.15


def hold(names: list[str], probs, current: tuple[str, float] | None, margin: float) -> tuple[str, float]:
    """The estimate to report: the argmax, unless the reported one is within `margin` of it."""
    best = int(probs.argmax())
    if current is not None and current[0] in names:
        i = names.index(current[0])
        if float(probs[best]) < float(probs[i]) + margin:
            best = i
    return names[best], float(probs[best])


class Readout:
    def __init__(self, key_names, meter_names) -> None:
        self.key_names, self.meter_names = list(key_names), list(meter_names)
        self.key: tuple[str, float] | None = None
        self.meter: tuple[str, float] | None = None

    def reset(self) -> None:
        self.key = self.meter = None

    def update(
        self, key_probs, meter_probs, *, provisional: bool, every: bool = False
    ) -> tuple[bool, bool, bool]:
        """Take one analysis: (report the key?, report the meter?, did the key change?).

        `every` reports both after every update, not only on change (analysis_every_note).
        """
        margin = math.inf if provisional else 0.0
        key = hold(self.key_names, key_probs, self.key, KEY_MARGIN + margin)
        meter = hold(self.meter_names, meter_probs, self.meter, METER_MARGIN + margin)
        changed = self.key is not None and self.key[0] != key[0]
        new_key = self.key is None or changed or every
        new_meter = self.meter is None or self.meter[0] != meter[0] or every
        self.key, self.meter = key, meter
        return new_key, new_meter, changed
