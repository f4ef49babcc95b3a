"""`sparse`: convolution that multiplies only by the non-zero weights (pruned or N:M-sparse filters).

What is computed: y = conv(x, w) + b exactly as F.convNd (zero padding, any stride, dilation, groups;
1-D/2-D/3-D; float32/float64), but the weight is held as one compressed sparse row (CSR) matrix of shape
(C_out, C_in) per kernel tap (block-diagonal over the groups), and each tap contributes
y += W_tap @ X_tap, a sparse x dense product (MKL sparse BLAS on x86 CPUs) whose dense operand X_tap is
a zero-copy shifted slice of the (padded, stride-phase split) input: no im2col patch matrix is built.
Output positions are computed on the padded input's grid and the valid ones are viewed out at the end.

Multiplications: nnz(w) x output positions per image (N x prod(out_spatial) x nnz), against
C_out x C_in/groups x prod(kernel) x the same positions for direct convolution; the bias add is not a
MAC. The work saved is the sparsity; the price is a sparse kernel that runs far below dense GEMM speed.

Break-even: MKL's CSR x dense product reaches only 5-11 GMAC/s per core on the non-zeros here, against
40-70 GMAC/s per core for oneDNN's dense conv (BSR blocks, embedding_bag and torch's spmm_reduce measured
slower still), so `sparse` beats `direct` only on very sparse weights. Measured with
`benchmarks/bench_sparse.py` (2-core Intel Xeon, AVX-512; fp32, 2 threads; ResNet-18 3x3 layers C=128@28
and C=256@14, batch 1 and 8, magnitude-pruned): break-even at 86-91% sparsity; 0.85-1.25x of direct's
speed at 90%, 1.5-1.9x at 95%, 2.0-2.9x at 98-99%, 0.2-0.4x at 50% (1 thread: break-even 82-91%).
BREAK_EVEN_SPARSITY = 0.90 is the conservative figure; `break_even_sparsity(dense_rate, sparse_rate)`
re-estimates it from measured rates. At 98-99% the fixed cost (one MKL call per tap, padding, output copy)
dominates, which caps the gain near 3x.

N:M structured sparsity (n of every m consecutive weights along the reduction dim, taken in the
channels-last order that NVIDIA's sparse tensor cores use: m consecutive input channels at one tap) is
detected by `prepare` and kept compactly as values plus uint8 positions (`NMWeight`). On this CPU no
kernel exploits it: 2:4 is only 50% sparse, where dense GEMM wins (CSR: 0.2-0.4x of direct), and a
fixed-width gather kernel (embedding_bag, 2 per 4 channels) measured 1.1-2.4x slower than the CSR
product, so `run` uses the CSR taps for it too. A GPU's 2:4 path (cuSPARSELt,
`torch.sparse.to_sparse_semi_structured`) is what the compact form is for.

Gradients: autograd reaches x, the bias and the non-zero weights; pruned (zero) weights get zero gradient,
because the pattern is fixed when `prepare` runs -- the usual masked-training semantics.

Error envelope: exact up to summation order (elementwise tolerance, as im2col and direct).

References:
    Han, Pool, Tran & Dally 2015, "Learning both weights and connections for efficient neural networks"
        (magnitude pruning; the unstructured sparsity this kernel consumes).
    Park et al. 2017, "Faster CNNs with direct sparse convolutions and guided pruning" (sparse x dense
        convolution without im2col; the shifted-slice formulation used here).
    Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4 structured sparsity).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convopt.kernels.registry import ConvAlgorithm, float_dtype_reason, pad_input, register_algorithm, require
from convopt.spec import ConvSpec

# Measured with benchmarks/bench_sparse.py (see the module docstring); the autotuner should re-measure.
BREAK_EVEN_SPARSITY = 0.90
CACHE_BLOCK_BYTES = 1 << 20  # a block of input rows + output rows that stays in one core's L2 (2 MiB here)
MIN_BLOCK = 1024


# ---- sparsity helpers -------------------------------------------------------------------------------
def sparsity(weight: torch.Tensor) -> float:
    """Fraction of exactly-zero entries of `weight` (0.0 for an empty tensor)."""
    return 0.0 if weight.numel() == 0 else float((weight == 0).sum()) / weight.numel()


def break_even_sparsity(dense_rate: float, sparse_rate: float) -> float:
    """Sparsity above which the sparse product is faster: 1 - sparse_rate / dense_rate.

    Args:
        dense_rate: MACs/s of the dense convolution (useful MACs, zeros included).
        sparse_rate: MACs/s the sparse kernel reaches on non-zeros (nnz x output positions / time).
    """
    if dense_rate <= 0 or sparse_rate <= 0:
        raise ValueError(f"rates must be positive, got dense_rate={dense_rate}, sparse_rate={sparse_rate}")
    return max(0.0, 1.0 - sparse_rate / dense_rate)


def _channel_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """(C_out, C_in/m, m, *kernel) view: groups of m consecutive input channels at every tap."""
    if weight.dim() < 3 or weight.shape[1] % m:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)}: N:M groups run along the input-channel dim (dim 1), "
            f"which must be divisible by m={m}"
        )
    return weight.reshape(weight.shape[0], weight.shape[1] // m, m, *weight.shape[2:])


def n_m_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the n largest-magnitude weights of every m consecutive input channels.

    The reduction dim is taken in channels-last order (kernel taps outer, input channels inner), so a group
    is m consecutive input channels at one (output channel, tap) -- the layout 2:4 sparse tensor cores use.

    Args:
        weight: (C_out, C_in/groups, *kernel), C_in/groups divisible by m.
    Returns:
        bool tensor of weight's shape; exactly n True per group (ties broken by position).
    """
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    grouped = _channel_groups(weight.detach(), m)
    keep = grouped.abs().topk(n, dim=2).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(2, keep, True)
    return mask.reshape(weight.shape)


