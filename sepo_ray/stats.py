"""Summary statistics shared by the evaluation, the comparisons and the tasks' own figures (numpy/scipy only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value; both NaN for none)."""
    arr = np.asarray(values, dtype=np.float64)
    if not len(arr):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties). scores, labels (N,) -> float."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("auroc: labels must contain both classes")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
