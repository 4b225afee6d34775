"""docs/INTERNAL_API.md stays true: every class and function it names exists where it says.

Each `## module` section's code block is read: a `class X` or `def f` at the start of a line (or after `;`)
must be an attribute of the module, a `def m` indented under a class an attribute of that class. Comments
(after `#`) are not read. A renamed or removed name fails here until the contract is updated with it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "INTERNAL_API.md"
_NAME = re.compile(r"(?:^|;)\s*(?:@\w+\s+)*(?:async\s+)?(def|class)\s+(\w+)")


def _sections() -> list[tuple[str, list[str]]]:
    """(module, code lines) of every `## module ...` heading followed by a ```python block."""
    out, module, code, inside = [], None, [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            word = line[3:].split()[0]
            module = word if re.fullmatch(r"[\w.]+", word) and "." in word else None
        elif line.startswith("```python") and module:
            inside, code = True, []
        elif line.startswith("```") and inside:
            inside = False
            out.append((module, code))
        elif inside:
            code.append(line)
    return out


def _names(code: list[str]) -> list[tuple[str | None, str]]:
    """(owning class or None, name) of every def/class the lines declare."""
    names, owner = [], None
    for raw in code:
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indented = line.startswith(" ")
        for kind, name in _NAME.findall(line):
            if indented:
                names.append((owner, name))
            else:
                names.append((None, name))
                if kind == "class":
                    owner = name
        if not indented and not _NAME.findall(line):
            owner = None
    return names


SECTIONS = _sections()


def test_the_contract_names_modules_and_names():
    assert len(SECTIONS) >= 8, [m for m, _ in SECTIONS]
    assert sum(len(_names(code)) for _, code in SECTIONS) >= 60


@pytest.mark.parametrize("module,code", SECTIONS, ids=[m for m, _ in SECTIONS])
def test_every_named_class_and_function_exists(module, code):
    path = module if module.startswith("typemoe") else f"typemoe.{module}"
    mod = importlib.import_module(path)
    missing = []
    for owner, name in _names(code):
        where = getattr(mod, owner, None) if owner else mod
        if where is None or not hasattr(where, name):
            missing.append(f"{owner}.{name}" if owner else name)
    assert not missing, f"docs/INTERNAL_API.md names {missing} in {module}, which does not have them"
