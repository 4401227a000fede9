"""Metrics against hand-computed values (scikit-learn's definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from xt_core.train.metrics import (
    accuracy,
    balanced_accuracy,
    binary_auc,
    classification_metrics,
    confusion_matrix,
    macro_auc_ovr,
    macro_f1,
)


def test_confusion_accuracy_balanced_f1() -> None:
    y = [0, 0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 1, 1, 0]
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 2, 0], [0, 2, 0], [1, 0, 0]]
    assert accuracy(y, p) == pytest.approx(4 / 7)
    assert balanced_accuracy(y, p, 3) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # F1: class 0: 2*2/(4+3)=4/7; class 1: 2*2/(2+4)=2/3; class 2: 0 (true but never predicted)
    assert macro_f1(y, p, 3) == pytest.approx((4 / 7 + 2 / 3 + 0) / 3)


def test_absent_classes_are_left_out_like_sklearn() -> None:
    # class 2 neither true nor predicted: not in balanced accuracy or macro F1
    assert balanced_accuracy([0, 1], [0, 1], 3) == 1.0
    assert macro_f1([0, 1], [0, 1], 3) == 1.0
    # predicted but never true: F1 0 counts, recall not defined so not in balanced accuracy
    assert macro_f1([0, 0], [0, 2], 3) == pytest.approx((2 / 3 + 0) / 2)
    assert balanced_accuracy([0, 0], [0, 2], 3) == 0.5


def test_auc_with_ties_counts_half() -> None:
    assert binary_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert binary_auc([1, 0], [0.5, 0.5]) == 0.5
    # pos scores {0.8, 0.5}, neg {0.5, 0.1}: pairs (0.8>0.5,0.8>0.1,0.5=0.5,0.5>0.1) = 3.5/4
    assert binary_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert binary_auc([1, 1], [0.1, 0.2]) is None


def test_auc_matches_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert binary_auc(y, s) == pytest.approx(pairwise)


def test_macro_auc_and_record() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    assert macro_auc_ovr(y, probs) == 1.0
    rec = classification_metrics(y, probs, ["a", "b", "c"])
    assert rec["accuracy"] == 1.0 and rec["n"] == 4 and rec["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert macro_auc_ovr([0, 0], np.array([[0.6, 0.4], [0.7, 0.3]])) is None  # one class only: undefined
