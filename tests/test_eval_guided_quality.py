"""eval_guided_quality: Hits@k and BLEU-2 of the conditioned model on the true controls, per guidance weight.
Guidance 1 is the conditioned model itself and `none` the music alone; a weight above 1 moves the logits
away from the unconditioned reading by (g - 1) times the controls' own effect."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from typemoe import analysis
from typemoe.training.evaluation import metrics

pytestmark = pytest.mark.onnx
egq = pytest.importorskip("typemoe.training.evaluation.eval_guided_quality")


class _Pieces:
    """Two labelled tunes: what guided_quality reads of training.learn.data.Pieces."""

    def __init__(self, tokens: list[np.ndarray]):
        self.tokens = tokens

    def label(self, task: str) -> np.ndarray:
        value = {"key": analysis.parse_key("C major"), "meter": analysis.parse_meter("3/4")}[task]
        return np.full(len(self.tokens), value)


def _tune(seed: int) -> symusic.Score:
    rng = np.random.default_rng(seed)
    score = symusic.Score(480)
    track = symusic.Track("tune", 0, False)
    for b in range(24):
        for beat in range(3):
            track.notes.append(
                symusic.Note((3 * b + beat) * 480, 400, int(rng.choice([60, 62, 64, 65, 67])), 80)
            )
    score.tracks.append(track)
    return score


@pytest.fixture(scope="module")
def model():
    """The shipped model: its controls change what it reads (the tiny test model's do not)."""
    from typemoe.shipped import default_model_dir
    from typemoe.training.evaluation.eval_model import open_model

    return open_model(default_model_dir())


def test_guidance_one_is_the_conditioned_model_and_none_the_music_alone(model):
    vocab = model.vocab
    pieces = _Pieces([np.asarray(vocab.encode_score(_tune(s)), dtype=np.int64) for s in (1, 2)])
    res = egq.guided_quality(model, pieces, n=2, guidances=[1.0, 3.0])
    assert res["n"] == 2
    controls = vocab.control_ids(key="C major", meter="3/4")
    from typemoe.training.evaluation.evaluate import EvalConfig, _prompt_cut

    cfg = EvalConfig(models=[None], data="", out="x.json")
    want = {"g1": ([], []), "none": ([], []), "g3": ([], [])}
    for music in pieces.tokens:
        cut = _prompt_cut(music, vocab, cfg, model.context_len - 3)
        seq = music[: cut + 64].tolist()
        c = model.outputs_at([vocab.bos_id, *controls, *seq], range(3 + cut, 3 + cut + 64)).logits
        u = model.outputs_at([vocab.bos_id, *seq], range(1 + cut, 1 + cut + 64)).logits
        for row, logits in (("g1", c), ("none", u), ("g3", u + 3 * (c - u))):
            want[row][0].append(logits)
            want[row][1].append(music[cut : cut + 64])
    for row, (logits, targets) in want.items():
        hits = metrics.hits_at_k(np.concatenate(logits), np.concatenate(targets), 1)
        assert res[f"{row}.hits@1"] == pytest.approx(hits, abs=1e-4), row
        assert res[f"{row}.nll"] == pytest.approx(
            egq.nll(np.concatenate(logits), np.concatenate(targets)), abs=1e-4
        )
    assert res["g1.nll"] != pytest.approx(res["none.nll"], abs=1e-3)  # the controls are read
    assert 0 <= res["g3.bleu2"] <= 1 and 0 <= res["none.bleu2"] <= 1


def test_the_cli_refuses_a_guidance_below_one(tmp_path, capsys):
    from typemoe.shipped import default_model_dir

    code = egq.main(
        [
            "--model",
            str(default_model_dir()),
            "--data",
            str(tmp_path),
            "--guidance",
            "0.5",
            "--out",
            str(tmp_path / "q.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "guidance must be >= 1" in err and "0.5" in err, err
