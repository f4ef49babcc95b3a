"""Calibration observers: estimate the range [min, max] to quantize a tensor with, from sample data.

- MinMaxObserver: the extremes seen (per tensor, or per channel along `axis`) -- the default for weights.
- MovingAverageMinMaxObserver: exponential moving average of per-batch extremes (robust to one odd batch).
- PercentileObserver: clip at a percentile of |x| (drops rare outliers; histogram-based, bounded memory).
- MSEObserver: the clipping threshold that minimises the mean squared quantization error on the data.
- EntropyObserver: the threshold minimising the KL divergence between the histogram and its quantized
  form (the TensorRT calibration method, Migacz 2017) -- the usual default for activations.
Histogram observers keep a fixed 2048-bin histogram of |x| over a range that grows as data arrives.
"""

from __future__ import annotations

import torch

from convopt.errors import ConfigError
from convopt.kernels.quantize import QuantScheme, choose_qparams, fake_quantize


class Observer:
    """Base: `update(x)` with each calibration batch, then `qparams(scheme)` -> (scale, zero_point)."""

    def __init__(self) -> None:
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def qparams(self, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches == 0:
            raise ConfigError(f"{type(self).__name__} saw no data: calibrate with at least one batch")
        low, high = self.range()
        return choose_qparams(low, high, scheme)


class MinMaxObserver(Observer):
    def __init__(self, axis: int | None = None):
        super().__init__()
        self.axis, self.low, self.high = axis, None, None

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        if self.axis is None:
            return x.min(), x.max()
        flat = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        return flat.min(dim=1).values, flat.max(dim=1).values

    def update(self, x: torch.Tensor) -> None:
        low, high = self._extremes(x)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)
        self.batches += 1

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.low, self.high


class MovingAverageMinMaxObserver(MinMaxObserver):
    def __init__(self, momentum: float = 0.1, axis: int | None = None):
        super().__init__(axis)
        if not 0 < momentum <= 1:
            raise ConfigError(f"momentum={momentum}: use a value in (0, 1]")
        self.momentum = momentum

    def update(self, x: torch.Tensor) -> None:
        low, high = self._extremes(x)
        if self.low is None:
            self.low, self.high = low, high
        else:  # running = running + momentum * (new - running)
            self.low = self.low + self.momentum * (low - self.low)
            self.high = self.high + self.momentum * (high - self.high)
        self.batches += 1


class HistogramObserver(Observer):
    """A 2048-bin histogram of |x| on [0, top]; when data exceeds `top` the histogram is re-binned."""

    bins = 2048

    def __init__(self) -> None:
        super().__init__()
        self.top = 0.0
        self.counts = torch.zeros(self.bins, dtype=torch.float64)
        self.zeros = 0.0  # exact zeros (part of counts[0]): every affine quantizer represents them exactly
        self.low, self.high = float("inf"), float("-inf")

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))
        top = float(x.abs().max())
        if top > self.top:
            if self.top > 0:  # move old counts to the wider bins they fall in
                centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * self.top / self.bins
                moved = torch.zeros_like(self.counts)
                index = (centres / top * self.bins).long().clamp(max=self.bins - 1)
                moved.index_add_(0, index, self.counts)
                self.counts = moved
            self.top = top
        if self.top > 0:
            self.counts += torch.histc(x.abs().double(), bins=self.bins, min=0.0, max=self.top)
        self.zeros += float((x == 0).sum())
        self.batches += 1

    def threshold(self) -> float:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.threshold()
        low = max(self.low, -t) if self.low < 0 else self.low
        return torch.tensor(low), torch.tensor(min(self.high, t))


class PercentileObserver(HistogramObserver):
    def __init__(self, percentile: float = 99.99):
        super().__init__()
        if not 50 < percentile <= 100:
            raise ConfigError(f"percentile={percentile}: use a value in (50, 100]")
        self.percentile = percentile

    def threshold(self) -> float:
        cumulative = torch.cumsum(self.counts, 0) / self.counts.sum().clamp_min(1)
        index = int(torch.searchsorted(cumulative, torch.tensor(self.percentile / 100, dtype=torch.float64)))
        return (min(index, self.bins - 1) + 1) * self.top / self.bins


class MSEObserver(HistogramObserver):
    """Chooses the |x| clip that minimises the expected squared error of symmetric `bits`-bit quantization."""

    def __init__(self, bits: int = 8, candidates: int = 100):
        super().__init__()
        self.scheme, self.candidates = QuantScheme(bits=bits), candidates

    def threshold(self) -> float:
        centres = (torch.arange(self.bins, dtype=torch.float32) + 0.5) * self.top / self.bins
        weights = self.counts.float()
        best, best_error = self.top, float("inf")
        for step in range(1, self.candidates + 1):
            clip = self.top * step / self.candidates
            scale, zero = choose_qparams(torch.tensor(-clip), torch.tensor(clip), self.scheme)
            error = float((weights * (fake_quantize(centres, scale, zero, self.scheme) - centres) ** 2).sum())
            if error < best_error:
                best, best_error = clip, error
        return best


class EntropyObserver(HistogramObserver):
    """KL-divergence calibration: for each candidate clip, compare the clipped histogram with its
    `levels`-level quantized version and keep the clip with the smallest divergence."""

    def __init__(self, levels: int = 128):
        super().__init__()
        self.levels = levels

    def threshold(self) -> float:
        # Exact zeros (most of a ReLU output) are left out: they cost nothing at any clip, yet as a spike in
        # bin 0 they made every clip whose levels span several bins look bad, so the narrowest clip (one bin
        # per level) won and a ReLU6 output [0, 6] was clipped at 0.4.
        counts = self.counts.clone()
        counts[0] = (counts[0] - self.zeros).clamp_min(0)
        best_index, best_kl = self.bins, float("inf")
        for index in range(self.levels, self.bins + 1, 16):
            reference = counts[:index].clone()
            reference[-1] += counts[index:].sum()  # outliers land in the last kept bin
            # The quantized candidate is built from the clipped bins *without* the outlier mass, so that
            # clipping pays for what it cuts off (else the smallest clip, one bin per level, wins with KL 0).
            chunks = torch.tensor_split(counts[:index], self.levels)
            expanded = []
            for chunk in chunks:  # spread each level's mass over the bins that were non-empty
                nonzero = (chunk > 0).double()
                expanded.append(nonzero * chunk.sum() / nonzero.sum().clamp_min(1))
            candidate = torch.cat(expanded)
            p = reference / reference.sum()
            q = candidate / candidate.sum().clamp_min(1e-12)
            mask = p > 0
            kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp_min(1e-12))).sum())
            if kl < best_kl:
                best_index, best_kl = index, kl
        return best_index * self.top / self.bins


OBSERVERS = {
    "minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver, "percentile": PercentileObserver,
    "mse": MSEObserver, "entropy": EntropyObserver,
}  # fmt: skip
