"""The shipped model's key and meter controls steer a continuation from a bare prompt (issue 13).

48 bare prompts [BOS, Key_X, Meter_Y] (X through all 24 keys twice, Y through 4/4, 3/4, 6/8, 2/4), 4 bars
each by the one decoder at guidance 3 (temperature 1, top-p 0.95, seeded), the new notes' key by music21's
Krumhansl-Schmuckler profile (training/evaluation/eval_control.py, the control table's own measure). On
these 48 prompts the shipped model reads the asked key in 92 % at the defaults since 2026-12-03 late (head
guidance 20 through the model directory's key fusion with its tonic cadence, typemoe.key_steering, and meter
guidance 3), 44 % without head guidance; before the cadence and the meter guidance, 77 % and 42 %, and 0 %
unconditioned. With the key head alone as the ear (weight 5, the default before) it read 46 % here. The
model shipped before its controls-only tuning read 12.5 % without head guidance (fails the second bound).
Chance is 4 %, and the composers' own first 4 bars read their labelled key in 64 % (MODEL_CARD.md, "Attribute control").

The meter: a continuation asked for 3/4, 6/8 or 2/4 is written in REMI bars of that meter
(grammar_tables.BarPlan), shorter than the 4 beats the model was trained on. At such a bar's end the
model's wish for a later Position is a wish for the next bar (decoding.spill_to_bar); without that, a fifth
of these continuations stacked a cluster of up to ~60 pitches on the bar's last 16th, which the onset-
autocorrelation meter detector had read as "in three" (75 % of the triple asks, against 54 % in 4-beat
bars; with the fix it is no gain: MODEL_CARD.md, "Meter-aware bars").
"""

from __future__ import annotations

import pytest

from typemoe import analysis
from typemoe.shipped import default_model_dir

pytest.importorskip("music21")
eval_control = pytest.importorskip("typemoe.training.evaluation.eval_control")

N, GUIDANCE = 48, 3.0


def _matches(model, *, controls: bool, n: int = N, **steer) -> tuple[float, float]:
    """(key match over the first n of the 48 prompts, triple-family match over those asking 3/4 or 6/8)."""
    session = model.session()
    keys, triple = 0, []
    for i in range(n):
        key, meter = analysis.key_name(i % 24), eval_control.METERS[i % 4]
        ctrl = model.vocab.control_ids(key=key, meter=meter) if controls else []
        kw = {"guidance": GUIDANCE, **steer} if controls else {}
        got, got_meter, *_ = eval_control.continue_and_analyse(
            session, model.vocab, [], ctrl, meter=meter, bars=4, seed=1000 + i, **kw
        )
        keys += got == i % 24
        if analysis.meter_family(meter) == "triple":
            triple.append(got_meter is not None and analysis.meter_family(got_meter) == "triple")
    return keys / n, sum(triple) / len(triple)


@pytest.fixture(scope="module")
def model():
    from typemoe.export.runtime import OrtModel

    return OrtModel(default_model_dir())


def test_the_key_control_steers_a_bare_prompt(model):
    asked, _ = _matches(model, controls=True)  # head guidance at its default
    no_head, _ = _matches(model, controls=True, head_guidance=0.0)
    unconditioned, _ = _matches(model, controls=False)
    assert asked >= 0.8, f"key match {asked:.3f} from a bare prompt at guidance {GUIDANCE}"
    assert no_head >= max(0.15, unconditioned + 0.1), (no_head, unconditioned)  # the control alone steers
    assert asked > no_head, (asked, no_head)  # and the key head's guidance adds to it


def test_the_best_of_several_continuations_is_heard_in_the_asked_meter(model):
    """typemoe.candidates keeps, of 4 continuations, the one the model's own analysis (key and meter heads
    fused with the notes) hears most in the asked key and the asked meter's family. On the first 24 prompts
    (each key once), without meter guidance, that lifts the triple family from 6 to 12 of the 12 triple
    asks: the best of 4's own lift (meter guidance alone makes every triple ask here heard in three,
    test_meter_guidance_... below). The kept continuation is judged by the model, the match by the control
    table's analysers, which the judge partly shares (the family is the same autocorrelation rule).
    It no longer keeps the key: since head guidance closes on the tonic (2026-12-03 late) one continuation
    reads the key in 22 of these 24 and the best of 4 in 17 (with meter guidance on: 24 and 19), so best of
    N is for the meter now, not the key (MODEL_CARD.md, "Meter guidance")."""
    _, one_triple = _matches(model, controls=True, n=24, meter_guidance=0.0)
    _, best_triple = _matches(model, controls=True, n=24, meter_guidance=0.0, candidates=4, readers=model)
    assert best_triple >= one_triple + 3 / 12, (best_triple, one_triple)  # at least three more of the 12


