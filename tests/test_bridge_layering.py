"""The bridge never imports torch, even where torch is installed (miditok would pull it in)."""

from __future__ import annotations

import subprocess
import sys


def test_bridge_imports_leave_torch_out():
    code = (
        "import sys\n"
        "import typemoe.bridge.cli, typemoe.bridge.daemon, typemoe.bridge.engine, typemoe.bridge.demo\n"
        "import typemoe.bridge.bench, typemoe.bridge.toy_model, typemoe.bridge.model\n"
        "import typemoe.bridge.worker, typemoe.bridge.midi_io, typemoe.bridge.osc_io\n"
        "from typemoe.bridge.toy_model import ToyModel\n"
        "ToyModel()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
