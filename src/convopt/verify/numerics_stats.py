"""Streaming activation statistics (mean, std, min, max, histogram) and the drift flags computed from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

# Drift thresholds, relative to the reference layer's own spread.
MEAN_SHIFT = 0.1  # |mean_c - mean_r| > 0.1 std_r
STD_CHANGE = 0.1  # |std_c / std_r - 1| > 0.1
RANGE_GROWTH = 0.1  # candidate min/max beyond the reference's by > 10% of its span


@dataclass
class ActivationStats:
    count: int
    mean: float
    std: float
    min: float
    max: float
    histogram: list[int] = field(default_factory=list)
    edges: tuple[float, float] = (0.0, 0.0)  # the histogram's range; values outside land in the end bins

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "histogram": list(self.histogram), "edges": list(self.edges)}  # fmt: skip


class RunningStats:
    """Accumulates the statistics of many batches of finite values; the histogram's range is fixed by the
    first batch (padded by 5%), later values outside it are counted in the end bins."""

    def __init__(self, bins: int) -> None:
        self.bins, self.count, self.total, self.total_sq = bins, 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf
        self.edges: tuple[float, float] | None = None
        self.histogram = torch.zeros(bins, dtype=torch.int64)

    def update(self, values: torch.Tensor, total: float, total_sq: float) -> None:
        """Add a batch of finite values; `total` is their sum, `total_sq` the running sum of squares (both
        computed by the caller, which needs them anyway)."""
        low, high = (float(v) for v in torch.aminmax(values))
        if self.edges is None:
            pad = 0.05 * (high - low) or 0.5 * (abs(low) or 1.0)
            self.edges = (low - pad, high + pad)
        self.count += values.numel()
        self.total += total
        self.total_sq = total_sq
        self.low, self.high = min(self.low, low), max(self.high, high)
        edge_low, edge_high = self.edges
        if low < edge_low or high > edge_high:
            values = values.clamp(edge_low, edge_high)
        self.histogram += torch.histc(values, bins=self.bins, min=edge_low, max=edge_high).to(torch.int64)

    def finish(self) -> ActivationStats:
        if not self.count:
            nan = math.nan
            return ActivationStats(0, nan, nan, nan, nan, self.histogram.tolist(), self.edges or (0.0, 0.0))
        mean = self.total / self.count
        variance = max(self.total_sq / self.count - mean * mean, 0.0)
        return ActivationStats(self.count, mean, math.sqrt(variance), self.low, self.high, self.histogram.tolist(),
                               self.edges)  # fmt: skip


def drift_flags(reference: ActivationStats, candidate: ActivationStats, new_nonfinite: bool) -> list[str]:
    """Names of the ways the candidate's activation distribution moved away from the reference's."""
    flags = ["nonfinite"] if new_nonfinite else []
    if not reference.count or not candidate.count:
        return flags
    scale = reference.std or abs(reference.mean) or 1.0
    if abs(candidate.mean - reference.mean) > MEAN_SHIFT * scale:
        flags.append("mean_shift")
    if reference.std > 0 and abs(candidate.std / reference.std - 1) > STD_CHANGE:
        flags.append("std_change")
    span = (reference.max - reference.min) or scale
    if candidate.max > reference.max + RANGE_GROWTH * span or candidate.min < reference.min - RANGE_GROWTH * span:
        flags.append("range")
    return flags


__all__ = ["ActivationStats", "RunningStats", "drift_flags"]
