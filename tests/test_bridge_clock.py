"""BeatClock: tempo/phase from jittered MIDI clock, free-running, Start / Song Position alignment."""

from __future__ import annotations

import random

import pytest

from bridge.clock import PPQN, BeatClock, FakeClock


def _pulses(clock: BeatClock, bpm: float, n: int, t0: float, jitter_s: float = 0.0, seed: int = 0) -> float:
    rng = random.Random(seed)
    period = 60.0 / bpm / PPQN
    for k in range(n):
        clock.on_pulse(t0 + k * period + rng.uniform(0, jitter_s))
    return t0 + (n - 1) * period


@pytest.mark.parametrize("bpm", [100.0, 140.0])
def test_follows_tempo_and_phase_through_period_jitter(bpm):
    c = BeatClock(tempo=120.0, t0=0.0)
    c.on_start()
    last = _pulses(c, bpm, PPQN * 8, 1.0, jitter_s=0.0013)  # JACK 64-frame periods at 48 kHz
    assert c.tempo == pytest.approx(bpm, rel=2e-3)
    start = round(c.beat_at(1.0))  # the first pulse after Start is the DAW's beat 0: a bar line of ours
    assert start % 4 == 0
    beat_time = 1.0 + 8 * 60.0 / bpm  # the downbeat 2 bars after Start
    assert c.time_at(start + 8.0) == pytest.approx(beat_time + 0.00065, abs=0.001)
    assert c.synced(last) and not c.synced(last + 1.0)


def test_free_runs_at_the_last_tempo_and_never_jumps_back():
    c = BeatClock(tempo=120.0, t0=0.0)
    last = _pulses(c, 90.0, PPQN * 4, 0.0)
    b = c.beat_at(last)
    assert c.beat_at(last + 2.0) == pytest.approx(b + 2.0 * 90 / 60, rel=1e-6)
    c.on_song_position(6)  # 16th 6 = beat 1.5 of the DAW
    c.on_continue()
    c.on_pulse(last + 60 / 90 / PPQN)
    new = c.beat_at(last + 60 / 90 / PPQN)
    assert new >= b and (new % 4) == pytest.approx(1.5)


def test_internal_tempo_change_is_continuous():
    clock = FakeClock(10.0)
    c = BeatClock(tempo=120.0, t0=clock.now())
    clock.advance(1.0)
    b = c.beat_at(clock.now())
    c.set_tempo(60.0, clock.now())
    assert c.beat_at(clock.now()) == pytest.approx(b)
    assert c.beat_at(clock.now() + 1.0) == pytest.approx(b + 1.0)
