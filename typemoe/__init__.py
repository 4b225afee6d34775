"""TypeMoE: the library (vocabulary, labels, model, decoder) and, installed beside it, its rooms
typemoe.training, typemoe.export and typemoe.bridge.

The rooms' sources are the repository's top-level folders `training/`, `export/` and `bridge/`;
pyproject.toml's package-dir installs them under this one name, so nothing else lands in site-packages.
Run from a checkout that is not installed (`python -m typemoe.training.learn.gpu_recipe` on a machine that only
received the working tree), the same names resolve to those folders: the repository root joins this
package's search path, for the rooms only.
"""

from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and all(
    (_ROOT / r / "__init__.py").is_file() for r in ("training", "export", "bridge")
):
    __path__.append(str(_ROOT))  # noqa: F821 (a package's own __path__)
