"""What each OSC command does to the engine: the handlers behind bridge.osc_api's table.

`OscCommands` is a part of bridge.engine.Engine (its base class), kept apart because the commands are not on
the path of a performer's note: osc_api parses and checks an address and its arguments into a typed command,
`_command` carries it out on the engine's state, and anything without a handler is an explicit error (never
a silent reset of the performer's context).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from typemoe.bridge import osc_api
from typemoe.bridge.continuation import choose_meter
from typemoe.bridge.events import Recondition, SendOsc

log = logging.getLogger("typemoe.bridge.engine")


class OscCommands:
    """The engine's OSC command handlers (mixed into bridge.engine.Engine; they use its state)."""

    def _command(self, cmd, t: float, out: list) -> None:
        if isinstance(cmd, osc_api.NoteCmd):
            self._note(cmd.pitch, cmd.velocity, t, out)
        elif isinstance(cmd, osc_api.ContinueCmd):
            self._request(cmd.bars, t, out)
        elif isinstance(cmd, osc_api.InfillCmd):
            if self.cfg.mode == "analyze":
                raise osc_api.OscInputError("mode is 'analyze': no infill (/typemoe/set mode manual)")
            if self._origin is not None:  # notes just ended join the heard bars first
                self._feed(self._tok.advance(self._beat - self._origin), t, out)
            c, steer = self.cfg, {"controls": self._control_ids, "key_lock": self._key_lock()}
            sample = {"temperature": c.temperature, "top_p": c.top_p, "seed": c.seed, "guidance": c.guidance}
            sample.update(suffix_weight=c.suffix_weight, head_guidance=c.head_guidance)
            meter = choose_meter(self._controls[1], self._readout.meter)[0]  # bars of the music's meter
            self._infill.request(cmd.start_bar, cmd.end_bar, t, out, meter=meter, **sample, **steer)
        elif isinstance(cmd, osc_api.ConditionCmd):
            ids = tuple(self.vocab.control_ids(key=cmd.key, meter=cmd.meter))  # ValueError names a bad one
            if ids != self._control_ids:  # a knob resending the same value costs nothing
                self._controls, self._control_ids = (cmd.key, cmd.meter), ids
                log.info("condition: key %r meter %r", cmd.key or "free", cmd.meter or "free")
                out.append(Recondition(ids))
        elif isinstance(cmd, osc_api.TempoCmd):
            if self.clock.synced(t) or self.cfg.clock == "midi":
                raise osc_api.OscInputError(
                    f"tempo follows MIDI clock ({self.clock.tempo:.1f} BPM); /typemoe/tempo ignored"
                )
            self.clock.set_tempo(cmd.bpm, t)
            log.info("tempo %.1f BPM", cmd.bpm)
        elif isinstance(cmd, osc_api.SetCmd):
            if cmd.name == "out_channel" and cmd.value != self.cfg.out_channel:
                self._stop_playback(out)  # its notes end on the channel they were played on
            self.cfg = replace(self.cfg, **{cmd.name: cmd.value})  # __post_init__ validates
            self._notes_in.rate = self.cfg.max_notes_per_s
            if cmd.name == "mode" and cmd.value == "analyze":
                self._stop_playback(out)
            log.info("set %s = %r", cmd.name, cmd.value)
        elif cmd.name == "ping":
            out.append(SendOsc("/typemoe/pong"))
        elif cmd.name == "panic":
            out += self.release_all()
            self._phrase = None
        elif cmd.name == "reset":
            self._reset(out)
        else:
            raise osc_api.OscInputError(f"no handler for {cmd!r}")
