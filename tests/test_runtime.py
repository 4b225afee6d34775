"""typemoe.export.runtime: torch-free, refuses bad directories, equals PyTorch (greedy, cache, slide), valid REMI."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from typemoe.export.runtime import MANIFEST_FILE, MODEL_FILE, ModelDirError, OrtModel, resolve_provider

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("runtime") / "model")


@pytest.fixture(scope="module")
def ort_model(model_dir):
    return OrtModel(model_dir, provider="cpu")


@pytest.fixture(scope="module")
def torch_model():
    pytest.importorskip("torch")
    from export_fixtures import tiny_checkpoint_dir

    from typemoe import checkpoint

    return checkpoint.load(tiny_checkpoint_dir())


def _music(vocab, n: int, seed: int) -> list[int]:
    """n grammar-valid ids starting at a Bar (no control prefix)."""
    rng = np.random.default_rng(seed)
    ids = [vocab.id("Bar_None")]
    while len(ids) < n:
        ids.append(int(rng.choice(np.flatnonzero(vocab.next_allowed[vocab.family_of[ids[-1]]]))))
    return ids


def test_import_leaves_torch_out():
    code = "import sys, export.runtime; sys.exit(2 if 'torch' in sys.modules else 0)"
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert rc.returncode == 0, f"importing export.runtime imported torch: {rc.stderr[-2000:]}"


@pytest.mark.parametrize("n_prompt, n_new", [(9, 40), (200, 100)])  # the second crosses the 256 context
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_equals_pytorch(ort_model, torch_model, n_prompt, n_new, temperature):
    """The one decoder on both backends: same prompt and seed -> same ids, greedy and sampled, with a slide."""
    from typemoe.decoding import Session
    from typemoe.torch_session import TorchEngine

    vocab = ort_model.vocab
    prompt = [vocab.bos_id, *vocab.control_ids(key="D major"), *_music(vocab, n_prompt, seed=n_prompt)]
    runs = []
    for session in (Session(TorchEngine(torch_model, vocab=vocab)), ort_model.session()):
        session.feed(prompt)
        runs.append(session.generate(n_tokens=n_new, temperature=temperature, top_p=0.95, seed=11))
        assert session.tokens[:2] == prompt[:2]  # the control prefix survived any slide
    assert runs[0] == runs[1]


def test_feeding_in_pieces_equals_one_prefill(ort_model):
    ids = _music(ort_model.vocab, 60, seed=3)
    whole = ort_model.session().feed(ids)
    s = ort_model.session()
    for chunk in (ids[:1], ids[1:30], ids[30:34], *[[i] for i in ids[34:]]):
        out = s.feed(chunk)
    assert s.n_past == len(ids)
    np.testing.assert_allclose(out.logits, whole.logits, atol=1e-4)
    np.testing.assert_allclose(out.key_probs, whole.key_probs, atol=1e-5)
    np.testing.assert_allclose(out.class_probs, whole.class_probs, atol=1e-5)


def test_heads_are_probabilities_and_class_probs_pool_the_stream(ort_model, torch_model):
    import torch

    ids = [ort_model.vocab.bos_id] + _music(ort_model.vocab, 50, seed=4)
    s = ort_model.session()
    s.feed(ids[:20])
    out = s.feed(ids[20:])
    assert out.key_probs.shape == (24,) and out.meter_probs.shape == (len(ort_model.meter_names),)
    for p in (out.key_probs, out.meter_probs, out.class_probs):
        assert p.dtype == np.float32 and abs(float(p.sum()) - 1.0) < 1e-5 and (p >= 0).all()
    with torch.inference_mode():
        pooled = torch.softmax(torch_model(torch.tensor([ids])).cls_logits[0], -1).numpy()
    np.testing.assert_allclose(out.class_probs, pooled, atol=1e-5)


def test_fork_and_rewind_are_independent(ort_model):
    ids = _music(ort_model.vocab, 30, seed=5)
    a = ort_model.session()
    a.feed(ids[:20])
    b = a.fork()
    b.feed(ids[20:25])
    out_a = a.feed(ids[20:])
    assert a.n_past == 30 and b.n_past == 25
    ref = ort_model.session().feed(ids)
    np.testing.assert_allclose(out_a.logits, ref.logits, atol=1e-4)
    a.rewind(25)
    np.testing.assert_allclose(a.feed(ids[25:]).logits, ref.logits, atol=1e-4)


def test_slide_keeps_control_prefix(ort_model):
    vocab = ort_model.vocab
    controls = [vocab.bos_id, *vocab.control_ids(key="A minor", meter="3/4")]
    s = ort_model.session()
    s.feed(controls)
    music = _music(vocab, 300, seed=6)
    for i in range(0, 300, 7):
        s.feed(music[i : i + 7])
    ctx = ort_model.context_len
    assert s.n_past <= ctx and s.tokens[:3] == controls
    assert s.tokens[3:] == music[len(music) - (s.n_past - 3) :]  # then the most recent tokens
    assert s._cls_n == 303  # class_probs average every token fed, each once, re-prefills or not


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_yields_valid_remi(ort_model, seed):
    vocab = ort_model.vocab
    s = ort_model.session()
    s.feed([vocab.bos_id])
    ids = s.generate(n_tokens=150, temperature=1.5, top_p=1.0, seed=seed)
    stream = [vocab.bos_id, *ids]
    for prev, nxt in zip(stream, stream[1:]):
        assert vocab.next_allowed[vocab.family_of[prev], nxt], (vocab.token(prev), vocab.token(nxt))
    pos = -1
    for i in ids:  # positions never go back within a bar
        tok = vocab.token(i)
        if tok.startswith("Bar"):
            pos = -1
        elif tok.startswith("Position_"):
            assert int(tok.split("_")[1]) > pos, ids
            pos = int(tok.split("_")[1])
    vocab.decode(ids)  # decodes to a score
    again = ort_model.session()
    again.feed([vocab.bos_id])
    assert again.generate(n_tokens=150, temperature=1.5, top_p=1.0, seed=seed) == ids  # seeded = repeatable


def test_generate_stops_before_the_nth_bar(ort_model):
    vocab = ort_model.vocab
    s = ort_model.session()
    s.feed([vocab.bos_id, vocab.id("Bar_None")])
    ids = s.generate(n_bars=2, n_tokens=400, temperature=2.0, top_p=1.0, seed=3)
    assert sum(vocab.family_of[i] == 0 for i in ids) <= 1
    with pytest.raises(ValueError, match="n_tokens or n_bars"):
        s.generate()


def test_bad_input_is_refused(ort_model):
    s = ort_model.session()
    with pytest.raises(ValueError, match="at least one"):
        s.feed([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.feed([ort_model.vocab.size])
    with pytest.raises(ValueError, match="provider"):
        resolve_provider("tpu")


def test_cuda_request_falls_back_with_a_clear_line(caplog, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="typemoe.export.ort_graph"):
        assert resolve_provider("cuda") == "cpu"
        assert resolve_provider("auto") == "cpu"
    assert "CUDA requested" in caplog.text and "falling back to CPU" in caplog.text


def _copy(model_dir, tmp_path):
    import shutil

    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


@pytest.mark.parametrize("victim", [MODEL_FILE, "types.json", "tokenizer.json", MANIFEST_FILE])
def test_missing_file_is_refused(model_dir, tmp_path, victim):
    d = _copy(model_dir, tmp_path)
    (d / victim).unlink()
    with pytest.raises(ModelDirError, match=victim.replace(".", r"\.")):
        OrtModel(d)


@pytest.mark.parametrize("victim", [MODEL_FILE, "types.json"])
def test_corrupt_file_is_refused(model_dir, tmp_path, victim):
    d = _copy(model_dir, tmp_path)
    data = bytearray((d / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    (d / victim).write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=rf"{victim.replace('.', '[.]')} is corrupt.*sha256"):
        OrtModel(d)


def test_garbled_manifest_and_not_a_directory(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path)
    (d / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(ModelDirError, match="manifest.json is corrupt"):
        OrtModel(d)
    with pytest.raises(ModelDirError, match="not a directory"):
        OrtModel(tmp_path / "nothing")


def test_precisions(model_dir, ort_model, tmp_path):
    """int8 experts and the fp16 graph run on CPU and agree with fp32; a missing graph is named."""
    ids = _music(ort_model.vocab, 40, seed=7)
    ref = ort_model.session().feed(ids)
    for precision, tol in (("int8", 0.05), ("fp16", 0.05)):
        m = OrtModel(model_dir, provider="cpu", precision=precision)
        out = m.session().feed(ids)
        assert np.abs(out.logits - ref.logits).max() < tol, precision
        assert int(out.logits.argmax()) == int(ref.logits.argmax())
    with pytest.raises(ValueError, match="precision"):
        OrtModel(model_dir, precision="int4")
    pytest.importorskip("torch")
    from typemoe.export.onnx_export import write_manifest

    d = _copy(model_dir, tmp_path)
    (d / "model_int8.onnx").unlink()
    write_manifest(d, {})
    with pytest.raises(ModelDirError, match="has no model_int8.onnx"):
        OrtModel(d, precision="int8")


def test_auto_precision_uses_what_a_slim_directory_holds(model_dir, ort_model, tmp_path):
    """A shipped directory without the fp32 graph still opens on CPU: auto falls to the int8 graph."""
    pytest.importorskip("torch")
    from typemoe.export.onnx_export import write_manifest

    d = _copy(model_dir, tmp_path)
    (d / MODEL_FILE).unlink()
    write_manifest(d, {})
    m = OrtModel(d, provider="cpu")
    assert m.graph_file == "model_int8.onnx"
    ids = _music(ort_model.vocab, 40, seed=3)
    assert int(m.session().feed(ids).logits.argmax()) == int(ort_model.session().feed(ids).logits.argmax())
