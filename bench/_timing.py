"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(repeats: int, action: Callable[[], object]) -> float:
    """Median wall time of ``repeats`` runs of ``action`` (the median resists a busy neighbour's spikes)."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)
