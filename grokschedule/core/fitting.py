"""Offline fitting for the grok predictor: sign-constrained logistic, ridge and median regression,
and AUROC.

Pure numpy, so a predictor can be refitted (``grokschedule bench predictor``) wherever the core
runs, and so ``SweepAdaptivePredictor`` can refit during a sweep; the runtime predictor
otherwise only evaluates the coefficients these produce.

``fit_logistic`` is a projected Newton method (Bertsekas 1982) for a weighted logistic loss with
a Gaussian penalty centred anywhere (a plain L2 ridge, or a prior) and box bounds on each
coefficient. The bounds are how the predictor keeps the signs that make physical sense (a
falling validation loss never counts against grokking, whatever a small bank suggests); the
centred penalty is how a sweep's own outcomes move the shipped coefficients a little, not all
the way.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

_TOLERANCE = 1e-8


def _penalty(l2: ArrayLike, n: int) -> NDArray[np.float64]:
    """The penalty's precision matrix: a scalar leaves the intercept (coefficient 0) unpenalized,
    a vector is one precision per coefficient, a matrix is used as it is."""
    precision = np.asarray(l2, dtype=np.float64)
    if precision.ndim == 0:
        diagonal = np.full(n, float(precision))
        diagonal[0] = 0.0
        precision = np.diag(diagonal)
    elif precision.shape == (n,):
        precision = np.diag(precision)
    elif precision.shape != (n, n):
        raise ValueError(
            f"l2 must be a scalar, {n} precisions or an {n}×{n} matrix, got {precision.shape}"
        )
    if not np.all(np.isfinite(precision)) or np.any(np.diag(precision) < 0):
        raise ValueError("l2 must be finite with a diagonal >= 0")
    return precision


def _bound(values: ArrayLike | None, n: int, fill: float, name: str) -> NDArray[np.float64]:
    if values is None:
        return np.full(n, fill)
    bound = np.asarray(values, dtype=np.float64)
    if bound.shape != (n,):
        raise ValueError(f"{name} must have {n} entries (intercept first), got {bound.shape}")
    return bound


def fit_logistic(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    weight: NDArray[np.float64],
    l2: ArrayLike,
    iterations: int = 100,
    *,
    lower: ArrayLike | None = None,
    upper: ArrayLike | None = None,
    center: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Weighted logistic regression minimizing
    ``Σ wᵢ·logloss(yᵢ, β₀ + xᵢ·β) + ½ (β − center)ᵀ Λ (β − center)`` subject to
    ``lower ≤ β ≤ upper``; returns ``β`` with the intercept first.

    ``l2`` gives Λ: a scalar (a ridge that leaves the intercept unpenalized), one precision per
    coefficient, or a full precision matrix (a Gaussian prior's inverse covariance);
    ``center`` defaults to zeros; ``lower``/``upper`` (intercept first, ``±inf`` for free) must
    contain ``center`` clipped into them. Each step is a Newton step on the coefficients not
    held at a bound, projected back into the box with an Armijo backtracking line search."""
    n = x.shape[1] + 1
    design = np.column_stack([np.ones(len(x)), x])
    penalty = _penalty(l2, n)
    lo, hi = _bound(lower, n, -math.inf, "lower"), _bound(upper, n, math.inf, "upper")
    if np.any(lo > hi):
        raise ValueError("lower must be <= upper for every coefficient")
    mid = np.zeros(n) if center is None else np.asarray(center, dtype=np.float64)
    beta = np.clip(mid, lo, hi)

    def objective(b: NDArray[np.float64]) -> float:
        z = design @ b
        loss = weight @ (np.logaddexp(0.0, z) - y * z)
        return float(loss + 0.5 * (b - mid) @ penalty @ (b - mid))

    value = objective(beta)
    for _ in range(iterations):
        z = design @ beta
        p = 0.5 * (1 + np.tanh(0.5 * z))  # the logistic function, without overflow
        gradient = design.T @ (weight * (p - y)) + penalty @ (beta - mid)
        held = ((beta <= lo) & (gradient > 0)) | ((beta >= hi) & (gradient < 0))
        free = ~held
        if not free.any() or np.max(np.abs(gradient[free])) < _TOLERANCE:
            break
        curvature = weight * p * (1 - p)
        hessian = (design[:, free] * curvature[:, None]).T @ design[:, free]
        hessian += penalty[np.ix_(free, free)] + 1e-9 * np.eye(int(free.sum()))
        direction = np.zeros(n)
        direction[free] = -np.linalg.solve(hessian, gradient[free])
        step = 1.0
        while True:
            trial = np.clip(beta + step * direction, lo, hi)
            trial_value = objective(trial)
            if trial_value <= value + 1e-4 * gradient @ (trial - beta) or step < 1e-10:
                break
            step /= 2
        moved = float(np.max(np.abs(trial - beta)))
        beta, value = trial, trial_value
        if moved < _TOLERANCE:
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


def fit_median(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    weight: NDArray[np.float64],
    l2: float,
    iterations: int = 50,
) -> NDArray[np.float64]:
    """Weighted least-absolute-deviation (median) regression with a ridge penalty, by iteratively
    reweighted least squares from the ridge fit; column 0 of the result is the intercept. For a
    target judged by its median error (the ETA), the median fit, not the mean, is the one to
    make: a few runs that grok very late do not drag every estimate later."""
    beta = fit_ridge(x, y, weight, l2)
    design = np.column_stack([np.ones(len(x)), x])
    for _ in range(iterations):
        residual = np.abs(y - design @ beta)
        updated = fit_ridge(x, y, weight / np.maximum(residual, 1e-3), l2)
        if np.max(np.abs(updated - beta)) < 1e-6:
            return updated
        beta = updated
    return beta


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