def is_n_m_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of m consecutive input channels (at each tap) has at most n non-zeros."""
    if weight.dim() < 3 or weight.shape[1] % m or weight.numel() == 0:
        return False
    return bool(((_channel_groups(weight, m) != 0).sum(dim=2) <= n).all())


@dataclass(frozen=True)
class NMWeight:
    """Compact N:M weight: `values` (C_out, C_in/groups/m, n, *kernel) and their uint8 `positions` in the group."""

    values: torch.Tensor
    positions: torch.Tensor
    n: int
    m: int

    @classmethod
    def from_dense(cls, weight: torch.Tensor, n: int = 2, m: int = 4) -> "NMWeight":
        grouped = _channel_groups(weight, m)
        # Non-zeros first (stable), so explicit zeros only fill groups with fewer than n non-zeros.
        order = (grouped == 0).to(torch.uint8).argsort(dim=2, stable=True)[:, :, :n]
        return cls(grouped.gather(2, order), order.to(torch.uint8), n, m)

    def to_dense(self) -> torch.Tensor:
        shape = list(self.values.shape)
        shape[2] = self.m
        dense = self.values.new_zeros(shape).scatter(2, self.positions.long(), self.values)
        return dense.reshape(shape[0], shape[1] * self.m, *shape[3:])

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.positions.numel()


# ---- prepare ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseWeight:
    """What `run` consumes: per kernel tap with any non-zero, (tap index, CSR (C_out, C_in)).

    Attributes:
        taps: ((t, csr), ...) with t the row-major index into the kernel; all-zero taps are left out.
        nnz: number of stored non-zeros.
        weight_shape: the dense weight's shape (C_out, C_in/groups, *kernel).
        n_m: the compact 2:4 form when the weight has that pattern, else None.
    """

    taps: tuple[tuple[int, torch.Tensor], ...]
    nnz: int
    weight_shape: tuple[int, ...]
    n_m: NMWeight | None = None

    @property
    def density(self) -> float:
        return self.nnz / max(1, math.prod(self.weight_shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the CSR form (values + int32 column indices + int32 row pointers)."""
        return sum(c.values().numel() * c.values().element_size() + 4 * (c.col_indices().numel() +
                   c.crow_indices().numel()) for _, c in self.taps)  # fmt: skip

    def macs(self, spec: ConvSpec, input_shape: tuple[int, ...]) -> int:
        """Multiplications actually performed: nnz x output positions (padded taps included, as spec.macs)."""
        out = spec.output_shape(input_shape)
        return self.nnz * out[0] * math.prod(out[2:])


