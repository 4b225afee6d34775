"""Imports go one way (README, Packages): the bridge and the runtime never pull in torch."""

import subprocess
import sys

import pytest

TORCH_FREE = [
    "typemoe.vocab",
    "typemoe.analysis",
    "typemoe.streaming",
    "bridge",
    "typemoe.export.runtime",
    "typemoe.bridge.cli",
    "typemoe.bridge.daemon",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module):
    code = (
        f"import importlib.util, sys\n"
        f"spec = importlib.util.find_spec({module!r})\n"
        f"if spec is None: sys.exit(3)\n"
        f"import {module}\n"
        f"sys.exit(2 if 'torch' in sys.modules else 0)"
    )
    rc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if rc.returncode == 3:
        pytest.skip(f"{module} not written yet")
    assert rc.returncode == 0, f"importing {module} imported torch (rc={rc.returncode}): {rc.stderr[-2000:]}"


def test_typemoe_imports_no_sibling_package():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "typemoe"
    for f in root.glob("*.py"):
        for line in f.read_text().splitlines():
            assert not re.match(r"\s*(from|import)\s+(training|export|bridge)\b", line), f"{f.name}: {line}"
