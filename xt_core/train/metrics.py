"""Classification metrics written with numpy alone (no scikit-learn): the figures a lab reports.

Every function takes integer labels ``y_true`` (``0..C-1``) and either predicted labels or
class probabilities ``(n, C)``. Classes absent from ``y_true`` are handled the way
scikit-learn handles them, so the figures can be compared with published ones:

* balanced accuracy: mean recall over the classes present in ``y_true``;
* macro F1: mean F1 over the classes present in ``y_true`` or predicted (F1 of a class
  never predicted and never true would be 0/0 and is left out; a class predicted but
  never true counts with F1 = 0);
* AUC: one-vs-rest, per class by the Mann-Whitney statistic with tied scores counted as
  half (average ranks), averaged over the classes that have both positives and negatives;
  ``None`` when no class has both.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "binary_auc",
    "classification_metrics",
    "confusion_matrix",
    "macro_f1",
    "macro_auc_ovr",
]


def _labels(y: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.int64).reshape(-1)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= num_classes or p.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true, y_pred) -> float:
    t, p = _labels(y_true), _labels(y_pred)
    return float((t == p).mean()) if t.size else float("nan")


def balanced_accuracy(y_true, y_pred, num_classes: int | None = None) -> float:
    """Mean per-class recall over the classes that occur in ``y_true``."""
    t, p = _labels(y_true), _labels(y_pred)
    if not t.size:
        return float("nan")
    n = num_classes or int(max(t.max(), p.max()) + 1)
    cm = confusion_matrix(t, p, n)
    support = cm.sum(axis=1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean())


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Mean F1 over the classes present in ``y_true`` or ``y_pred``."""
    t, p = _labels(y_true), _labels(y_pred)
    if not t.size:
        return float("nan")
    n = num_classes or int(max(t.max(), p.max()) + 1)
    cm = confusion_matrix(t, p, n)
    tp = np.diag(cm).astype(np.float64)
    true_count, pred_count = cm.sum(axis=1), cm.sum(axis=0)
    present = (true_count + pred_count) > 0
    f1 = np.divide(2 * tp, true_count + pred_count, out=np.zeros(n), where=present)
    return float(f1[present].mean())


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``; ties count half.

    ``None`` when there are no positives or no negatives.
    """
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc_ovr(y_true, probabilities: np.ndarray) -> float | None:
    """One-vs-rest AUC averaged over the classes with both positives and negatives."""
    t = _labels(y_true)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != t.size:
        raise ValueError(f"probabilities must be (n, C) with n = {t.size}, got {probs.shape}")
    aucs = [binary_auc(t == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def classification_metrics(y_true, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """accuracy, balanced_accuracy, macro_f1, auc (None when undefined), confusion_matrix, n."""
    t = _labels(y_true)
    probs = np.asarray(probabilities, dtype=np.float64).reshape(t.size, len(classes))
    pred = probs.argmax(axis=1) if t.size else t
    n = len(classes)
    return {
        "n": int(t.size),
        "accuracy": accuracy(t, pred),
        "balanced_accuracy": balanced_accuracy(t, pred, n),
        "macro_f1": macro_f1(t, pred, n),
        "auc": macro_auc_ovr(t, probs) if t.size else None,
        "confusion_matrix": confusion_matrix(t, pred, n).tolist(),
    }
