"""A tiny exported model directory for tests (export, runtime, bridge), built once per test session.

    from export_fixtures import make_tiny_model_dir, tiny_checkpoint_dir   # tests/ is on sys.path
    model_dir = make_tiny_model_dir(tmp_path / "model")   # a private copy; edit or corrupt it freely

The first call saves a random tiny TypeMoE checkpoint (typemoe.checkpoint) and exports it through
export.onnx_export.export_checkpoint (so the parity check runs once per session); later calls copy the
finished directory (about 2 MB). The tiny model has a 4-class head (the emotion quadrants), so
class_probs is exercised too. Needs torch and onnx (skips the test otherwise).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

N_CLASSES = 4


@functools.lru_cache(maxsize=1)
def _session_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="typemoe-export-fixture-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


@functools.lru_cache(maxsize=1)
def tiny_checkpoint_dir() -> Path:
    """A saved random tiny checkpoint (shared: do not modify it)."""
    torch = pytest.importorskip("torch")
    from typemoe import analysis, checkpoint
    from typemoe.config import tiny
    from typemoe.model import TypeMoE
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    cfg = tiny(vocab.size, vocab.n_types, n_meters=len(analysis.METERS), n_classes=N_CLASSES)
    torch.manual_seed(1234)
    model = TypeMoE(cfg, vocab.type_of).eval()
    with torch.no_grad():  # like a trained model: norm gains and head biases away from their init (1, 0)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    meta = {"step": 0, "class_names": list(analysis.EMOTIONS), "note": "random weights, for tests"}
    return checkpoint.save(model, _session_dir() / "ckpt", vocab=vocab, extra_meta=meta)


def legacy_vocab():
    """The vocabulary as it was before the infilling tokens (what models and shards from before
    2026-12-01 use; the shipped model had it until it learned to infill)."""
    from miditok import REMI

    from typemoe.vocab import DEFAULT_GROUPS, INFILL_TOKENS, TypedVocab, control_tokens, tokenizer_config

    groups = {k: tuple(p for p in v if p != "Infill") for k, v in DEFAULT_GROUPS.items()}
    return TypedVocab(
        REMI(tokenizer_config()), groups=groups, controls=control_tokens()[: -len(INFILL_TOKENS)]
    )


@functools.lru_cache(maxsize=1)
def legacy_checkpoint_dir() -> Path:
    """A saved random tiny checkpoint on legacy_vocab(): a model that cannot infill."""
    torch = pytest.importorskip("torch")
    from typemoe import analysis, checkpoint
    from typemoe.config import tiny
    from typemoe.model import TypeMoE

    vocab = legacy_vocab()
    torch.manual_seed(4321)
    model = TypeMoE(tiny(vocab.size, vocab.n_types, n_meters=len(analysis.METERS)), vocab.type_of).eval()
    return checkpoint.save(model, _session_dir() / "legacy", vocab=vocab, extra_meta={"step": 0})


@functools.lru_cache(maxsize=1)
def _tiny_model_dir() -> Path:
    pytest.importorskip("onnx")
    from typemoe.export.onnx_export import export_checkpoint

    return export_checkpoint(tiny_checkpoint_dir(), _session_dir() / "model")


def make_tiny_model_dir(path: str | Path) -> Path:
    """Copy the session's tiny exported model directory to `path` (created; must not exist or be empty)."""
    dst = Path(path)
    if dst.exists():
        dst.rmdir()  # only an empty directory may be there
    shutil.copytree(_tiny_model_dir(), dst)
    return dst


def analyze_without_torch(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`typemoe analyze ARGS` in a fresh interpreter where `import torch` fails (the DAW-user install)."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from typemoe.commands import tools\n"
        f"sys.exit(tools.run_cli(['analyze', *{list(args)!r}]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
