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


def test_a_bare_checkout_runs_the_rooms_by_their_installed_names(tmp_path):
    """The GPU machine gets the working tree, not an install: `python -m typemoe.training.learn.gpu_recipe`
    must still find the rooms (typemoe/__init__.py adds the checkout's root for them)."""
    tree = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in files.split():
        if rel.split("/")[0] in ("typemoe", "training", "export", "bridge") or rel == "pyproject.toml":
            if "default_model" in rel:
                continue
            dst = tree / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((REPO / rel).read_bytes())
    code = (
        "import typemoe.training.learn.gpu_recipe as g, typemoe.bridge.clock as c, typemoe.export.model_dir as m\n"
        "print(g.__file__); print(c.__file__); print(m.__file__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    paths = [Path(line) for line in r.stdout.split()]
    assert [p.relative_to(tree).as_posix() for p in paths] == [
        "training/learn/gpu_recipe.py",
        "bridge/clock.py",
        "export/model_dir.py",
    ]
