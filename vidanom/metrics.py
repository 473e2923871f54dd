"""Frame-level detection metrics against labels (scikit-learn underneath)."""

from __future__ import annotations

from typing import Any

import numpy as np

# scikit-learn is imported where it is used: it takes seconds to import, and only `eval` needs it


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def eer(y: np.ndarray, s: np.ndarray) -> float:
    """Equal error rate: where the false positive rate meets the miss rate on the ROC curve."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # a dropped point may be where fpr = fnr
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def summary(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """Micro metrics over pooled frames; AUROC and friends need both classes present."""
    out: dict[str, Any] = {"frames": int(len(y)), "anomalous_frames": int(y.sum())}
    if 0 < y.sum() < len(y):
        from sklearn.metrics import average_precision_score

        out.update(auroc=auroc(y, s), auprc=float(average_precision_score(y, s)), eer=eer(y, s))
    else:
        out.update(auroc=None, auprc=None, eer=None)
    return out
