"""Wall-time helpers the CPU benches share (``bench.gpu`` has its own, synchronizing a device)."""

from __future__ import annotations

import time
from collections.abc import Callable


def mean_ms(call: Callable[[], object], repeats: int) -> float:
    """Milliseconds per ``call`` over ``repeats`` calls, after one warm-up call."""
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1e3 * (time.perf_counter() - start) / repeats
