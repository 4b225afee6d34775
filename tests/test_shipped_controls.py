"""The shipped model's key control steers a continuation from a bare prompt (issue 13).

48 bare prompts [BOS, Key_X, Meter_Y] (X through all 24 keys twice, Y through 4/4, 3/4, 6/8, 2/4), 4 bars
each by the one decoder at guidance 3 (temperature 1, top-p 0.95, seeded), the new notes' key by music21's
Krumhansl-Schmuckler profile (training/evaluation/eval_control.py, the control table's own measure). On
these 48 prompts the shipped model reads the asked key in 52 % with the key head's guidance on (its
default, typemoe.key_steering), 25 % with it off, 4 % unconditioned; the model shipped before its
controls-only tuning read 12.5 % without head guidance (fails the second bound). Chance is 4 %, and the
composers' own first 4 bars read their labelled key in 59 % (MODEL_CARD.md, "Attribute control").
"""

from __future__ import annotations

import pytest

from typemoe import analysis
from typemoe.shipped import default_model_dir

pytest.importorskip("music21")
eval_control = pytest.importorskip("typemoe.training.evaluation.eval_control")

N, GUIDANCE = 48, 3.0


def _key_match(model, *, controls: bool, **steer) -> float:
    session = model.session()
    hits = 0
    for i in range(N):
        key, meter = analysis.key_name(i % 24), eval_control.METERS[i % 4]
        ctrl = model.vocab.control_ids(key=key, meter=meter) if controls else []
        kw = {"guidance": GUIDANCE, **steer} if controls else {}
        got, _, _ = eval_control.continue_and_analyse(
            session, model.vocab, [], ctrl, meter=meter, bars=4, seed=1000 + i, **kw
        )
        hits += got == i % 24
    return hits / N


def test_the_key_control_steers_a_bare_prompt():
    from typemoe.export.runtime import OrtModel

    model = OrtModel(default_model_dir())
    asked = _key_match(model, controls=True)  # head guidance at its default
    no_head = _key_match(model, controls=True, head_guidance=0.0)
    unconditioned = _key_match(model, controls=False)
    assert asked >= 0.4, f"key match {asked:.3f} from a bare prompt at guidance {GUIDANCE}"
    assert no_head >= max(0.2, unconditioned + 0.1), (no_head, unconditioned)  # the control alone steers
    assert asked >= no_head + 0.15, (asked, no_head)  # and the key head's guidance adds to it
