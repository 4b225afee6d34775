"""The console script without its optional packages: help works, and a command says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from typemoe import cli

REPO = Path(__file__).resolve().parents[1]


def typemoe_without_torch(*args: str) -> subprocess.CompletedProcess:
    """`typemoe ARGS` in a fresh interpreter where `import torch` fails, as on a machine without torch;
    it also reports whether anything imported torch after all."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from typemoe.cli import main\n"
        "try:\n"
        f"    rc = main({list(args)!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "print('torch loaded:', [m for m in sys.modules if m.startswith('torch.')])\n"
        "sys.exit(rc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("command", "flags"),
    [("train", ("--preset", "--labelled-fraction", "--objective")), ("finetune", ("--task", "--from"))],
)
def test_help_works_without_torch(command, flags):
    r = typemoe_without_torch(command, "--help")
    assert r.returncode == 0, r.stderr
    assert f"usage: typemoe {command}" in r.stdout and all(f in r.stdout for f in flags)
    assert "torch loaded: []" in r.stdout


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_run_without_torch_says_how_to_install_it(command, tmp_path):
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "run")]
    if command == "finetune":
        args += ["--task", "genre", "--from", str(tmp_path)]
    r = typemoe_without_torch(command, *args)
    assert r.returncode == 2
    assert f"`typemoe {command}` needs PyTorch" in r.stderr
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in r.stderr
    assert "Traceback" not in r.stderr


def test_any_missing_optional_package_is_named_with_its_install_command(monkeypatch, capsys):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name="music21")

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["eval", "--help"]) == 2
    err = capsys.readouterr().err
    assert (
        "`typemoe eval` needs the Python package 'music21'" in err and "pip install 'typemoe[train]'" in err
    )


def test_a_missing_module_of_our_own_is_not_hidden(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(
            "No module named 'typemoe.training.nothing'", name="typemoe.training.nothing"
        )

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    with pytest.raises(ModuleNotFoundError, match="typemoe.training.nothing"):
        cli.main(["eval"])
