"""BeatClock: tempo/phase from jittered MIDI clock, free-running, Start / Song Position alignment."""

from __future__ import annotations

import random

import pytest

from typemoe.bridge.clock import PPQN, BeatClock, FakeClock


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


def test_driver_stamper_removes_callback_delay_and_reanchors():
    from typemoe.bridge.midi_io import DriverStamper

    clock = FakeClock(50.0)
    s = DriverStamper(clock.now)
    assert s.stamp(0.0) == 50.0
    clock.advance(0.0103)  # the driver saw the next message 10 ms later; our callback ran 0.3 ms after it
    assert s.stamp(0.010) == pytest.approx(50.010)
    clock.advance(0.0120)  # 12 ms later by the driver, callback delayed by 2.3 ms this time
    assert s.stamp(0.0100) == pytest.approx(50.020)
    clock.advance(0.0150)  # a 10 ms wait is not believed: at most 3 ms is taken off
    assert s.stamp(0.0050) == pytest.approx(clock.now() - 0.003)
    clock.advance(5.0)  # a reopened port: the driver restarts at delta 0
    assert s.stamp(0.0) == pytest.approx(clock.now())


def test_late_pulses_arriving_in_a_burst_do_not_shift_the_grid():
    c = BeatClock(tempo=120.0, t0=0.0)
    period = 60.0 / 100.0 / PPQN
    for k in range(PPQN * 4):
        late = 0.040 if k == PPQN * 3 else 0.0  # we stalled: pulses k..k+2 arrive together, 40 ms late
        if PPQN * 3 <= k < PPQN * 3 + 3:
            late = 1.0 + PPQN * 3 * period + 0.040 - (1.0 + k * period)
        c.on_pulse(1.0 + k * period + late)
    b_last = c.beat_at(1.0 + (PPQN * 4 - 1) * period)
    assert round(b_last * PPQN) == pytest.approx(b_last * PPQN, abs=0.05)  # still on the pulse lattice
    next_16th = (round(b_last * 4) + 1) / 4
    k_next = PPQN * 4 - 1 + round((next_16th - b_last) * PPQN)
    assert c.time_at(next_16th) == pytest.approx(1.0 + k_next * period, abs=0.001)
    assert c.tempo == pytest.approx(100.0, rel=0.01)


def test_a_lost_pulse_is_recounted():
    c = BeatClock(tempo=120.0, t0=0.0)
    period = 60.0 / 100.0 / PPQN
    ks = [k for k in range(PPQN * 6) if k != PPQN * 3]  # pulse 72 never arrives
    for k in ks:
        c.on_pulse(1.0 + k * period)
    t = 1.0 + ks[-1] * period
    b0 = c.beat_at(1.0)
    assert c.beat_at(t) - b0 == pytest.approx(ks[-1] / PPQN, abs=0.01)


@pytest.mark.parametrize("seed", range(12))
def test_a_lost_pulse_is_recounted_while_pulses_arrive_late_in_bursts(seed):
    """A busy machine: every few pulses our thread stalls and 1-3 pulses arrive together, 10-40 ms late,
    and one pulse is lost on the way. The count must still come back to the pulses' own lattice."""
    rng = random.Random(seed)
    bpm = 140.0
    c = BeatClock(tempo=120.0, t0=0.0)
    period = 60.0 / bpm / PPQN
    lost = PPQN * 4 + rng.randrange(PPQN)
    ks, beats = [], []

    def pulse(j: int, at: float) -> None:
        c.on_pulse(at)
        ks.append(j)
        beats.append(c.beat_at(at))

    k = 0
    while k < PPQN * 12:
        if rng.random() < 0.3:  # a stall: the next 1-3 pulses arrive together when it ends
            n = rng.randint(1, 3)
            at = 1.0 + (k + n - 1) * period + rng.uniform(0.010, 0.040)
            for j in range(k, k + n):
                if j != lost:
                    pulse(j, at)
            k += n
            continue
        if k != lost:
            pulse(k, 1.0 + k * period + rng.uniform(0, 0.0013))
        k += 1
    b0 = beats[0]
    # The count: the last pulse's beat, measured on the fitted line at its on-time arrival, against the
    # first pulse's (read when it arrived, the line then through it). Half a pulse tells whole pulses apart.
    t = 1.0 + ks[-1] * period
    assert (c.beat_at(t) - b0) * PPQN == pytest.approx(ks[-1] - ks[0], abs=0.5)


@pytest.mark.parametrize(("before", "after"), [(100.0, 130.0), (140.0, 90.0), (120.0, 125.0), (120.0, 117.0)])
def test_a_tempo_change_is_not_a_lost_pulse(before, after):
    """The DAW changes tempo: arrivals drift against the old period, but every pulse still counts one."""
    c = BeatClock(tempo=120.0, t0=0.0)
    rng = random.Random(0)
    c.on_pulse(1.0)
    b0, t, k = c.beat_at(1.0), 1.0, 0
    for bpm in [before] * (PPQN * 4) + [after] * (PPQN * 8):
        t += 60.0 / bpm / PPQN
        k += 1
        c.on_pulse(t + rng.uniform(0, 0.0013))
    assert (c.beat_at(t) - b0) * PPQN == pytest.approx(k, abs=0.3)


@pytest.mark.parametrize(
    ("start", "end", "beats", "lost"),
    [
        (120.0, 140.0, 8, None),
        (140.0, 80.0, 8, None),
        (90.0, 180.0, 16, None),
        (100.0, 110.0, 16, 136),
        (100.0, 100.0, 16, 136),
    ],
)
def test_a_tempo_ramp_is_not_a_lost_pulse(start, end, beats, lost):
    """DAW tempo automation: the period changes a little at every pulse; every pulse still counts one.
    In a slow ramp (10 BPM in 4 bars) a pulse lost on the way is still recounted."""
    c = BeatClock(tempo=120.0, t0=0.0)
    rng = random.Random(1)
    c.on_pulse(1.0)
    b0, t = c.beat_at(1.0), 1.0
    bpms = [start] * (PPQN * 4) + [start + (end - start) * i / (PPQN * beats) for i in range(PPQN * beats)]
    bpms += [end] * (PPQN * 4)
    for i, bpm in enumerate(bpms):
        t += 60.0 / bpm / PPQN
        if i != lost:
            c.on_pulse(t + rng.uniform(0, 0.0013))
    assert (c.beat_at(t) - b0) * PPQN == pytest.approx(len(bpms), abs=0.3)


@pytest.mark.parametrize(("lost", "doubled"), [((100, 101), ()), ((), (100,)), ((100,), (300,))])
def test_lost_and_doubled_pulses_are_recounted(lost, doubled):
    """Two pulses lost together, a pulse received twice (the same message read twice), one of each."""
    c = BeatClock(tempo=120.0, t0=0.0)
    rng = random.Random(2)
    period = 60.0 / 120.0 / PPQN
    for k in range(PPQN * 20):
        if k in lost:
            continue
        t = 1.0 + k * period + rng.uniform(0, 0.0013)
        c.on_pulse(t)
        if k in doubled:
            c.on_pulse(t + 0.0001)
    t = 1.0 + (PPQN * 20 - 1) * period
    assert (c.beat_at(t) - c.beat_at(1.0)) * PPQN == pytest.approx(PPQN * 20 - 1, abs=0.3)
