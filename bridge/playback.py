"""The generated notes scheduled and sounding, and the releases that end them. Pure: the engine drives it.

    play = Playback()
    play.schedule(note)                          # a BeatNote on the timeline
    play.due(horizon_beat, channel, now, out)    # note-ons/offs whose beat has come, into `out`
    play.stop(now, out, force=False)             # note-off for each sounding note, All Notes Off
    play.confirm_due(now, out)                   # the delayed second release

Every note-on is matched by a note-off on the channel it was played on, whatever stops it.
"""

from __future__ import annotations

import heapq

from typemoe.bridge import midi_parse as mp
from typemoe.bridge.events import SendMidi, SendOsc
from typemoe.streaming import BeatNote

# A stop that cut sounding notes sends their note-offs again this much later (and All Notes Off on the
# channels used once nothing sounds), and a continuation that ended by itself gets the same late All Notes
# Off: a MIDI link that loses events under load then still ends every note. (Measured: a JACK dummy server
# at 64-frame periods with both cores busy lost 48 of 11,840 events between two plain rtmidi clients, none
# when idle; the losses are single events in overrun periods, so a second release 60 ms later gets
# through.) 60 ms is a few audio periods at any common size and well under a beat.
CONFIRM_S = 0.06


class Playback:
    def __init__(self) -> None:
        self.queue: list[tuple] = []  # (beat, order, seq, pitch, velocity, duration) heap; order 0 off, 1 on
        self.sounding: dict[tuple[int, int], int] = {}  # (channel, pitch) -> seq of the note sounding
        self.used: set[int] = set()  # channels with notes sent since their last All Notes Off
        self.confirm: list[tuple[float, int, int]] = []  # (time, channel, pitch) to release again
        self._seq = 0

    @property
    def playing(self) -> bool:
        return bool(self.queue or self.sounding)

    def release_later(self, now: float, channel: int | None = None) -> None:
        """All Notes Off on the channels used (and on `channel`) again CONFIRM_S from now."""
        if channel is not None:
            self.used.add(channel)
        self.confirm.append((now + CONFIRM_S, -1, -1))

    def schedule(self, n: BeatNote) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (n.onset, 1, self._seq, n.pitch, n.velocity, n.duration))
        heapq.heappush(self.queue, (n.onset + n.duration, 0, self._seq, n.pitch, 0, 0.0))

    def due(self, horizon: float, ch: int, now: float, out: list, *, more_coming: bool) -> None:
        """Send what is due up to timeline beat `horizon` on channel `ch`; when the last note ended and no
        more are coming, a late All Notes Off follows."""
        was_playing = bool(self.queue)
        while self.queue and self.queue[0][0] <= horizon:
            beat, order, seq, pitch, velocity, duration = heapq.heappop(self.queue)
            if order == 1:
                if (ch, pitch) in self.sounding:
                    out.append(SendMidi(mp.note_off(pitch, ch)))
                out.append(SendMidi(mp.note_on(pitch, velocity, ch)))
                out.append(SendOsc("/typemoe/note", (pitch, velocity, float(beat), float(duration))))
                self.sounding[(ch, pitch)] = seq
                self.used.add(ch)
            elif self.sounding.get((ch, pitch)) == seq:
                out.append(SendMidi(mp.note_off(pitch, ch)))
                del self.sounding[(ch, pitch)]
        if was_playing and not self.playing and not more_coming:  # the continuation ended
            self.release_later(now)  # then All Notes Off if nothing sounds

    def stop(self, now: float, out: list, *, force: bool) -> None:
        """Note-off for each sounding note on the channel it was played on, All Notes Off on every channel
        used, and a delayed second release of the cut notes. Without `force`, a stop with nothing to stop
        sends nothing."""
        active = self.playing
        self.queue.clear()
        for ch, pitch in self.sounding:
            out.append(SendMidi(mp.note_off(pitch, ch)))
            self.confirm.append((now + CONFIRM_S, ch, pitch))
        self.sounding.clear()
        if active or force:
            for ch in sorted(self.used):
                out.append(SendMidi(mp.all_notes_off(ch)))
            if self.used:
                self.release_later(now)

    def confirm_due(self, now: float, out: list) -> None:
        """The second release: note-off again for cut notes not sounding anew, then All Notes Off on the
        channels used once nothing sounds (a burst may have lost the first ones on the way)."""
        if not self.confirm or min(c[0] for c in self.confirm) > now:
            return
        due = [c for c in self.confirm if c[0] <= now]
        self.confirm = [c for c in self.confirm if c[0] > now]
        for _, ch, pitch in due:
            if ch >= 0 and (ch, pitch) not in self.sounding:
                out.append(SendMidi(mp.note_off(pitch, ch)))
        if not self.sounding and not self.queue:
            for ch in sorted(self.used):
                out.append(SendMidi(mp.all_notes_off(ch)))
            self.used.clear()
