"""Timing discipline shared by the hardware profile, every benchmark and the tuner: warm-up, then medians."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Timing:
    median_s: float
    samples_s: list[float]

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the measurement was."""
        return (max(self.samples_s) - min(self.samples_s)) / self.median_s if self.median_s else 0.0


def median_time(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 7) -> Timing:
    """Median wall time of `fn()` under no_grad after `warmup` untimed calls."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), samples)


def interleaved_times(fns: dict[str, Callable[[], Any]], *, warmup: int = 2, repeats: int = 7) -> dict[str, Timing]:
    """Median times of several candidates measured in alternating rounds (A, B, C, A, B, C, ...).

    On a shared, noisy machine a slow spell then hits every candidate alike, so the ratios between
    them stay meaningful even when absolute times drift.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(times), times) for name, times in samples.items()}


class fixed_threads:
    """Context manager: run with exactly `threads` intra-op threads, then restore."""

    def __init__(self, threads: int | None):
        self.threads, self.previous = threads, torch.get_num_threads()

    def __enter__(self) -> "fixed_threads":
        if self.threads:
            torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.previous)
