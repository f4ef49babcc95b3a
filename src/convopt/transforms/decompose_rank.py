"""Rank choice for low-rank layer decompositions: cost formulas, energy thresholds, MAC targets.

One MAC = one multiply-accumulate. A layer's geometry gives the pixel counts each factor runs at: the
leading 1x1 of Tucker-2 / CP runs at the input resolution (before the stride), everything after it at the
output resolution (CP's vertical depthwise conv at H_out x W_in, before the horizontal stride).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ALIGN = 8  # ranks that are multiples of 8 keep GEMM tiles and SIMD lanes full


@dataclass(frozen=True)
class LayerGeometry:
    """A groups=1 conv (or Linear: kernel ()) as the rank formulas see it.

    in_px / out_px: positions per forward the layer reads / writes (N*H_in*W_in and N*H_out*W_out, or rows
    for Linear); mid_px: positions of CP's intermediate (N*H_out*W_in).
    """

    c_in: int
    c_out: int
    kernel: tuple[int, ...]
    in_px: int
    out_px: int
    mid_px: int

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    def macs(self) -> int:
        return self.out_px * self.c_out * self.c_in * self.taps

    def params(self) -> int:
        return self.c_out * self.c_in * self.taps


def tucker2_cost(g: LayerGeometry, r_out: int, r_in: int) -> tuple[int, int]:
    """(MACs, weight params) of reduce 1x1 (C_in->R_in) -> core KxK (R_in->R_out) -> expand 1x1 (R_out->C_out).

    A factor at full rank (R = C) is dropped: the core absorbs it.
    """
    macs = g.out_px * r_in * r_out * g.taps
    params = r_in * r_out * g.taps
    if r_in < g.c_in:
        macs, params = macs + g.in_px * g.c_in * r_in, params + g.c_in * r_in
    if r_out < g.c_out:
        macs, params = macs + g.out_px * r_out * g.c_out, params + r_out * g.c_out
    return macs, params


def cp_cost(g: LayerGeometry, rank: int) -> tuple[int, int]:
    """(MACs, weight params) of 1x1 (C_in->R) -> depthwise Kh x 1 -> depthwise 1 x Kw -> 1x1 (R->C_out)."""
    kh, kw = g.kernel
    macs = rank * (g.in_px * g.c_in + g.mid_px * kh + g.out_px * kw + g.out_px * g.c_out)
    return macs, rank * (g.c_in + kh + kw + g.c_out)


def svd_cost(g: LayerGeometry, rank: int) -> tuple[int, int]:
    """(MACs, weight params) of two thin layers C_in->R->C_out (the stride, if any, goes to the first)."""
    return g.out_px * rank * (g.c_in + g.c_out), rank * (g.c_in + g.c_out)


def energy_fractions(singular_values: torch.Tensor) -> torch.Tensor:
    """(R,) -> (R,): fraction of sum(s^2) kept by the leading r singular values, r = 1..R."""
    power = singular_values.double().pow(2)
    total = float(power.sum())
    if total == 0.0:
        return torch.ones_like(power)
    return power.cumsum(0) / total


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose leading singular values keep at least `energy` of sum(s^2)."""
    kept = energy_fractions(singular_values)
    return int((kept < energy - 1e-12).sum()) + 1 if len(kept) else 1


def _aligned(rank: torch.Tensor, full: int) -> torch.Tensor:
    return (rank % ALIGN == 0) | (rank == full)


def tucker2_ranks_for_macs(g: LayerGeometry, target: float, kept_out: torch.Tensor, kept_in: torch.Tensor,
                           tol: float = 0.05) -> tuple[int, int]:  # fmt: skip
    """(R_out, R_in) whose Tucker-2 MACs land in [(1 - tol) * target, target], keeping the most energy.

    Energy of a pair = kept_out[R_out - 1] * kept_in[R_in - 1] (`energy_fractions` of the mode-0 and mode-1
    unfoldings). Pairs of multiples of 8 are preferred when one lands in the window; when none does, the
    pair with the most MACs not above the target; when even (1, 1) exceeds it, (1, 1).
    """
    r_out = torch.arange(1, g.c_out + 1, dtype=torch.int64)[:, None]  # (C_out, 1)
    r_in = torch.arange(1, g.c_in + 1, dtype=torch.int64)[None, :]  # (1, C_in)
    macs = g.out_px * r_in * r_out * g.taps
    macs = macs + torch.where(r_in < g.c_in, g.in_px * g.c_in * r_in, 0)
    macs = macs + torch.where(r_out < g.c_out, g.out_px * r_out * g.c_out, 0)  # (C_out, C_in), as tucker2_cost
    score = kept_out.double()[:, None] * kept_in.double()[None, :]
    return _best(macs, score, target, tol, _aligned(r_out, g.c_out) & _aligned(r_in, g.c_in))


def linear_rank_for_macs(macs_per_rank: int, max_rank: int, target: float, tol: float = 0.05) -> int:
    """The rank R (<= max_rank) whose cost R * macs_per_rank lands in [(1 - tol) * target, target], preferring
    multiples of 8 and then the highest rank; the highest rank not above the target otherwise (at least 1)."""
    ranks = torch.arange(1, max_rank + 1, dtype=torch.int64)
    (index,) = _best(ranks * macs_per_rank, ranks.double(), target, tol, _aligned(ranks, max_rank))
    return index


def _best(macs: torch.Tensor, score: torch.Tensor, target: float, tol: float, aligned: torch.Tensor) -> tuple[int, ...]:
    """1-based rank tuple of the best entry of `macs` (any shape): see tucker2_ranks_for_macs."""
    window = (macs <= target) & (macs >= (1.0 - tol) * target)
    if bool((window & aligned).any()):
        window = window & aligned
    if bool(window.any()):
        flat = torch.where(window, score, -1.0).flatten()
        pick = int(torch.argmax(flat + 1e-9 * torch.where(window, macs.double() / target, 0.0).flatten()))
    elif bool((macs <= target).any()):
        pick = int(torch.argmax(torch.where(macs <= target, macs, -1).flatten()))
    else:
        pick = 0
    return tuple(int(i) + 1 for i in torch.unravel_index(torch.tensor(pick), macs.shape))
