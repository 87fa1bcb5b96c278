"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence


def median_time(repeats: int, action: Callable[[], object]) -> float:
    """Median wall time of ``repeats`` runs of ``action`` (the median resists a busy neighbour's spikes)."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def median_interval(values: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % bootstrap interval for the median of ``values``: how far the next run's median may land.

    The wall-time ratios on this kind of virtual machine move by several percent between runs; a median
    printed without its interval reads as more exact than it is.
    """
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
