"""Offline fitting for the grok predictor: weighted logistic and ridge regression, and AUROC.

Pure numpy, so a predictor can be refitted (``grokschedule bench predictor``) wherever the core
runs; the runtime predictor only evaluates the coefficients these produce.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray


def fit_logistic(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    weight: NDArray[np.float64],
    l2: float,
    iterations: int = 100,
) -> NDArray[np.float64]:
    """L2-penalized weighted logistic regression by Newton's method (IRLS); the intercept
    (column 0 of the returned coefficients) is not penalized."""
    design = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(iterations):
        z = np.clip(design @ beta, -30, 30)
        p = 1 / (1 + np.exp(-z))
        gradient = design.T @ (weight * (p - y)) + penalty * beta
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        hessian += 1e-9 * np.eye(len(beta))
        delta = np.linalg.solve(hessian, gradient)
        beta -= delta
        if np.max(np.abs(delta)) < 1e-9:
            break
    return beta


def fit_ridge(
    x: NDArray[np.float64], y: NDArray[np.float64], weight: NDArray[np.float64], l2: float
) -> NDArray[np.float64]:
    """Weighted ridge regression; column 0 of the result is the (unpenalized) intercept."""
    design = np.column_stack([np.ones(len(x)), x])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    lhs = (design * weight[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(len(penalty))
    return np.asarray(np.linalg.solve(lhs, (design * weight[:, None]).T @ y), dtype=np.float64)


def auroc(scores: NDArray[np.float64], labels: NDArray[np.float64]) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    positive = labels > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
