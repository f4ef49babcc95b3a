"""`fft`: convolution as a pointwise product of spectra (rfftn, a complex GEMM per frequency bin, irfftn).

Mathieu, Henaff & LeCun 2013, "Fast training of convolutional networks through FFTs" (arXiv:1312.5851):
transform every input and kernel channel once, reduce over input channels in the frequency domain, and
transform every output channel back. Cost per call with an FFT of F = prod(L) points:
O(F log F) per channel transform (N * C_in forward, N * C_out inverse, C_out * C_in / groups for the kernel
unless prepared), plus one complex multiply-accumulate per frequency bin per (in, out) channel pair
(N * C_out * C_in / groups * F_rfft, F_rfft ~ F / 2) -- independent of the kernel size, which is why it
wins over direct convolution for large kernels.

Layout choices: the input is only zero-extended (never padded in front); the padding and PyTorch's
cross-correlation are folded into the kernel, whose taps sit at circular positions (lo - t * dilation)
mod L. Then the circular convolution equals the padded cross-correlation at outputs [0, O) whenever
L >= S + max(lo, hi) and L >= O, which is smaller than the linear-convolution size S + lo + hi + K - 1.
The kernel spectrum is computed dimension by dimension as small DFT matrices times the taps (a GEMM per
dimension; dilation, the shift and aliased taps come for free) and lands directly in the (F, G, K/G, C/G)
layout the channel GEMM consumes. FFT sizes are 7-smooth, the last one even.

Error envelope: normwise (max|y - y_ref| / max(|x| conv |w|), REFERENCES.md s.3), measured on random
normal data for 1-D/2-D/3-D, kernels 1..31, dilation, groups, padding wider than the kernel: fp32 about
1e-8 to 4e-7 (limit 1e-5; larger kernels sit lower, as the bound grows faster than the rounding), fp64
about 5e-17 to 2e-15 (limit 1e-12). Handles 1-D/2-D/3-D, stride 1 only, any kernel, dilation, padding,
groups (depthwise included). Measured on the 2-core machine (benchmarks/bench_fft.py, weight prepared
once, interleaved medians, 3 rounds; the machine was shared with other jobs, load 5-9, so re-measure
quietly): 2-D 64 channels 64x64 k=31 12.7-15.5x F.conv2d (13-16x when last measured quietly); 3-D 16
channels 64^3 k=7 2.8-3.9x F.conv3d (the previous complex-GEMM plane path: 2.0-2.6x in the same
conditions, 1.7-2.2x quietly), 3.4-4.2x in single-thread CPU time (previously 2.1-2.5x). Those 2-thread
figures ran with OMP_WAIT_POLICY=PASSIVE: with OpenMP's default spin-waiting, the other jobs inflated
each of fft's dozen short parallel ops and the ratios fell to 1.8-2.0x (3-D) and 3.3-4.7x (2-D).
Break-even 2-D kernel (C=64, 64x64): k=11 at batch 1, k=5 at batch 8
(prepared). 3-D kernels up to 9 deep run as 2-D FFTs over (H, W) plus a direct sum over the depth taps
(`fft_planes`: one real batched GEMM per tap with the output depths as rows): a full 3-D FFT would make the
per-bin product a 16x16 GEMV over a 361 MB spectrum; the plane path reads a 5x smaller one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch

from convopt.kernels import fft_planes
from convopt.kernels.registry import ConvAlgorithm, add_bias, float_dtype_reason, register_algorithm, require
from convopt.spec import ConvSpec

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_CACHE_ENTRIES = 2  # kernel spectra kept per prepared weight (each can be hundreds of MB)
PLANE_PATH_MAX_DEPTH_TAPS = 9  # 3-D kernels up to this depth run as 2-D FFTs plus a direct depth sum


def is_smooth(n: int, primes: tuple[int, ...] = (2, 3, 5, 7)) -> bool:
    """True when every prime factor of n is in `primes`."""
    for p in primes:
        while n % p == 0:
            n //= p
    return n == 1


def fft_size(n: int, *, even: bool = False) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n (even when `even`, as the halved axis of a real FFT wants)."""
    m = max(1, n)
    while not (is_smooth(m) and (m % 2 == 0 or not even)):
        m += 1
    return m


