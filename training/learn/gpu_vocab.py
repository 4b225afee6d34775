"""The vocabulary for training where miditok and symusic are not installed (the GPU machine).

The GPU machine has torch, numpy and safetensors, but neither miditok nor symusic, and nothing can be
installed there, while typemoe/vocab.py (and so training/learn/data.py, training/learn/humanize.py, ...) imports both
at the top. Training never tokenizes: it needs the id tables and must write the vocabulary files back
beside the checkpoint. So, in a process that imports this module:

  * where miditok or symusic cannot be imported, a stand-in module takes its name. Importing from it
    works (typemoe/vocab.py's constants and classes are then the real ones); using anything from it
    raises ImportError, so code that really tokenizes fails loudly. Where both are installed (here),
    nothing changes.
  * PackedVocab is TypedVocab built from the saved types.json instead of a tokenizer: every table-only
    method (id, tokens, control_ids, has_infill, ...) is TypedVocab's own; the tokenizer and the
    velocity/duration calibration (needed only to encode scores) are absent.

    vocab = PackedVocab("gpu_pack/vocab")       # TypedVocab.save wrote tokenizer.json + types.json there

tests/test_gpu_recipe.py checks PackedVocab against TypedVocab and runs the recipe with both packages
blocked.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np

STUBBED: list[str] = []
"""The packages this process replaced with stand-ins (empty where miditok and symusic are installed)."""


class _StandIn(types.ModuleType):
    """A missing package: names can be imported from it, none can be used."""

    __typemoe_stand_in__ = True

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        package = self.__name__

        class Missing:
            def __init__(self, *args, **kwargs):
                raise ImportError(
                    f"{package}.{attr} is not installed here (training/learn/gpu_vocab.py stand-in)"
                )

        Missing.__name__ = Missing.__qualname__ = attr
        return Missing


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ValueError:  # in sys.modules without a spec
        return sys.modules.get(name) is None


for _name in ("symusic", "miditok"):
    if _missing(_name):
        sys.modules[_name] = _StandIn(_name)
        STUBBED.append(_name)

from typemoe import vocab as _vocab  # noqa: E402  (after the stand-ins, on purpose)


class PackedVocab(_vocab.TypedVocab):
    """TypedVocab's id tables from a saved vocabulary directory, without the tokenizer."""

    def __init__(self, directory: str | Path):  # noqa: D107 -- TypedVocab.__init__ is skipped on purpose
        d = Path(directory)
        for f in (_vocab.TOKENIZER_FILE, _vocab.TYPES_FILE):
            if not (d / f).is_file():
                raise _vocab.VocabError(
                    f"{d / f} is missing; a vocabulary directory holds tokenizer.json and types.json"
                )
        meta = json.loads((d / _vocab.TYPES_FILE).read_text())
        self.directory = d
        self.tokenizer = None  # encoding and decoding need miditok; training never does either
        self.groups = {k: tuple(v) for k, v in meta["groups"].items()}
        self.type_names = tuple(self.groups)
        self.n_base = int(meta["n_base"])
        self._tokens = list(meta["tokens"])
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        self.type_of = np.asarray(meta["type_of"], dtype=np.int64)  # (V,)
        fam = _vocab.FAMILIES
        self.family_of = np.asarray(  # (V,)
            [
                fam.index(p) if (p := t.split("_", 1)[0]) in fam else fam.index("control")
                for t in self._tokens
            ],
            dtype=np.int64,
        )
        self.pad_id, self.bos_id, self.eos_id = (self._ids[f"{s}_None"] for s in ("PAD", "BOS", "EOS"))
        if self.hash != meta["hash"]:
            raise _vocab.VocabError(
                f"{d / _vocab.TYPES_FILE}: hash {meta['hash'][:12]} != {self.hash[:12]} of its tokens"
            )

    @classmethod
    def load(cls, directory: str | Path) -> PackedVocab:
        return cls(directory)

    def save(self, directory: str | Path) -> None:
        """Copy the two vocabulary files, so TypedVocab.load reads the checkpoint directory later."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for f in (_vocab.TOKENIZER_FILE, _vocab.TYPES_FILE):
            shutil.copyfile(self.directory / f, d / f)
