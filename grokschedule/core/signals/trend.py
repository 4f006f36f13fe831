"""Robust trend statistics over a short window: the building blocks of transition evidence.

Theil–Sen slope (median of pairwise slopes) and Kendall's tau ignore the odd spike that a
mini-batch or an Adam "slingshot" puts into a curve, where a least-squares slope would not.
Both are O(w²) in the window length w; with w ≤ 32 that is ~500 pairs, a few microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Trend:
    """Direction and size of a metric's movement over a window.

    ``slope`` is per step; ``change`` is slope × window span (the fitted total movement);
    ``tau`` is Kendall's rank correlation with time in [-1, 1] (how consistent the direction is).
    """

    slope: float
    change: float
    tau: float
    span: float

    def falling(self, min_change: float, min_tau: float = 0.5) -> bool:
        return self.change <= -min_change and self.tau <= -min_tau

    def rising(self, min_change: float, min_tau: float = 0.5) -> bool:
        return self.change >= min_change and self.tau >= min_tau


FLAT = Trend(slope=0.0, change=0.0, tau=0.0, span=0.0)


@cache
def pair_indices(n: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Index pairs (i < j) of a window of length n, built once per length."""
    i, j = np.triu_indices(n, k=1)
    return i, j


def _median(values: NDArray[np.float64]) -> float:
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float(
        ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    )


def theil_sen_slope(times: NDArray[np.float64], values: NDArray[np.float64]) -> float:
    """Median of the pairwise slopes (pairs with distinct times); 0 for fewer than two points."""
    if len(times) < 2:
        return 0.0
    i, j = pair_indices(len(times))
    dt = times[j] - times[i]
    valid = dt > 0
    if not valid.any():
        return 0.0
    return _median((values[j] - values[i])[valid] / dt[valid])


def robust_trend(times: NDArray[np.float64], values: NDArray[np.float64]) -> Trend:
    """Theil–Sen slope and Kendall tau of ``values`` against ``times`` (needs ≥ 3 points)."""
    if len(times) < 3:
        return FLAT
    i, j = pair_indices(len(times))
    dt = times[j] - times[i]
    dv = values[j] - values[i]
    valid = dt > 0
    if not valid.all():
        dt, dv = dt[valid], dv[valid]
    if not len(dt):
        return FLAT
    slope = _median(dv / dt)
    tau = float(np.count_nonzero(dv > 0) - np.count_nonzero(dv < 0)) / len(dv)
    span = float(times[-1] - times[0])
    return Trend(slope=slope, change=slope * span, tau=tau, span=span)


def log_trend(times: NDArray[np.float64], values: NDArray[np.float64]) -> Trend:
    """Trend of ``log(values)``: ``change`` is then a relative change (0.05 ≈ 5 %)."""
    return robust_trend(times, np.log(np.maximum(values, 1e-12)))
