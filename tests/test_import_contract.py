"""The import contract, read from the real imports of every module (function-local ones included).

Rooms and who may import whom (one way down):
  core      typemoe/*.py: the library (vocabulary, labels, model, decoder). It imports no other room.
  cli       typemoe/cli.py and typemoe/commands/: the composition root, the one place that may know
            every room (the user commands live here).
  export    typemoe.export: torch -> ONNX, and the torch-free runtime. Never the bridge or training.
  training  typemoe.training: data, training, evaluation. Core, and export's torch-free runtime
            (to score exported model directories). Never the bridge.
  bridge    typemoe.bridge: the realtime daemon. Core's torch-free modules and export's torch-free runtime.
Torch-free modules (the bridge's whole import graph) never import torch, even inside a function.
The rooms are installed under the one `typemoe` name (pyproject's package-dir), so every import of a room
says `typemoe.training`, `typemoe.export`, `typemoe.bridge`: a bare `training` works only from a checkout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = {"training": REPO / "training", "export": REPO / "export", "bridge": REPO / "bridge"}
RUNTIME = {"export.runtime", "export.model_dir", "export.ort_graph"}  # export's torch-free part
TORCH_FREE_CORE = {
    "typemoe.vocab", "typemoe.analysis", "typemoe.streaming", "typemoe.decoding", "typemoe.meter",
    "typemoe.remi_notes", "typemoe.note_writer", "typemoe.grammar_tables", "typemoe.shipped", "typemoe.config",
    "typemoe.key_fusion", "typemoe.infill", "typemoe.listening", "typemoe.sampling", "typemoe.emotion_fusion",
}  # fmt: skip


def canonical(name: str) -> str:
    """'typemoe.bridge.engine' and 'bridge.engine' are the same module: drop the namespace prefix of a room."""
    for room in ROOMS:
        if name == f"typemoe.{room}" or name.startswith(f"typemoe.{room}."):
            return name[len("typemoe.") :]
    return name


def room_of(name: str) -> str:
    name = canonical(name)
    top = name.split(".")[0]
    if name == "typemoe.cli" or name.startswith("typemoe.commands"):
        return "cli"  # the composition root: the one place that knows every room
    return top if top in ROOMS else ("core" if top == "typemoe" else "external")


def in_runtime(name: str) -> bool:
    """export's torch-free runtime, or the bare export package (a module or a name imported from one)."""
    return name == "export" or any(name == r or name.startswith(r + ".") for r in RUNTIME)


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement, at any depth; relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # `from pkg import module`
    return out


def violations(module: str, source: str) -> list[str]:
    """Every broken rule of one module's source, as 'module:line imports X (why)'."""
    mod = canonical(module)
    here = room_of(mod)
    bad = []
    torch_free = here == "bridge" or mod in RUNTIME or mod in TORCH_FREE_CORE
    for line, name in imports_of(source, module):
        target = canonical(name)
        there = room_of(target)
        why = None
        if torch_free and target.split(".")[0] == "torch":
            why = "a torch-free module imports torch"
        elif here == "core" and there in ROOMS:
            why = "the library imports one of its users"
        elif here == "export" and there in ("bridge", "training"):
            why = "export imports the bridge or training"
        elif here == "training" and there == "bridge":
            why = "training imports the bridge"
        elif here == "training" and there == "export" and not in_runtime(target):
            why = "training imports export's torch side"
        elif here == "bridge" and there == "training":
            why = "the bridge imports training"
        elif here == "bridge" and there == "export" and not in_runtime(target):
            why = "the bridge imports export's torch side"
        elif (mod in RUNTIME or mod in TORCH_FREE_CORE) and target in {"typemoe.model", "typemoe.moe"}:
            why = "a torch-free module imports the torch model"
        elif name.split(".")[0] in ROOMS:
            why = f"a room outside the namespace: installed, it is typemoe.{name}"
        if why:
            bad.append(f"{module}:{line} imports {name} ({why})")
    return bad


def all_modules() -> list[tuple[str, Path]]:
    mods = [(f"typemoe.{p.stem}", p) for p in sorted((REPO / "typemoe").glob("*.py"))]
    mods += [(f"typemoe.commands.{p.stem}", p) for p in sorted((REPO / "typemoe" / "commands").glob("*.py"))]
    for room, folder in ROOMS.items():
        mods += [(f"typemoe.{room}.{p.relative_to(folder).with_suffix('').as_posix().replace('/', '.')}", p)
                 for p in sorted(folder.rglob("*.py"))]  # fmt: skip
    return [(m.removesuffix(".__init__"), p) for m, p in mods]


def test_the_repository_keeps_the_contract():
    bad = [v for module, path in all_modules() for v in violations(module, path.read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("bridge.engine", "def f():\n    import torch\n", "torch-free"),
        ("typemoe.bridge.engine", "from typemoe.training import data\n", "training"),
        ("export.onnx_export", "from bridge import bench\n", "export imports"),
        ("typemoe.vocab", "def g():\n    from typemoe.export import runtime\n", "its users"),
        ("typemoe.bridge.worker", "from export.runtime import OrtModel\n", "outside the namespace"),
        ("training.evaluate", "from export.onnx_export import export_model\n", "torch side"),
        ("export.runtime", "from typemoe.model import TypeMoE\n", "torch"),
    ],
)
def test_a_planted_violation_is_caught(module, source, why):
    found = violations(module, source)
    assert found and why in found[0], found


def test_tests_and_examples_import_rooms_through_the_namespace():
    """The suite runs from a checkout, where a bare `import training` would still work: it must not."""
    bad = []
    for path in sorted([*(REPO / "tests").glob("*.py"), *(REPO / "examples").rglob("*.py")]):
        for line, name in imports_of(path.read_text(encoding="utf-8"), "tests"):
            if name.split(".")[0] in ROOMS:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name} (use typemoe.{name})")
    assert not bad, "\n".join(bad)


def test_allowed_imports_pass():
    assert not violations(
        "typemoe.bridge.worker", "from typemoe.export.runtime import OrtModel\nfrom typemoe.vocab import X\n"
    )
    assert not violations("training.evaluate", "from typemoe.export.runtime import OrtModel\n")