def fft_shape(spec: ConvSpec, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Per-dim circular size L >= max(S + max(lo, hi), O): no wrap-around reaches a kept output."""
    out = spec.output_shape((1, spec.in_channels, *spatial))[2:]
    sizes = []
    for i, (s, (lo, hi), o) in enumerate(zip(spatial, spec.padding, out)):
        sizes.append(fft_size(max(s + max(lo, hi), o), even=i == spec.dims - 1))
    return tuple(sizes)


def _dft_matrix(length: int, bins: int, kernel: int, dilation: int, shift: int, dtype: torch.dtype) -> torch.Tensor:
    """(bins, kernel) complex exp(-2 pi i f p_t / L): tap t sits at p_t = (shift - t * dilation) mod L."""
    positions = (shift - torch.arange(kernel, dtype=torch.int64) * dilation) % length
    phase = (torch.arange(bins, dtype=torch.int64)[:, None] * positions[None, :]) % length  # exact integers
    angle = phase.to(torch.float64) * (-2 * math.pi / length)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def taps_spectrum(taps: torch.Tensor, spec: ConvSpec, sizes: tuple[int, ...]) -> torch.Tensor:
    """The rfftn spectrum of kernel taps placed as `spec` places them, one transform per trailing column.

    Args:
        taps: (*kernel, M) complex: M kernels' taps (channel pairs, depth taps, ...), any trailing order.
        spec: the convolution (padding and dilation decide where the taps sit).
        sizes: the FFT size per spatial dim (from `fft_shape`).

    Returns:
        (*bins, M) complex, bins = (*sizes[:-1], sizes[-1] // 2 + 1).
    """
    bins = (*sizes[:-1], sizes[-1] // 2 + 1)
    spectrum, done = taps, taps.shape[-1]  # `done`: trailing elements already in the frequency domain
    # One DFT-matrix GEMM per dim, last dim first: a single large complex GEMM each (cheap for k << L;
    # dilation, the shift and aliased taps are all in the matrix).
    for j in range(spec.dims - 1, -1, -1):
        k, lead = spec.kernel_size[j], math.prod(spec.kernel_size[:j])
        e = _dft_matrix(sizes[j], bins[j], k, spec.dilation[j], spec.padding[j][0], taps.dtype).to(taps.device)
        # (lead, k, done) -> (lead, bins_j, done)
        spectrum = torch.matmul(e, spectrum.reshape(lead, k, done))
        done *= bins[j]
    return spectrum.reshape(*bins, taps.shape[-1])


def kernel_spectrum(weight: torch.Tensor, spec: ConvSpec, sizes: tuple[int, ...]) -> torch.Tensor:
    """The kernel's rfftn spectrum laid out for the channel GEMM.

    Args:
        weight: (C_out, C_in / groups, *kernel), float32 or float64.
        spec: the convolution (padding and dilation decide where the taps sit).
        sizes: the FFT size per spatial dim (from `fft_shape`).

    Returns:
        (*bins, groups, C_out / groups, C_in / groups) complex, bins = (*sizes[:-1], sizes[-1] // 2 + 1).
    """
    # (K, Cg, *k) -> (*k, K * Cg): taps lead, channels trail, so the result is already (*bins, K, Cg).
    taps = weight.permute(*range(2, 2 + spec.dims), 0, 1).to(_COMPLEX[weight.dtype])
    spectrum = taps_spectrum(taps.reshape(*spec.kernel_size, -1), spec, sizes)
    return spectrum.reshape(*spectrum.shape[:-1], spec.groups, spec.out_channels // spec.groups,
                            spec.in_channels // spec.groups)  # fmt: skip


class FFTWeight:
    """prepare()'s output: the weight plus its kernel spectra cached per FFT size (small LRU).

    Spectra are cached only when no gradient flows to the weight (a cached graph would go stale).
    """

    def __init__(self, weight: torch.Tensor, spec: ConvSpec):
        self.weight, self.spec = weight, spec
        self._spectra: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def spectrum(self, sizes: tuple[int, ...], build: Any = None) -> torch.Tensor:
        build = build or (lambda: kernel_spectrum(self.weight, self.spec, sizes))
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return build()
        if sizes not in self._spectra:
            self._spectra[sizes] = build()
            while len(self._spectra) > _CACHE_ENTRIES:
                self._spectra.popitem(last=False)
        self._spectra.move_to_end(sizes)
        return self._spectra[sizes]


def _prepare(weight: torch.Tensor, spec: ConvSpec) -> FFTWeight:
    return FFTWeight(weight, spec)


def _run_3d_by_planes(x: torch.Tensor, prepared: FFTWeight, spec: ConvSpec) -> torch.Tensor:
    """The plane path (`fft_planes`): 2-D FFTs over (H, W), the depth taps summed by real GEMMs."""
    plane = fft_planes.plane_spec(spec)
    sizes = fft_shape(plane, tuple(x.shape[3:]))

    def build() -> torch.Tensor:  # (taps, F * G, 2 * Cg, 2 * Kg) real
        w, groups, (depth, *k) = prepared.weight, spec.groups, spec.kernel_size
        kg, cg = w.shape[0] // groups, w.shape[1]
        # (G * Kg, Cg, depth, kh, kw) -> (kh, kw, depth * G * Cg * Kg): one 2-D transform for every tap,
        # already in the (bin, tap, group, in, out) order the GEMM weight wants.
        taps = w.reshape(groups, kg, cg, depth, *k).permute(4, 5, 3, 0, 2, 1).to(_COMPLEX[w.dtype])
        spectra = taps_spectrum(taps.reshape(*k, -1), plane, sizes)
        return fft_planes.real_gemm_weight(spectra.reshape(-1, depth, groups, cg, kg))

    return fft_planes.run_planes(x, prepared.spectrum(("planes", *sizes), build), spec, sizes)


def _run(x: torch.Tensor, prepared: FFTWeight, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """The stride-1 convolution through spectra.

    Args:
        x: (N, C_in, *spatial), float32 or float64.
        prepared: `_prepare(weight, spec)`, weight (C_out, C_in / groups, *kernel).
        bias: (C_out,) or None.
        spec: the convolution (stride 1).

    Returns:
        (N, C_out, *out_spatial), x's dtype.
    """
    dims, groups = spec.dims, spec.groups
    n, spatial = x.shape[0], tuple(x.shape[2:])
    out_spatial = spec.output_shape(x.shape)[2:]
    if x.numel() == 0:  # MKL's FFT rejects empty batches
        return add_bias(x.new_zeros(n, spec.out_channels, *out_spatial), bias)
    if dims == 3 and spec.kernel_size[0] <= PLANE_PATH_MAX_DEPTH_TAPS:
        y = _run_3d_by_planes(x, prepared, spec)
        return add_bias(y, bias) if bias is not None else y.contiguous()
    sizes = fft_shape(spec, spatial)
    axes = tuple(range(-dims, 0))
    w_hat = prepared.spectrum(sizes)  # (*bins, G, Kg, Cg)
    bins = w_hat.shape[:dims]
    f = math.prod(bins)
    x_hat = torch.fft.rfftn(x, s=sizes, dim=axes)  # (N, C, *bins); zero-extended, never front-padded
    # (N, C, *bins) -> (N, G, Cg, F) -> (F, G, Cg, N); contiguous, else the complex bmm copies per bin.
    x_hat = x_hat.reshape(n, groups, spec.in_channels // groups, f).permute(3, 1, 2, 0).contiguous()
    y_hat = torch.matmul(w_hat.reshape(f, *w_hat.shape[dims:]), x_hat)  # (F, G, Kg, N): sum over Cg
    # (F, G, Kg, N) -> (N, G, Kg, F) -> (N, K, *bins); contiguous, as the inverse FFT is slow on strided bins.
    y_hat = y_hat.permute(3, 1, 2, 0).reshape(n, spec.out_channels, *bins).contiguous()
    # Inverse over the leading dims first, crop, then the real inverse over the last dim: fewer bins to
    # transform, and it avoids the transposed copies torch's multi-dim c2r makes.
    crop = tuple(slice(0, o) for o in out_spatial)
    if dims > 1:
        y_hat = torch.fft.ifftn(y_hat, dim=axes[:-1])[(..., *crop[:-1], slice(None))]
    y = torch.fft.irfft(y_hat, n=sizes[-1], dim=-1)[..., crop[-1]]
    return add_bias(y, bias) if bias is not None else y.contiguous()


def _supports(spec: ConvSpec, dtype: torch.dtype) -> str | None:
    return require(
        (not spec.transposed, "transposed convolutions are not part of the algorithm library"),
        (all(s == 1 for s in spec.stride), f"stride {spec.stride} != 1 (an FFT computes every output position)"),
        (spec.padding_mode == "zeros", f"padding_mode={spec.padding_mode!r} (only zero padding is folded in)"),
        float_dtype_reason(dtype),
    )


FFT = register_algorithm(
    ConvAlgorithm("fft", _run, _supports, prepare=_prepare, error_kind="normwise",
                  summary="rfftn + complex GEMM per bin + irfftn; stride 1, any kernel/dilation/groups, 1-D/2-D/3-D")
)  # fmt: skip