def _largest_chord(model, n: int, **steer) -> int:
    """The most notes at one onset over n bare prompts asking 3/4, 6/8 and 2/4 (bars shorter than REMI's)."""
    import numpy as np

    from typemoe.streaming import TokenReader

    session, vocab, most = model.session(), model.vocab, 0
    for i in range(n):
        meter = ("3/4", "6/8", "2/4")[i % 3]
        session.reset()
        session.feed([vocab.bos_id, *vocab.control_ids(key=analysis.key_name(i % 24), meter=meter)])
        cursor, plan = session.cursor(), session.bar_plan(meter)
        new = session.generate(n_bars=4, meter=meter, guidance=GUIDANCE, seed=2000 + i, top_p=0.95, **steer)
        onsets = [n.onset for n in TokenReader(vocab, cursor, plan).read(new)]
        most = max(most, int(np.unique(onsets, return_counts=True)[1].max()) if onsets else 0)
    return most


def test_a_short_bar_ends_in_a_bar_line_not_a_cluster(model, monkeypatch):
    """At the end of a bar shorter than REMI's 4 beats, a model with a 4-beat habit wants the Positions past
    it; they mean the next bar (decoding.spill_to_bar). Before that fix a fifth of the 2026-12-02 graph's
    continuations stacked a cluster of up to ~60 pitches on the bar's last 16th. The graph shipped on the
    morning of 2026-12-03 (trained on windows in bars of their meter, typemoe train --own-bars) closed a
    short bar by itself (largest chord 2 without the spill). The graph shipped after it, trained on longer
    windows of which most are fill-in-the-middle arrangements (MODEL_CARD.md, Training step 8), has some of
    the habit back: 11 without the spill on these prompts, at most 8 with it. Since head guidance hears
    through the key fusion (2026-12-03 night) the default's continuations differ: on these prompts 7 without
    the spill and 3 with it; the model's own habit shows without head (and meter) guidance, 11 without the
    spill and 4 with it. So the spill is what keeps the short bars clean, and the check below shows it still does work."""
    assert _largest_chord(model, 24) <= 8
    assert _largest_chord(model, 24, head_guidance=0.0) <= 8
    from typemoe import decoding

    monkeypatch.setattr(decoding, "spill_to_bar", lambda logits, spill, is_bar: logits)
    # the check can fail: without the spill it does, on this model's own habit
    assert _largest_chord(model, 24, head_guidance=0.0, meter_guidance=0.0) > 8


def _rhythm(model, n: int, **steer) -> tuple[float, float]:
    """(meter-family match, onsets per beat) of n bare-prompt continuations of 16 beats (4/4, 3/4, 6/8 and
    2/4 in turn: 4, 6, 6 and 8 bars), by the control table's meter detector."""
    import numpy as np

    from typemoe.streaming import TokenReader
    from typemoe.training.evaluation import baselines

    session, vocab, hits, density = model.session(), model.vocab, [], []
    for i in range(n):
        meter = eval_control.METERS[i % 4]
        bars = eval_control.passage_bars(meter, 16)
        session.reset()
        session.feed([vocab.bos_id, *vocab.control_ids(key=analysis.key_name((7 * i) % 24), meter=meter)])
        cursor, plan = session.cursor(), session.bar_plan(meter)
        new = session.generate(
            n_bars=bars, meter=meter, guidance=GUIDANCE, seed=3000 + i, top_p=0.95, **steer
        )
        heard = TokenReader(vocab, cursor, plan).read(new)
        notes = baselines.Notes(
            np.array([x.onset for x in heard]),
            np.array([x.duration for x in heard]),
            np.array([x.pitch for x in heard]),
        )
        got = baselines.meter_estimate(notes)[0] if len(notes) else None
        hits.append(got is not None and analysis.meter_family(got) == analysis.meter_family(meter))
        density.append(len(notes) / (bars * eval_control.grammar_tables.meter_beats(meter)))
    return float(np.mean(hits)), float(np.mean(density))


def test_meter_guidance_makes_the_asked_family_heard_at_the_corpus_s_density(model):
    """Meter guidance (typemoe.meter_steering, on by default at weight 3) accents the asked meter's bars: on
    these 24 bare prompts the onset-autocorrelation detector hears the asked family in 22 with it, 17 without
    it (before head guidance's tonic cadence: 23 and 15). And the continuations keep the corpus's pace
    (music21 test tunes: 1.4-1.8 onsets per beat): 1.95 with it, 2.10 without; weight 12 read 1.08 and fails
    the second bound, as did the guides that bought the family with long notes (MODEL_CARD.md, "Meter
    guidance": 0.6-0.9 onsets per beat)."""
    guided, guided_density = _rhythm(model, 24)
    plain, _ = _rhythm(model, 24, meter_guidance=0.0)
    assert guided >= 0.9 and guided >= plain + 0.15, (guided, plain)
    assert guided_density >= 1.4, guided_density
