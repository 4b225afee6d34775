"""PNG plots of an evaluation: confusion matrices, streaming accuracy, expert use,
and the label-efficiency curve of an ablation run. matplotlib with the Agg backend (no display needed).

Every function takes plain numbers (the dicts `typemoe eval` writes), so a plot can be redrawn from a
results.json later.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

STREAM_BARS = (1, 2, 4, 8)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def confusion(cm: np.ndarray | list, names: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (rows = true class) with raw counts in the cells that have any.

    Classes that never occur (no true and no predicted piece) are left out so the plot stays readable.
    """
    plt = _plt()
    cm = np.asarray(cm, dtype=np.int64)
    used = np.flatnonzero((cm.sum(0) + cm.sum(1)) > 0)
    if len(used) == 0:
        used = np.arange(len(names))
    cm = cm[np.ix_(used, used)]
    labels = [names[i] for i in used]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.38 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = cm.sum()
    acc = np.trace(cm) / total if total else math.nan
    ax.set_title(f"{title} (n={total}, accuracy {acc:.3f})", fontsize=9)
    if len(labels) <= 24:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def streaming(results: dict, path: Path) -> Path:
    """Key and meter head accuracy after 1, 2, 4, 8 bars and on the whole piece, beside the baselines."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = list(STREAM_BARS) + [16]
    for ax, task, bases in (
        (axes[0], "key", ("krumhansl", "aarden", "temperley", "simple", "majority")),
        (axes[1], "meter", ("autocorrelation", "majority")),
    ):
        ys = [results.get(f"{task}.streaming.{n}") for n in STREAM_BARS] + [results.get(f"{task}.accuracy")]
        ys = [math.nan if y is None else y for y in ys]
        ax.plot(x, ys, marker="o", label="TypeMoE head")
        for i, b in enumerate(bases):
            v = results.get(f"{task}.baselines.{b}")
            if v is not None and not math.isnan(v):
                ax.axhline(v, linestyle="--", linewidth=1, color=f"C{i + 1}", label=f"{b} (whole piece)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(n) for n in STREAM_BARS] + ["whole"])
        ax.set_xlabel("bars heard (4-beat groups)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"{task} (n={results.get(f'{task}.n', '?')})")
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def expert_share(experts: dict, path: Path) -> Path:
    """One heatmap per layer: the share of each token type's tokens sent to each expert."""
    plt = _plt()
    share = np.asarray(experts["share"])  # (L, types, experts)
    types = experts["type_names"]
    n_layer = share.shape[0]
    fig, axes = plt.subplots(1, n_layer, figsize=(2.6 * n_layer + 1, 3), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        im = ax.imshow(share[layer], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks(range(share.shape[2]), [str(e) for e in range(share.shape[2])], fontsize=7)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_yticks(range(len(types)), types if layer == 0 else [""] * len(types), fontsize=7)
    fig.suptitle(f"expert token share per type ({experts.get('ffn', '?')})", fontsize=10)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_efficiency(
    fractions: list[float],
    curves: dict[str, list[float]],
    path: Path,
    baselines: dict[str, float] | None = None,
) -> Path:
    """Accuracy against the share of labels used in training (log x), one line per metric."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, ys) in enumerate(curves.items()):
        ax.plot(
            [100 * f for f in fractions],
            [math.nan if y is None else y for y in ys],
            marker="o",
            color=f"C{i}",
            label=name,
        )
    for i, (name, v) in enumerate((baselines or {}).items()):
        if v is not None and not math.isnan(v):
            ax.axhline(v, linestyle="--", linewidth=1, color=f"C{i + len(curves)}", label=name)
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("labelled pieces used")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("label efficiency")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_report(results: dict, details: dict, out_dir: Path, *, prefix: str = "results") -> list[Path]:
    """Every plot an evaluation has data for, as out_dir/<prefix>.<name>.png."""
    out_dir = Path(out_dir)
    written = []
    for task in ("key", "meter"):
        cm = details.get(f"{task}.confusion")
        if cm is not None and np.asarray(cm).sum() > 0:
            written.append(
                confusion(
                    cm, details[f"{task}.names"], f"{task} head", out_dir / f"{prefix}.{task}_confusion.png"
                )
            )
    cm = details.get("meter.baselines.autocorrelation.confusion")
    if cm is not None and np.asarray(cm).sum() > 0:
        written.append(
            confusion(
                cm,
                details["meter.names"],
                "meter, autocorrelation baseline",
                out_dir / f"{prefix}.meter_baseline_confusion.png",
            )
        )
    if "key.streaming.1" in results or "meter.streaming.1" in results:
        written.append(streaming(results, out_dir / f"{prefix}.streaming.png"))
    if details.get("experts"):
        written.append(expert_share(details["experts"], out_dir / f"{prefix}.expert_share.png"))
    return written
