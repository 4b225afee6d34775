"""export.model_dir.refresh_manifest re-lists a model directory: a new fusion file is checked at load, the
model card is not listed (it is edited by hand), and a changed file is refused until the next refresh."""

from __future__ import annotations

import json
import shutil

import pytest

from typemoe.export.model_dir import ModelDirError, read_manifest, refresh_manifest
from typemoe.shipped import default_model_dir


def test_refresh_lists_new_files_but_not_the_card(tmp_path):
    src = default_model_dir()
    d = tmp_path / "model"
    d.mkdir()
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    (d / "extra_fusion.json").write_text("{}\n")
    (d / "MODEL_CARD.md").write_text("# card\n")
    refresh_manifest(d)
    files = json.loads((d / "manifest.json").read_text())["files"]
    assert "extra_fusion.json" in files and "MODEL_CARD.md" not in files
    (d / "MODEL_CARD.md").write_text("# card, edited\n")
    read_manifest(d, verify=True)  # the card is free to change
    (d / "extra_fusion.json").write_text('{"changed": 1}\n')
    with pytest.raises(ModelDirError):
        read_manifest(d, verify=True)
