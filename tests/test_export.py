"""Export: the wrapper equals the model, the graph contract holds, parity passes and mismatches are all listed."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from export_fixtures import N_CLASSES, make_tiny_model_dir, tiny_checkpoint_dir  # noqa: E402

from typemoe import analysis, checkpoint  # noqa: E402
from typemoe.config import tiny  # noqa: E402
from typemoe.export import graphs  # noqa: E402
from typemoe.export.onnx_export import export_model, resolve_checkpoint  # noqa: E402
from typemoe.export.runtime import MANIFEST_FILE, MODEL_FILE, MODEL_FP16_FILE, MODEL_INT8_FILE, OrtModel  # noqa: E402
from typemoe.export.validate import ExportMismatchError, check_parity, default_cases  # noqa: E402
from typemoe.model import TypeMoE  # noqa: E402
from typemoe.vocab import TypedVocab  # noqa: E402

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def vocab():
    return TypedVocab.default()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("export") / "model")


@pytest.mark.parametrize(
    "kw", [{}, {"ffn": "dense"}, {"ffn": "switch", "shared_expert": True}, {"n_classes": 3}]
)
def test_step_graph_eager_equals_model(vocab, kw):
    """The export wrapper (reference ops, no ONNX) reproduces TypeMoE.forward through a cache chain."""
    torch.manual_seed(0)
    model = TypeMoE(tiny(vocab.size, vocab.n_types, context_len=64, **kw), vocab.type_of).eval()
    with torch.no_grad():  # norm gains away from 1: a swapped norm must show
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    graph = graphs.StepGraph(model).eval()
    ids = torch.randint(0, vocab.size, (2, 20))
    cache, past, P = graph.empty_cache(batch=2), model.empty_past(2), 0
    with torch.inference_mode():
        for chunk in (ids[:, :13], ids[:, 13:17], ids[:, 17:18]):
            want = model(chunk, past=past)
            past = want.present
            got = graph(chunk, torch.tensor(P), cache)
            cache = list(got[len(graph.head_sizes) :])
            P += chunk.size(1)
            for g, w in zip(got, (want.logits, want.key_logits, want.meter_logits)):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cache[0][:, :, :P], past[0][0], rtol=1e-5, atol=1e-5)


def test_export_passes_parity_and_writes_a_complete_directory(model_dir):
    files = {p.name for p in model_dir.iterdir()}
    assert {
        MODEL_FILE,
        MODEL_FP16_FILE,
        MODEL_INT8_FILE,
        "tokenizer.json",
        "types.json",
        MANIFEST_FILE,
    } <= files
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == files - {MANIFEST_FILE}
    parity = manifest["parity"]
    assert parity["atol"] == 1e-4 and parity["cases"] >= 12
    assert max(parity["max_abs_diff"].values()) <= 1e-3  # fp32 rows pass 1e-4; fp16 rows are listed too
    fp32 = {k: v for k, v in parity["max_abs_diff"].items() if not k.startswith("fp16/")}
    assert max(fp32.values()) <= 1e-4
    quality = manifest["int8_quality"]  # int8 experts kept: the predictions did not move
    assert quality["ok"] and quality["lm_kl_mean"] < 1e-3 and quality["positions"] > 500
    cases = {k.split("#")[0] for k in fp32}
    assert {
        "len1/structure",
        "len1/pitch",
        "len1/velocity",
        "len1/duration",
        "len1/control",
        "prefill17",
        "prefill256",
    } <= cases  # context lengths 1, 17, 256 (= this model's maximum) and every type


def test_metadata_round_trip(model_dir, vocab):
    cfg, table, meta = checkpoint.read_config(tiny_checkpoint_dir())
    for name, precision in (
        (MODEL_FILE, "float32"),
        (MODEL_FP16_FILE, "float16"),
        (MODEL_INT8_FILE, "int8-experts"),
    ):
        props = {p.key: p.value for p in onnx.load(model_dir / name, load_external_data=False).metadata_props}
        assert json.loads(props["typemoe.config"]) == cfg.to_dict()
        assert props["typemoe.vocab_hash"] == vocab.hash
        assert json.loads(props["typemoe.type_of_id"]) == table.tolist()
        labels = json.loads(props["typemoe.labels"])
        assert labels == {
            "keys": list(analysis.KEYS),
            "meters": list(analysis.METERS),
            "classes": list(analysis.EMOTIONS),
        }
        versions = json.loads(props["typemoe.versions"])
        assert {"torch", "onnx", "onnxruntime", "python"} <= set(versions)
        assert props["typemoe.precision"] == precision
        assert json.loads(props["typemoe.source"])["step"] == 0
    m = OrtModel(model_dir, provider="cpu")
    assert m.config == cfg.to_dict() and m.context_len == cfg.context_len
    assert m.class_names == list(analysis.EMOTIONS) and m.key_names == list(analysis.KEYS)


def test_graph_contract(model_dir):
    """Names and dims of export/DESIGN.md; static routing: no control flow, one MoE and GQA per layer."""
    cfg, _, _ = checkpoint.read_config(tiny_checkpoint_dir())
    m = onnx.load(model_dir / MODEL_FILE)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*m.graph.input, *m.graph.output]
    }
    L, H, Dh = cfg.n_layer, cfg.n_head, cfg.d_head
    assert [i.name for i in m.graph.input] == ["input_ids", "past_len", *graphs.past_names(L)]
    assert [o.name for o in m.graph.output] == [*graphs.head_names(N_CLASSES), *graphs.present_names(L)]
    assert dims["input_ids"] == ["batch", "seq"] and dims["past_len"] == []
    assert dims["logits"] == ["batch", "seq", cfg.vocab_size]
    assert dims["cls_logits"] == ["batch", "seq", N_CLASSES]
    assert dims["past_key_0"] == dims["present_key_0"] == ["batch", H, "cache", Dh]
    ops = [n.op_type for n in m.graph.node]
    assert not {"If", "Loop", "Scan"} & set(ops)
    assert ops.count("MoE") == ops.count("GroupQueryAttention") == L
    ops8 = [n.op_type for n in onnx.load(model_dir / MODEL_INT8_FILE).graph.node]
    assert ops8.count("QMoE") == L and "MoE" not in ops8
    assert {o.domain: o.version for o in m.opset_import}[""] == 23


def test_mismatches_are_all_listed(model_dir):
    """A model that differs from the export fails parity, and every failing case is in one error."""
    model = checkpoint.load(tiny_checkpoint_dir())
    with torch.no_grad():
        model.key_head.bias += 1e-2  # only the key head differs
    cases = default_cases(TypedVocab.load(model_dir), model.cfg.context_len)[:6]
    with pytest.raises(ExportMismatchError) as err:
        check_parity(model, model_dir, cases=cases)
    failing = err.value.mismatches
    assert len(failing) >= len(cases), failing  # one per case at least, all in one raise
    assert all("key_logits" in line for line in failing if not line.startswith("fp16/"))
    assert "len1/structure#0/key_logits" in str(err.value)


@pytest.mark.parametrize("kw", [{"ffn": "dense"}, {"ffn": "switch", "shared_expert": True}])
def test_baselines_export_with_parity(vocab, tmp_path, kw):
    torch.manual_seed(0)
    cfg = tiny(vocab.size, vocab.n_types, n_meters=len(analysis.METERS), context_len=32, **kw)
    out = export_model(TypeMoE(cfg, vocab.type_of), vocab, tmp_path / "m", fp16=False)
    assert (out / MANIFEST_FILE).is_file() and not (out / MODEL_FP16_FILE).exists()
    assert (out / MODEL_INT8_FILE).exists()  # dense: one-expert QMoE; switch: QMoE with learned routing


def test_resolve_checkpoint(tmp_path):
    def ckpt(path):
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        return path

    run = tmp_path / "run"
    ckpt(run / "step_900")
    newest = ckpt(run / "step_1200")
    (run / "step_5000").mkdir()  # incomplete: no config.json
    assert resolve_checkpoint(run) == newest
    chosen = ckpt(run / "best")
    (run / "latest").write_text("best\n")
    assert resolve_checkpoint(run) == chosen
    assert resolve_checkpoint(newest) == newest
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_cli_export_and_refusals(tmp_path, caplog):
    from typemoe.export.__main__ import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("not a model")
    assert main([str(tiny_checkpoint_dir()), str(out), "--no-fp16"]) == 2  # refuses a foreign directory
    assert "not empty" in caplog.text and (out / "precious.txt").exists()
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "no checkpoint" in caplog.text


def test_cli_parsers_register_export_and_bench():
    import argparse

    from typemoe.export.cli import add_parsers

    parser = argparse.ArgumentParser(prog="typemoe")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--checkpoint", "c", "--out", "o", "--no-fp16"])
    assert args.func.__name__ == "run_export" and args.no_fp16
    args = parser.parse_args(["bench", "--preset", "small", "--out", "b.json"])
    assert args.func.__name__ == "run_bench" and args.preset == "small"


def test_fp16_graph_cache_is_half(model_dir):
    m = onnx.load(model_dir / MODEL_FP16_FILE, load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}
    assert types["past_key_0"] == types["present_value_0"] == onnx.TensorProto.FLOAT16
    assert types["logits"] == onnx.TensorProto.FLOAT  # heads stay fp32
