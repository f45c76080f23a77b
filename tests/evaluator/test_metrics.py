"""Metric functions against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec_evaluator import EvaluatorError, acc_at_k, auc, hr_at_k, mrr, ndcg_at_k, target_ranks
from genrec_evaluator._metrics import ranking_metrics, seqrec_metrics

# Targets at ranks 1, 3, 6 and absent.
RANKED = [[7, 1, 2], [4, 5, 9, 0], [1, 2, 3, 4, 5, 6], [8, 9]]
TARGETS = [7, 9, 6, 3]


def test_target_ranks_hand_computed() -> None:
    np.testing.assert_array_equal(target_ranks(RANKED, TARGETS), [1, 3, 6, np.inf])


def test_acc_and_hr_hand_computed() -> None:
    assert acc_at_k(RANKED, TARGETS, 1) == 0.25
    assert acc_at_k(RANKED, TARGETS, 3) == 0.5
    assert acc_at_k(RANKED, TARGETS, 5) == 0.5
    assert acc_at_k(RANKED, TARGETS, 10) == 0.75
    assert hr_at_k(RANKED, TARGETS, 10) == 0.75


def test_ndcg_and_mrr_hand_computed() -> None:
    assert ndcg_at_k(RANKED, TARGETS, 5) == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert ndcg_at_k(RANKED, TARGETS, 10) == pytest.approx((1 + 0.5 + 1 / math.log2(7)) / 4)
    assert mrr(RANKED, TARGETS) == pytest.approx((1 + 1 / 3 + 1 / 6 + 0) / 4)


def test_ranking_metrics_names() -> None:
    m = ranking_metrics(target_ranks(RANKED, TARGETS))
    assert set(m) == {"acc@1", "acc@5", "acc@10", "ndcg@5", "ndcg@10", "mrr", "n"}
    assert m["n"] == 4
    s = seqrec_metrics([1, 2, 30])
    assert s["hr@20"] == pytest.approx(2 / 3)
    assert s["ndcg@1"] == pytest.approx(1 / 3)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 30), st.integers(1, 12), st.integers(0, 10_000))
def test_ndcg_matches_sklearn(n_items: int, k: int, seed: int) -> None:
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(seed)
    n_rec = 5
    scores = rng.permutation(n_rec * n_items).reshape(n_rec, n_items).astype(float)  # no ties
    targets = rng.integers(0, n_items, n_rec)
    y_true = np.zeros_like(scores)
    y_true[np.arange(n_rec), targets] = 1
    ranked = [list(np.argsort(-row)) for row in scores]
    assert ndcg_at_k(ranked, targets.tolist(), k) == pytest.approx(ndcg_score(y_true, scores, k=k))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10_000), st.booleans())
def test_auc_matches_sklearn(n: int, seed: int, ties: bool) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    scores = rng.integers(0, 4, n).astype(float) if ties else rng.normal(size=n)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_auc_hand_computed() -> None:
    # Pairs (pos, neg): (0.8, 0.1) win, (0.8, 0.4) win, (0.35, 0.1) win, (0.35, 0.4) loss.
    assert auc([1, 0, 1, 0], [0.8, 0.1, 0.35, 0.4]) == 0.75
    assert auc([1, 0], [0.5, 0.5]) == 0.5


def test_metric_errors() -> None:
    with pytest.raises(EvaluatorError, match="empty"):
        acc_at_k([], [], 1)
    with pytest.raises(EvaluatorError, match="k must be"):
        acc_at_k([[1]], [1], 0)
    with pytest.raises(EvaluatorError, match="both classes"):
        auc([1, 1], [0.2, 0.3])
    with pytest.raises(EvaluatorError, match="rows"):
        mrr([[1]], [1, 2])
