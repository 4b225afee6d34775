"""Without jackd, typemoe.bridge.bench fails at once with a catchable reason that says what to install."""

from __future__ import annotations

import shutil

import pytest

from typemoe.bridge import bench


def test_no_jackd_is_a_clear_catchable_reason(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(bench.BridgeBenchUnavailable, match="jackd") as err:
        bench.run_bridge_bench("/nonexistent/model")  # checked before the model is even loaded
    assert isinstance(err.value, RuntimeError)
    assert "apt-get install jackd2" in str(err.value)