def prepare(weight: torch.Tensor, spec: ConvSpec) -> SparseWeight:
    """Compress `weight` (C_out, C_in/groups, *kernel) into one block-diagonal CSR (C_out, C_in) per tap.

    The values are gathered from `weight` with indexing, so autograd reaches the non-zero weights.
    """
    c_out, c_in_g = weight.shape[:2]
    taps_total = math.prod(weight.shape[2:])
    groups = spec.groups
    # (C_out, C_in/g, *k) -> (T, C_out, C_in/g): one matrix per tap.
    per_tap = weight.reshape(c_out, c_in_g, taps_total).permute(2, 0, 1)
    tap, row, col = (per_tap.detach() != 0).nonzero().unbind(1)  # row-major order = CSR order per tap
    values = per_tap[tap, row, col]
    col = (row // (c_out // groups)) * c_in_g + col  # block-diagonal: group g reads channels g*C_in/g...
    row_counts = torch.bincount(tap * c_out + row, minlength=taps_total * c_out).view(taps_total, c_out)
    starts = [0, *row_counts.sum(1).cumsum(0).tolist()]
    taps = []
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the MKL path is what we measured
        warnings.simplefilter("ignore", UserWarning)
        for t in range(taps_total):
            lo, hi = starts[t], starts[t + 1]
            if hi == lo:
                continue
            crow = F.pad(row_counts[t].cumsum(0), (1, 0)).to(torch.int32)  # int32: MKL's index type
            csr = torch.sparse_csr_tensor(crow, col[lo:hi].to(torch.int32), values[lo:hi], (c_out, c_in_g * groups))
            taps.append((t, csr))
    prepared = SparseWeight(tuple(taps), int(values.numel()), tuple(weight.shape))
    # Keep the 2:4 form only where it is the smaller one (density above ~30%; a 99%-sparse weight is 2:4 too).
    if c_in_g % 4 == 0 and is_n_m_sparse(weight, 2, 4):
        n_m = NMWeight.from_dense(weight.detach(), 2, 4)
        if n_m.nbytes < prepared.nbytes:
            prepared = SparseWeight(prepared.taps, prepared.nnz, prepared.weight_shape, n_m)
    return prepared


# ---- run --------------------------------------------------------------------------------------------
def _phase_split(x: torch.Tensor, spec: ConvSpec) -> tuple[torch.Tensor, list[int]]:
    """Pad x and split it into stride phases: (prod(stride), C_in, N * prod(grid)) and the grid shape.

    Phase r holds x_padded[..., r::stride]; a tap at offset a = k * dilation then reads phase a % stride
    shifted by a // stride, so every tap of a strided conv is a plain shift of one contiguous phase.
    """
    xp = pad_input(x, spec)
    spatial = xp.shape[2:]
    extra = [(-size) % s for size, s in zip(spatial, spec.stride)]  # equal-sized phases
    if any(extra):
        xp = F.pad(xp, [p for e in reversed(extra) for p in (0, e)])
    grid = [(size + e) // s for size, e, s in zip(spatial, extra, spec.stride)]
    n, c, dims = xp.shape[0], xp.shape[1], spec.dims
    # (N, C, g1, s1, g2, s2, ...) -> (s1, s2, ..., C, N, g1, g2, ...)
    split = xp.reshape(n, c, *[v for g, s in zip(grid, spec.stride) for v in (g, s)])
    order = [3 + 2 * i for i in range(dims)] + [1, 0] + [2 + 2 * i for i in range(dims)]
    return split.permute(order).reshape(math.prod(spec.stride), c, n * math.prod(grid)), grid


def run(x: torch.Tensor, prepared: SparseWeight, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """y (N, C_out, *out) = conv(x (N, C_in, *spatial), prepared weight) + bias, using only the non-zeros."""
    out_shape = spec.output_shape(x.shape)
    n, c_out, out_spatial = x.shape[0], spec.out_channels, out_shape[2:]
    if n == 0:
        return x.new_zeros(out_shape)
    phases, grid = _phase_split(x, spec)  # (S, C_in, N * prod(grid))
    grid_strides = [math.prod(grid[i + 1 :]) for i in range(spec.dims)]
    columns = phases.shape[-1]
    shifts = []
    for t, csr in prepared.taps:
        k = [(t // math.prod(spec.kernel_size[i + 1 :])) % spec.kernel_size[i] for i in range(spec.dims)]
        a = [ki * d for ki, d in zip(k, spec.dilation)]
        phase = sum((ai % s) * math.prod(spec.stride[i + 1 :]) for i, (ai, s) in enumerate(zip(a, spec.stride)))
        shift = sum((ai // s) * g for ai, s, g in zip(a, spec.stride, grid_strides))
        shifts.append((csr, phase, shift))
    # Grid columns 0..width-1 cover every valid output position; each tap reads columns shift..shift+width-1.
    width = columns - max((s for _, _, s in shifts), default=0)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or (bias is not None and bias.requires_grad) or any(c.requires_grad for c, _, _ in shifts)
    )
    if bias is not None:  # start from the bias: saves a pass over the output (clone: never alias the bias)
        y = bias.view(-1, 1).expand(c_out, width).clone(memory_format=torch.contiguous_format)
    else:
        y = x.new_zeros(c_out, width)
    if needs_grad:  # out-of-place so autograd can record each product
        for csr, phase, shift in shifts:
            y = torch.addmm(y, csr, phases[phase, :, shift : shift + width])
    else:
        # Column blocks sized so a block of the input slice and of y stay in L2 while all taps sweep it:
        # at batch 8 this is 10-20% faster than whole-width products (measured); batch 1 is one block.
        block = max(MIN_BLOCK, CACHE_BLOCK_BYTES // (x.element_size() * (spec.in_channels + c_out)))
        for start in range(0, width, block):
            stop = min(width, start + block)
            out = y[:, start:stop]
            for csr, phase, shift in shifts:
                # (C_in, stop - start) slice with row stride `columns`: MKL takes it without a copy.
                out.addmm_(csr, phases[phase, :, start + shift : stop + shift])
    # Column m = image * prod(grid) + sum(o_i * grid_stride_i): view the valid outputs out of the grid.
    view = y.as_strided((c_out, n, *out_spatial), (width, math.prod(grid), *grid_strides))
    return view.movedim(1, 0).contiguous()


def _supports(spec: ConvSpec, dtype: torch.dtype) -> str | None:
    return require(
        (not spec.transposed, "transposed convolutions are not part of the algorithm library"),
        float_dtype_reason(dtype),
        (spec.padding_mode == "zeros", f"padding_mode={spec.padding_mode!r}: sparse pads with zeros only"),
        # CPU sparse x dense products go through MKL; builds without it raise at the first call instead.
        (torch.backends.mkl.is_available() or torch.cuda.is_available(), "needs PyTorch built with MKL on CPU"),
    )


SPARSE = register_algorithm(
    ConvAlgorithm(
        "sparse",
        run,
        _supports,
        prepare=prepare,
        error_kind="elementwise",
        summary="per-tap CSR x shifted input (MKL sparse); only non-zero weights; wins above ~90% sparsity",
    )
)

__all__ = ["BREAK_EVEN_SPARSITY", "NMWeight", "SparseWeight", "break_even_sparsity", "is_n_m_sparse", "n_m_mask",
           "prepare", "run", "sparsity"]  # fmt: skip
