"""What the benchmarks share: the median wall time of a call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], object] = lambda: None) -> float:
    """The median over `repeats` calls of `fn` of its wall time; `sync` waits for the device (CUDA)."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
