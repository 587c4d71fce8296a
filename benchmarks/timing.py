"""Timing shared by the benchmark scripts."""
from __future__ import annotations

import statistics
import time


def timed(function, repeat: int = 3) -> float:
    """Median wall time of `repeat` calls (seconds), waiting for the GPU's queued work each time."""
    import torch

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
