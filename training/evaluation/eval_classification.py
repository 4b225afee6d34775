"""`typemoe eval`'s classification group: accuracy and macro-F1 of fine-tuned classification heads.

Any number of fine-tuned models: each one's head reads the first window of every held-out piece that has
the label of its task (genre, emotion or composer; from model.task, else from its class names). Reported
as the mean over models with `.std` (sample standard deviation) and `.n_models`, plus each model's own
numbers in details TASK.per_model; a piece missing the label is counted in skipped.TASK.
"""

from __future__ import annotations

import numpy as np

from typemoe import analysis
from typemoe.training.evaluation import metrics
from typemoe.training.evaluation.eval_data import EvalData
from typemoe.training.evaluation.eval_report import Report, _safe, _window

CLS_TASKS = ("genre", "emotion", "composer")


def _cls_task(model) -> str | None:
    if model.class_names is None:
        return None
    if model.task in CLS_TASKS:
        return model.task
    names = set(model.class_names)
    if names <= set(analysis.EMOTIONS):
        return "emotion"
    if names <= set(analysis.GENRES):
        return "genre"
    return "composer"


def classification(models: list, data: EvalData, window: int, report: Report) -> None:
    """Accuracy and macro-F1 of each fine-tuned classification head; mean and spread per task."""
    per_task: dict[str, list[tuple[float, float]]] = {}
    for model in models:
        task = _cls_task(model)
        if task is None:
            continue
        pred, true = [], []
        for piece in data.pieces:
            label = getattr(piece, task)
            if label is None:
                continue
            probs = model.class_probs(_window(piece, model.vocab, window))
            pred.append(model.class_names[int(np.argmax(probs))])
            true.append(label)
        report.skipped[task] += len(data.pieces) - len(true)
        per_task.setdefault(task, []).append((metrics.accuracy(pred, true), metrics.macro_f1(pred, true)))
        report.details.setdefault(f"{task}.per_model", []).append(
            {
                "model": str(model.path),
                "accuracy": _safe(per_task[task][-1][0]),
                "macro_f1": _safe(per_task[task][-1][1]),
                "n": len(true),
            }
        )
    r = report.results
    for task, scores in per_task.items():
        for j, name in enumerate(("accuracy", "macro_f1")):
            mean, std = metrics.mean_std([s[j] for s in scores])
            r[f"{task}.{name}"] = mean
            r[f"{task}.{name}.std"] = std
        r[f"{task}.n_models"] = len(scores)
