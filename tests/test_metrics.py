"""tasks/metrics.py on hand-made counts and histories: confusion counts, the class-averaged scores, which epoch is best."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headstart.tasks.metrics import best_index, confusion, improved, scores


def test_confusion_counts_rows_by_truth_and_columns_by_prediction():
    counts = confusion([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert counts.dtype == np.int64
    assert confusion([], [], 2).tolist() == [[0, 0], [0, 0]]  # no images: all zeros, still square


def test_a_minority_class_pulls_the_averages_down_where_accuracy_hides_it():
    # 9 of class 0 all right, 1 of class 1 called class 0: always answering "0".
    got = scores(np.array([[9, 0], [1, 0]]))
    assert got["acc"] == pytest.approx(0.9)
    assert got["balanced_acc"] == pytest.approx((1.0 + 0.0) / 2)
    # class 0: precision 9/10, recall 1 -> f1 18/19; class 1: nothing right -> 0.
    assert got["f1"] == pytest.approx((18 / 19 + 0.0) / 2)


def test_scores_of_a_hand_made_three_class_matrix():
    counts = np.array([[2, 1, 1], [0, 3, 0], [1, 0, 2]])  # rows: truth
    got = scores(counts)
    assert got["acc"] == pytest.approx(7 / 10)
    recall = [2 / 4, 3 / 3, 2 / 3]
    precision = [2 / 3, 3 / 4, 2 / 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert got["balanced_acc"] == pytest.approx(sum(recall) / 3)
    assert got["f1"] == pytest.approx(sum(f1) / 3)


def test_a_class_absent_from_the_labels_is_left_out_of_both_averages():
    # Class 2 never occurs but is predicted once: it has no recall and does not count.
    counts = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])
    got = scores(counts)
    assert got["acc"] == pytest.approx(5 / 6)
    assert got["balanced_acc"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert got["f1"] == pytest.approx((2 * 1.0 * 0.75 / 1.75 + 1.0) / 2)


def test_no_images_score_nan_not_an_error():
    got = scores(np.zeros((3, 3)))
    assert all(math.isnan(got[key]) for key in ("acc", "balanced_acc", "f1"))


def test_improved_is_strict_and_knows_which_way_is_better():
    assert improved({"val_loss": 0.5}, None, "val_loss")  # the first epoch always improves
    assert improved({"val_loss": 0.4}, {"val_loss": 0.5}, "val_loss")
    assert not improved({"val_loss": 0.6}, {"val_loss": 0.5}, "val_loss")
    assert not improved({"val_loss": 0.5}, {"val_loss": 0.5}, "val_loss")  # a tie keeps the earlier epoch
    assert improved({"val_f1": 0.8}, {"val_f1": 0.7}, "val_f1")  # higher is better for the rest
    assert not improved({"val_f1": 0.7}, {"val_f1": 0.7}, "val_f1")
    # A history from before the metric existed falls back to val_loss.
    assert improved({"val_loss": 0.4, "val_f1": 0.1}, {"val_loss": 0.5}, "val_f1")


def test_best_index_is_the_first_among_equals():
    history = [
        {"val_loss": 0.9, "val_acc": 0.5},
        {"val_loss": 0.4, "val_acc": 0.8},
        {"val_loss": 0.6, "val_acc": 0.8},
        {"val_loss": 0.4, "val_acc": 0.7},
    ]
    assert best_index(history, "val_loss") == 1
    assert best_index(history, "val_acc") == 1
    assert best_index(history[:1], "val_loss") == 0
    assert best_index([{"val_loss": 0.3}, *history], "val_acc") == 0  # the metric missing: val_loss decides
