"""training/evaluation/candidate.py: a training run becomes a model directory with every head and fusion
(what the shipped directory holds); a second call redoes nothing, a call after a killed one does only the
steps left; a work directory of another run, and a failing step, are refused by name."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import SHARED_DATA, music21_scores

pytestmark = [pytest.mark.slow, pytest.mark.onnx]
N_TUNES = 60  # enough for every split of the fusion fits (90/5/5 by piece id)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shards of real Essen tunes with key, meter and emotion labels (emotion cycling Q1..Q4)."""
    from typemoe import analysis
    from typemoe.cli import main

    d = tmp_path_factory.mktemp("cand_tunes")
    rows = []
    for i, (_, score) in enumerate(music21_scores(N_TUNES)):
        ts, ks = score.time_signatures, score.key_signatures
        score.dump_midi(str(d / f"t{i:02d}.mid"))
        rows.append(
            {
                "path": f"t{i:02d}.mid",
                "key": analysis.KEYS[(7 * ks[0].key) % 12] if len(ks) else "",
                "meter": f"{ts[0].numerator}/{ts[0].denominator}" if len(ts) else "",
                "emotion": f"Q{i % 4 + 1}",
            }
        )
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "key", "meter", "emotion"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path_factory.mktemp("cand_shards") / "shards"
    assert (
        main(
            ["data", "build", "--source", f"folder:{d}", "--labels", str(d / "labels.csv"), "--out", str(out)]
        )
        == 0
    )
    return out


def _args(run, shards, out, emotion_data=None) -> list[str]:
    emopia = (SHARED_DATA / "emopia.tar.gz").is_file()
    return [
        "--run", str(run), "--data", str(shards), "--emotion-data", str(emotion_data or shards),
        "--emotion-source", "shared:emopia" if emopia else "none", "--ood",
        "--out", str(out), "--emotion-steps", "3", "--emotion-seq-len", "128",
        "--meter-pieces", "40", "--key-pieces", "40", "--val-pieces", "8", "--threads", "1",
    ]  # fmt: skip


def test_a_run_becomes_a_model_directory_with_every_head_and_fusion(shards, ckpt, tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import load_file

    from typemoe import analysis
    from typemoe.export.model_dir import read_manifest
    from typemoe.export.runtime import OrtModel
    from typemoe.training.evaluation.candidate import main

    out = tmp_path / "cand"
    assert main(_args(ckpt, shards, out)) == 0
    model = OrtModel(out / "model", provider="cpu")
    assert model.key.fusion is not None and model.meter.fusion is not None and model.meter.judge is not None
    assert list(model.class_names) == list(analysis.EMOTIONS)
    if (SHARED_DATA / "emopia.tar.gz").is_file():
        assert model.emotion.fusion is not None and model.emotion.fusion.info["n"]["test"] == 88
    graphs = sorted(f for f in read_manifest(out / "model")["files"] if f.endswith(".onnx"))
    assert graphs == ["model_int8.onnx"]
    trained = load_file(str(out / "work" / "emotion" / "latest" / "model.safetensors"))
    before = load_file(str(next(ckpt.glob("*.safetensors"))))
    assert not np.array_equal(trained["cls_head.weight"], before["cls_head.weight"])  # the head was trained
    assert np.array_equal(trained["key_head.weight"], before["key_head.weight"])  # nothing else moved
    record = json.loads((out / "candidate.json").read_text())
    assert set(record["stages"]) >= {"emotion", "export", "fit_meter", "fit_family", "fit_key", "slim"}

    # again: every step is done, nothing is redone
    stamp = (out / "model" / "meter_fusion.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_args(ckpt, shards, out)) == 0
    assert capsys.readouterr().out.count("skipped") == len(record["stages"])
    assert (out / "model" / "meter_fusion.json").stat().st_mtime_ns == stamp

    # killed after fit_meter: the next call does the rest and only the rest
    kept = ("emotion", "export", "fit_meter")
    record["stages"] = {k: v for k, v in record["stages"].items() if k in kept}
    (out / "candidate.json").write_text(json.dumps(record))
    key_stamp = (out / "model" / "key_fusion.json").stat().st_mtime_ns
    assert main(_args(ckpt, shards, out)) == 0
    assert capsys.readouterr().out.count("skipped") == len(kept)
    assert (out / "model" / "meter_fusion.json").stat().st_mtime_ns == stamp
    assert (out / "model" / "key_fusion.json").stat().st_mtime_ns != key_stamp
    OrtModel(out / "model", provider="cpu")  # the manifest written again lists what is there

    # another run into the same work directory is refused
    assert main(_args(tmp_path / "elsewhere", shards, out)) == 2
    assert main(_args(tmp_path, shards, out)) == 2
    assert "holds a candidate of" in capsys.readouterr().err


def test_a_failing_step_is_named(shards, ckpt, tmp_path, capsys):
    from typemoe.training.evaluation.candidate import main

    out = tmp_path / "cand"
    assert main(_args(ckpt, shards, out, emotion_data=tmp_path / "no_shards")) == 2
    assert "step emotion" in capsys.readouterr().err
    assert not (out / "model").exists()


def test_the_key_fusions_consistency_sweep_is_an_option(tmp_path):
    """fit_key gets --consistency 0 by default (the shipped recipe) and the weights of --key-consistency
    when they are given, for a trunk whose one-hearing key must turn more often with a transposition."""
    from typemoe.training.evaluation.candidate import build_parser, stages

    base = [
        "--run",
        str(tmp_path),
        "--data",
        str(tmp_path),
        "--emotion-data",
        str(tmp_path),
        "--out",
        str(tmp_path),
    ]
    key_args = stages(build_parser().parse_args(base))["fit_key"][0]
    assert key_args[key_args.index("--consistency") :] == ["--consistency", "0"]
    swept = stages(build_parser().parse_args([*base, "--key-consistency", "0", "0.3", "1"]))["fit_key"][0]
    assert swept[swept.index("--consistency") :] == ["--consistency", "0", "0.3", "1"]
