"""A fixed-capacity ring buffer of ``(time, value)`` samples.

Every per-trial signal is computed from a bounded window so that memory per trial stays
constant however long a run reports — the scheduler may watch thousands of trials at once.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


class MetricWindow:
    """The most recent ``capacity`` finite samples of one metric, oldest first on read."""

    def __init__(self, capacity: int = 32) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self._times = np.zeros(capacity)
        self._values = np.zeros(capacity)
        self._count = 0  # samples ever appended

    def append(self, time: float, value: float) -> None:
        slot = self._count % self.capacity
        self._times[slot] = time
        self._values[slot] = value
        self._count += 1

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    def _ordered(self, array: NDArray[np.float64], last: int | None) -> NDArray[np.float64]:
        n = len(self)
        if self._count > self.capacity:
            start = self._count % self.capacity
            array = np.concatenate([array[start:], array[:start]])
        else:
            array = array[:n]
        return array if last is None else array[-last:]

    def times(self, last: int | None = None) -> NDArray[np.float64]:
        return self._ordered(self._times, last)

    def values(self, last: int | None = None) -> NDArray[np.float64]:
        return self._ordered(self._values, last)

    @property
    def latest(self) -> float:
        if not self._count:
            raise IndexError("empty window")
        return float(self._values[(self._count - 1) % self.capacity])
