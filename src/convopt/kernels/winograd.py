"""Winograd minimal filtering F(m x m, 3 x 3): `winograd_f2`, `winograd_f4`, `winograd_f6`.

Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural Networks" (arXiv:1509.09308). Each m x m
output tile comes from an a x a input tile (a = m + 2) as Y = A^T [(G g G^T) * (B^T d B)] A. The channel
reduction happens elementwise in the transform domain, so a whole layer becomes one batched GEMM with
a^2 batches (times groups). Multiplications per output in that GEMM, against 9 for direct convolution:
F(2,3) 16/4 = 4 (2.25x fewer), F(4,3) 36/16 = 2.25 (4x), F(6,3) 64/36 = 1.78 (5.06x), before the
tiles that overhang the output edge (a 14x14 output takes 16x16 of F(4,3) tiles). Transformed filters
take a^2/9 of the weight's storage (16/9, 36/9, 64/9). Matrices: `convopt.kernels.winograd_transforms`.

Layout: channels-last inside (every copy moves runs of C contiguous values); the output keeps the input's
memory format. Stages: pad + tile gather + input transform (memory-bound), the batched GEMM
V (a^2, P, C) @ U (a^2, C, K) with P = N x tiles, output transform + reassembly (memory-bound).
`benchmarks/bench_winograd.py` times them against F.conv2d.

Numerics: normwise error max|y - y_ref| / max(|x| conv |w|) in fp32, random N(0, 1) data, ResNet-18's 3x3
layers, batch 8, two seeds: F(2,3) <= 1.1e-7, F(4,3) <= 7.7e-7, F(6,3) <= 3.6e-6 (limits 1e-5, 1e-5,
5e-5 in `convopt.testing`). Float32 and float64 only: the error grows with the tile, so low precision is
refused (REFERENCES.md s.3).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from convopt.kernels.registry import ConvAlgorithm, float_dtype_reason, register_algorithm, require
from convopt.kernels.winograd_transforms import kron_matrices, multiplications_per_output, winograd_matrices
from convopt.spec import ConvSpec

R = 3  # filter size handled (F(m x m, 3 x 3))


class _Matrices(NamedTuple):
    bt: torch.Tensor  # B^T (a, a)
    bt_batch: torch.Tensor  # B^T repeated (a, a, a): one per tile row, for a batched GEMM
    at2: torch.Tensor  # kron(A^T, A^T) (m^2, a^2)
    one: int  # flat index of transform point (1, 1)


@lru_cache(maxsize=None)
def _matrices(m: int, dtype: torch.dtype, device: torch.device) -> _Matrices:
    """The data transforms in `dtype`; every entry of A^T and B^T is exact in float32 for the points used.

    The point p = 1 has the all-ones column of A^T, so adding b at transform point (1, 1) adds b to every
    output of the tile: that is where the bias goes, at 1/a^2 of the cost of adding it to the output.
    """
    at, _, bt = winograd_matrices(m, R)
    at2 = torch.kron(at, at)
    one = [j for j in range(at2.shape[1]) if bool((at2[:, j] == 1).all())][0]
    a = bt.shape[0]
    bt = bt.to(dtype=dtype, device=device)
    return _Matrices(bt, bt.expand(a, a, a).contiguous(), at2.to(dtype=dtype, device=device), one)


def transform_filters(weight: torch.Tensor, spec: ConvSpec, m: int) -> torch.Tensor:
    """Winograd-domain filters U = G g G^T, computed in float64, laid out for the batched GEMM.

    Args:
        weight: (C_out, C_in / groups, 3, 3).
        spec: the convolution (groups is read).
        m: output tile size.

    Returns:
        U of shape (a^2, groups, C_in / groups, C_out / groups), contiguous, in the weight's dtype.
    """
    _, g2, _ = kron_matrices(m, R)
    c_out, c_in_g = weight.shape[:2]
    groups = spec.groups
    # (a^2, 9) @ (9, C_out * C_in_g) -> (a^2, C_out * C_in_g), C_out split as (groups, C_out_g).
    u = g2.to(weight.device) @ weight.to(torch.float64).reshape(c_out * c_in_g, R * R).t()
    u = u.view(-1, groups, c_out // groups, c_in_g).transpose(2, 3)  # (a^2, G, C_in_g, C_out_g)
    return u.to(weight.dtype).contiguous()


class Tiling(NamedTuple):
    """How F(m x m, 3 x 3) covers one output: th x tw tiles of m x m, the last row/column may overhang."""

    m: int
    n: int
    h_out: int
    w_out: int
    th: int
    tw: int

    @property
    def a(self) -> int:
        return self.m + R - 1

    @property
    def tiles(self) -> int:  # P: tiles in the whole batch, the columns of the batched GEMM
        return self.n * self.th * self.tw


def tiling(x_shape: torch.Size | tuple[int, ...], spec: ConvSpec, m: int) -> Tiling:
    h_out, w_out = spec.output_shape(x_shape)[2:]
    return Tiling(m, x_shape[0], h_out, w_out, -(-h_out // m), -(-w_out // m))


def input_transform(x: torch.Tensor, spec: ConvSpec, t: Tiling) -> torch.Tensor:
    """V = B^T d B for every a x a input tile d of every channel: x (N, C, H, W) -> V (a^2, P, C).

    Channels-last inside, so both copies move runs of C contiguous values: one pad (which is also the
    NCHW -> NHWC transpose) and one gather of the overlapping tiles. B^T d B is then applied one side at
    a time (2a multiply-adds per value instead of a^2 for kron(B^T, B^T)), each side one GEMM.
    """
    a, m = t.a, t.m
    n, c, h, w = x.shape
    mats = _matrices(m, x.dtype, x.device)
    xp = _padded_nhwc(x, spec, t)
    sn, sh, sw, sc = xp.stride()
    # Overlapping tiles as a view (a, a, N, th, tw, C); reshape copies it to D (a_row, a_col, P * C).
    d = xp.as_strided((a, a, n, t.th, t.tw, c), (sh, sw, sn, m * sh, m * sw, sc)).reshape(a, a, t.tiles * c)
    d = torch.bmm(mats.bt_batch, d)  # per tile row u: B^T (a, a_col) @ (a_col, P * C) -> (a_row, a, P * C)
    return (mats.bt @ d.view(a, -1)).view(a * a, t.tiles, c)  # B^T (a, a_row) @ (a_row, a * P * C) -> (a^2, P, C)


def _padded_nhwc(x: torch.Tensor, spec: ConvSpec, t: Tiling) -> torch.Tensor:
    """x (N, C, H, W) zero-padded so every tile, overhanging ones included, lies inside: (N, th*m+2, tw*m+2, C).

    One copy (for NCHW input also the transpose to channels-last); only the border is zeroed, where
    F.pad would zero the whole buffer first.
    """
    n, c, h, w = x.shape
    (top, _), (left, _) = spec.padding
    hp, wp = t.th * t.m + R - 1, t.tw * t.m + R - 1
    xp = x.new_empty(n, hp, wp, c)
    xp[:, :top].zero_()
    xp[:, top + h :].zero_()
    xp[:, top : top + h, :left].zero_()
    xp[:, top : top + h, left + w :].zero_()
    xp[:, top : top + h, left : left + w].copy_(x.permute(0, 2, 3, 1))
    return xp


def channel_reduction(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """M[t, p, k] = sum_c V[t, p, c] U[t, c, k] per transform point t (and group): (a^2, P, C) -> (a^2, P, K)."""
    a2, p, c = v.shape
    groups, c_g, k_g = u.shape[1:]
    if groups == 1:
        return torch.bmm(v, u[:, 0])  # one batched GEMM, a^2 batches
    if c_g == 1 and k_g == 1:  # depthwise: the reduction is a single product
        return v * u.view(a2, 1, c)
    # (a^2, P, G, C_g) -> (a^2 * G, P, C_g) @ (a^2 * G, C_g, K_g) -> (a^2, G, P, K_g) -> (a^2, P, G * K_g)
    vg = v.view(a2, p, groups, c_g).transpose(1, 2).reshape(a2 * groups, p, c_g)
    mg = torch.bmm(vg, u.view(a2 * groups, c_g, k_g)).view(a2, groups, p, k_g)
    return mg.transpose(1, 2).reshape(a2, p, groups * k_g)


def output_transform(mm: torch.Tensor, bias: torch.Tensor | None, t: Tiling, channels_last: bool) -> torch.Tensor:
    """Y = A^T M A per tile, plus bias, reassembled and cropped: M (a^2, P, K) -> (N, K, H_out, W_out).

    Channels-last output: the tiles are copied straight into place (overhanging tiles cropped on the way).
    NCHW output: tiles are assembled channels-last first (copies of runs of K values), then one transposing
    copy crops; measured faster than one copy that scatters single values.
    """
    a, m = t.a, t.m
    k = mm.shape[2]
    mats = _matrices(m, mm.dtype, mm.device)
    if bias is not None:
        mm[mats.one] += bias  # in place on the product (the GEMM's backward does not need it)
    y = (mats.at2 @ mm.view(a * a, t.tiles * k)).view(m, m, t.n, t.th, t.tw, k)
    tiles = y.permute(2, 3, 0, 4, 1, 5)  # (m, m, N, th, tw, K) -> (N, th, m, tw, m, K)
    if not channels_last:
        nhwc = tiles.reshape(t.n, t.th * m, t.tw * m, k)
        return nhwc[:, : t.h_out, : t.w_out].permute(0, 3, 1, 2).contiguous()
    out = mm.new_empty(t.n, t.h_out, t.w_out, k)
    for rows, tile_rows, height in _blocks(t.h_out, m, t.th):
        for cols, tile_cols, width in _blocks(t.w_out, m, t.tw):
            src = tiles[:, tile_rows, :height, tile_cols, :width]  # (N, th', h, tw', w, K)
            out[:, rows, cols].view(src.shape).copy_(src)
    return out.permute(0, 3, 1, 2)


def _blocks(size: int, m: int, tiles: int) -> list[tuple[slice, slice, int]]:
    """(output slice, tile slice, rows used per tile) for the whole tiles and the cropped last one."""
    whole = size // m
    blocks = [(slice(0, whole * m), slice(0, whole), m)] if whole else []
    if size > whole * m:
        blocks.append((slice(whole * m, size), slice(whole, tiles), size - whole * m))
    return blocks


def winograd_conv(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, m: int) -> torch.Tensor:
    """F(m x m, 3 x 3) convolution of a batch with prepared filters.

    Args:
        x: (N, C_in, H, W), float32 or float64, NCHW or channels_last.
        u: (a^2, groups, C_in / groups, C_out / groups) from `transform_filters`.
        bias: (C_out,) or None.
        spec: 2-D, 3x3, stride 1, dilation 1, any padding and groups.
        m: output tile size (2, 4 or 6).

    Returns:
        (N, C_out, H_out, W_out) in the input's memory format (channels_last in, channels_last out;
        otherwise contiguous).
    """
    t = tiling(x.shape, spec, m)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return output_transform(channel_reduction(input_transform(x, spec, t), u), bias, t, channels_last)


def _supports(spec: ConvSpec, dtype: torch.dtype) -> str | None:
    return require(
        (not spec.transposed, "transposed convolutions are not part of the algorithm library"),
        (spec.dims == 2, f"Winograd F(m x m, 3 x 3) is 2-d only, got a {spec.dims}-d convolution"),
        (spec.kernel_size == (R, R), f"kernel must be 3x3, got {spec.kernel_size}"),
        (spec.stride == (1, 1), f"stride must be 1, got {spec.stride}"),
        (spec.dilation == (1, 1), f"dilation must be 1, got {spec.dilation}"),
        float_dtype_reason(dtype),
    )


def _register(m: int) -> ConvAlgorithm:
    def prepare(weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
        return transform_filters(weight, spec, m)

    def run(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
        return winograd_conv(x, u, bias, spec, m)

    mults = multiplications_per_output(m, R)
    summary = f"Winograd F({m}x{m},3x3): {mults:.3g} mults/output vs 9 direct; 3x3 stride 1, fp32/fp64"
    return register_algorithm(ConvAlgorithm(f"winograd_f{m}", run, _supports, prepare, "normwise", summary))


WINOGRAD_F2, WINOGRAD_F4, WINOGRAD_F6 = (_register(m) for m in (2, 4, 6))
