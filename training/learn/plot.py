"""Training curves from metrics.jsonl, as a PNG.

    python -m typemoe.training.learn.plot runs/small                      # -> runs/small/curves.png
    python -m typemoe.training.learn.plot runs/ssmtp runs/clm --out ablation.png   # several runs overlaid

Three panels: training losses per term (lm solid, heads dashed), held-out LM loss, held-out key/meter
accuracy. Several runs share the panels, one colour per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_TERMS = ("lm", "key", "meter", "semi", "consistency", "cls")
STYLES = {"lm": "-", "key": "--", "meter": ":", "semi": "-.", "consistency": (0, (1, 3)), "cls": "--"}


def read_metrics(run: str | Path) -> list[dict]:
    """Records of a run directory (or a metrics.jsonl path); a line cut by a crash is skipped."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a training run directory")
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot(runs: list[str | Path], out: str | Path) -> Path:
    """Draw the curves of one or more runs into `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v, ax_a) = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        recs, c, name = read_metrics(run), colors[i % len(colors)], Path(run).name
        for term in TRAIN_TERMS:
            pts = [(r["step"], r[term]) for r in recs if term in r]
            if pts:
                ax_t.plot(*zip(*pts), color=c, linestyle=STYLES[term], label=f"{name} {term}")
        val = [(r["step"], r["val_lm"]) for r in recs if "val_lm" in r]
        if val:
            ax_v.plot(*zip(*val), color=c, marker="o", ms=3, label=name)
        for key, ls in (("val_key_acc", "-"), ("val_meter_acc", "--"), ("val_cls_acc", ":")):
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                ax_a.plot(*zip(*pts), color=c, linestyle=ls, marker="o", ms=3, label=f"{name} {key[4:]}")
    ax_t.set(title="training losses", xlabel="step", ylabel="loss (per token / position)")
    ax_v.set(title="held-out LM loss", xlabel="step", ylabel="nats / token")
    ax_a.set(title="held-out accuracy (whole window)", xlabel="step", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_t, ax_v, ax_a):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None, prog: str = "python -m typemoe.training.learn.plot") -> int:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics.jsonl files)")
    p.add_argument(
        "--out", type=Path, default=None, help="PNG path (default: RUN/curves.png of the first run)"
    )
    args = p.parse_args(argv)
    out = args.out or (args.runs[0] if args.runs[0].is_dir() else args.runs[0].parent) / "curves.png"
    try:
        print(plot(args.runs, out))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
