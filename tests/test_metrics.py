"""Frame-level metrics against independent references (pairwise AUROC, step-wise AP, brute-force EER)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from vidanom import metrics


def pairwise_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney)."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def stepwise_ap(y: np.ndarray, s: np.ndarray) -> float:
    """AP = Σ (R_k − R_{k−1}) P_k over the distinct thresholds, highest first."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        flagged = s >= t
        tp = (flagged & (y == 1)).sum()
        recall, precision = tp / (y == 1).sum(), tp / flagged.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


def brute_force_eer(y: np.ndarray, s: np.ndarray) -> float:
    """Try every threshold, highest first (flag s >= t; inf flags nothing); take (fpr + fnr) / 2 where
    they are closest (the first such threshold on a tie)."""
    best = None
    for t in np.concatenate([[np.inf], np.unique(s)[::-1]]):
        flagged = s >= t
        fpr = (flagged & (y == 0)).sum() / (y == 0).sum()
        fnr = (~flagged & (y == 1)).sum() / (y == 1).sum()
        if best is None or abs(fnr - fpr) < best[0]:
            best = (abs(fnr - fpr), (fpr + fnr) / 2)
    return float(best[1])


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(np.int8)
    s = np.round(rng.normal(size=300) + 1.2 * y, 1)  # rounding makes ties, which must count half
    return y, s


def test_auroc_against_pairwise_reference_and_sklearn(case):
    y, s = case
    assert metrics.auroc(y, s) == pytest.approx(pairwise_auroc(y, s), abs=1e-12)
    assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auprc_against_stepwise_reference_and_sklearn(case):
    y, s = case
    out = metrics.summary(y, s)
    assert out["auprc"] == pytest.approx(stepwise_ap(y, s), abs=1e-12)
    assert out["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_eer_of_separable_and_reversed_scores():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics.eer(y, s) == 0.0
    assert metrics.eer(y, -s) == 1.0


def test_eer_by_hand():
    # flag the top two scores (0.9, 0.6): one false alarm of two negatives, one miss of two positives
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.9])
    assert metrics.eer(y, s) == 0.5


def test_eer_where_fpr_meets_fnr_inside_a_straight_part_of_the_roc_curve():
    # in score order: two negatives, four positives, two negatives. Flagging the top four frames gives
    # fpr = fnr = 0.5; roc_curve(drop_intermediate=True) drops that collinear point and the EER came out 0.75
    y = np.array([0, 0, 1, 1, 1, 1, 0, 0])
    s = -np.arange(8.0)
    assert metrics.eer(y, s) == pytest.approx(brute_force_eer(y, s)) == 0.5


def test_eer_against_brute_force(case):
    y, s = case
    assert metrics.eer(y, s) == pytest.approx(brute_force_eer(y, s), abs=1e-12)


def test_summary_with_both_classes(case):
    y, s = case
    out = metrics.summary(y, s)
    assert out["frames"] == len(y) and out["anomalous_frames"] == int((y == 1).sum())
    assert out["auroc"] == pytest.approx(pairwise_auroc(y, s))
    assert out["eer"] == pytest.approx(brute_force_eer(y, s))


@pytest.mark.parametrize("label", [0, 1])
def test_summary_with_one_class_has_no_ranking_metrics(label):
    y = np.full(10, label, dtype=np.int8)
    out = metrics.summary(y, np.linspace(0, 1, 10))
    assert out["auroc"] is None and out["auprc"] is None and out["eer"] is None
    assert out["frames"] == 10 and out["anomalous_frames"] == 10 * label


def test_summary_counts_many_int8_labels_without_overflow():
    y = np.ones(300, dtype=np.int8)  # label vectors are int8; their sum must not wrap around
    y[:50] = 0
    out = metrics.summary(y, np.arange(300.0))
    assert out["anomalous_frames"] == 250 and out["auroc"] == 1.0
