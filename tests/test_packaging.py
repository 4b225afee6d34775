"""The wheel installs one name: typemoe/ (the rooms as typemoe.training, typemoe.export, typemoe.bridge)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_the_typemoe_package(tmp_path):
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path), *isolation],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("typemoe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"typemoe", next(t for t in tops if t.endswith(".dist-info"))}, sorted(tops)
    for room in ("training", "export", "bridge"):
        assert f"typemoe/{room}/__init__.py" in names
    assert "typemoe/bridge/demo_tune.mid" in names and "typemoe/default_model/manifest.json" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "typemoe-bridge = typemoe.bridge.cli:main" in entry
