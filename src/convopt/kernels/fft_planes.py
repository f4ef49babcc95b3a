"""The `fft` algorithm's 3-D path for shallow kernels: 2-D FFTs over (H, W), a direct sum over depth taps.

A full 3-D FFT turns the channel reduction into one tiny GEMV per frequency bin over a huge kernel
spectrum (16x16 complex per bin, 361 MB for 16 channels at 70^3). Here every depth plane gets a 2-D
rFFT only; per (H, W) frequency bin the depth convolution is then a small 1-D convolution over channels,

    Y[f, d, k] = sum_t sum_c X[f, d + t * dilation - pad, c] * W_t[f, c, k],

computed as one batched GEMM per depth tap whose rows are the output depths (times the batch) of a bin.

Layout, so that no GEMM operand or result is ever copied: per bin the spectrum is stored depth-major,
channels last, complex interleaved -- (F, G, D_pad, N, Cg) complex, read as (F * G, D_pad * N, 2 * Cg)
real. A tap's window is then a row range of that matrix (row stride 2 * Cg, a valid BLAS lda), and the
complex product runs as a real GEMM against the weight spectrum expanded to the 2x2 real form of each
complex entry, [[Re, Im], [-Im, Re]] (twice the memory of the complex spectrum; MKL's real GEMM ran
these shapes 1.2-1.5x faster than its complex one), so its output is again interleaved complex.
Every tap's GEMM covers all output rows (the depth padding is stored as zero rows): a GEMM into a row
range of the accumulator is not batch-contiguous, and torch then takes a path measured 2x slower.
The inverse starts along H on that bins-outermost layout: torch's FFT returns its transformed axis
innermost, so this transform also performs the transpose back to (N, K, D, H, W) order (the explicit
transposing copy it replaces took longer than the FFT). Per call (16 channels 64^3, k=7, single-thread CPU time):
rFFT 16-22 ms, transpose into the per-bin layout 6-9 ms, GEMMs 40-53 ms (about the fp32 ceiling for a
32-column output on this CPU: 60 GFLOP/s per core), inverse FFTs 25-35 ms, output crop 3-4 ms; 95-120 ms
in all, down from 170-180 ms (complex GEMMs 67 ms, the H inverse with its transposing copy 49-56 ms).
"""

from __future__ import annotations

import torch

from convopt.spec import ConvSpec


def plane_spec(spec: ConvSpec) -> ConvSpec:
    """The (H, W) part of a 3-D convolution, as a 2-D ConvSpec."""
    return ConvSpec(spec.in_channels, spec.out_channels, spec.kernel_size[1:], spec.stride[1:], spec.padding[1:],
                    spec.dilation[1:], spec.groups, spec.bias)  # fmt: skip


def real_gemm_weight(spectra: torch.Tensor) -> torch.Tensor:
    """Per-tap kernel spectra in the real form the plane GEMMs consume.

    Args:
        spectra: (F, taps, G, Cg, Kg) complex: depth tap t's 2-D kernel spectrum per (H, W) bin.

    Returns:
        (taps, F * G, 2 * Cg, 2 * Kg) real, row (c, re/im) and column (k, re/im) interleaved:
        [x_re, x_im] @ [[w_re, w_im], [-w_im, w_re]] = [y_re, y_im] for y = x * w.
    """
    f, taps, groups, cg, kg = spectra.shape
    spectra = spectra.transpose(0, 1)
    real = spectra.real.new_empty(taps, f, groups, cg, 2, kg, 2)
    real[..., 0, :, :] = torch.view_as_real(spectra)  # row re: [w_re, w_im]
    real[..., 1, :, :] = torch.view_as_real(spectra * 1j)  # row im: [-w_im, w_re] (exact: a swap and a sign)
    return real.view(taps, f * groups, 2 * cg, 2 * kg)


def run_planes(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, sizes: tuple[int, int]) -> torch.Tensor:
    """3-D stride-1 convolution as 2-D FFTs over (H, W) plus a direct sum over the depth taps.

    Args:
        x: (N, C_in, D, H, W), float32 or float64.
        weight: `real_gemm_weight` of the per-tap spectra for FFT size `sizes`, x's dtype.
        spec: the 3-D convolution (stride 1).
        sizes: the (H, W) FFT size, no wrap-around reaching a kept output (`fft.fft_shape` of the plane spec).

    Returns:
        (N, C_out, D_out, H_out, W_out), contiguous, no bias.
    """
    n, groups, taps = x.shape[0], spec.groups, spec.kernel_size[0]
    cg, kg = spec.in_channels // groups, spec.out_channels // groups
    (depth_lo, depth_hi), step = spec.padding[0], spec.dilation[0]
    depth, padded = x.shape[2], x.shape[2] + depth_lo + depth_hi
    out_depth = padded - step * (taps - 1)
    out_h, out_w = spec.output_shape(x.shape)[3:]
    bins = (sizes[0], sizes[1] // 2 + 1)
    f = bins[0] * bins[1]

    # The depth padding is never transformed: those planes' spectra are zero and only written as zeros.
    x_hat = torch.fft.rfftn(x, s=sizes, dim=(-2, -1)).view(n, groups, cg, depth, f)
    # (N, G, Cg, D, F) -> (F, G, D_pad, N, Cg), read as (F * G, D_pad * N, 2 * Cg) real.
    spectrum = x_hat.new_empty(f, groups, padded, n, cg)
    spectrum[:, :, :depth_lo].zero_()
    spectrum[:, :, depth_lo + depth :].zero_()
    spectrum[:, :, depth_lo : depth_lo + depth] = x_hat.permute(4, 1, 3, 0, 2)
    rows = torch.view_as_real(spectrum).view(f * groups, padded * n, 2 * cg)
    acc = torch.bmm(rows[:, : out_depth * n], weight[0])  # (F * G, D_out * N, 2 * Kg)
    for t in range(1, taps):
        acc.baddbmm_(rows[:, t * step * n : (t * step + out_depth) * n], weight[t])
    # Inverse over H first, on the bins-outermost layout as it is: the FFT's output comes back with the
    # bins innermost, so the transform does the transpose (an explicit transposing copy took longer).
    y_hat = torch.view_as_complex(acc.view(*bins, groups, out_depth, n, kg, 2))
    y_hat = torch.fft.ifft(y_hat, dim=0)[:out_h]  # (H_out, W_bins, G, D_out, N, Kg), H_out innermost in memory
    y = torch.fft.irfft(y_hat.permute(4, 2, 5, 3, 0, 1), n=sizes[1], dim=-1)  # (N, G, Kg, D_out, H_out, W_fft)
    return y[..., :out_w].contiguous().view(n, spec.out_channels, out_depth, out_h, out_w)
