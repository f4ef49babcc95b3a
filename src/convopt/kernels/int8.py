"""Integer convolution: int8 activations x int8 per-channel weights, int32 accumulation, requantized output.

y_q = clamp(round((sum (x_q - x_zp) * w_q) * x_scale * w_scale[k] / y_scale + bias[k] / y_scale) + y_zp)

`int8_conv` gathers patches (im2col, padded with the activation zero point so padding means real 0)
and reduces them with `torch._int_mm` (int8 x int8 -> int32 GEMM; VNNI / AMX on x86). The zero-point
correction uses precomputed per-filter weight sums. `int8_conv_reference` computes the same integers in
float64 (exact: every partial sum stays far below 2^53) and is the oracle: the engine must match it
within 1 LSB (the only freedom is float rounding in the requantization multiplier).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from convopt.kernels.im2col import im2col_matrix
from convopt.kernels.quantize import QuantScheme, choose_qparams, quantize
from convopt.spec import ConvSpec

WEIGHT_SCHEME = QuantScheme(bits=8, signed=True, symmetric=True, per_channel=True, axis=0, narrow_range=True)


@dataclass
class QuantizedConvWeight:
    """Per-channel symmetric int8 filters laid out for the GEMM: (groups, C_in/g * prod(k), C_out/g)."""

    columns: torch.Tensor  # int8
    scale: torch.Tensor  # (C_out,) float32
    column_sums: torch.Tensor  # (groups, C_out/g) int32: sum of each filter's codes (zero-point correction)


def quantize_conv_weight(weight: torch.Tensor, spec: ConvSpec) -> QuantizedConvWeight:
    """Per-output-channel symmetric int8 (-127..127) codes of a (C_out, C_in/g, *k) weight."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    amax = flat.abs().amax(dim=1)
    scale, zero = choose_qparams(-amax, amax, WEIGHT_SCHEME)
    codes = quantize(weight.detach(), scale, zero, WEIGHT_SCHEME)  # (C_out, Cg, *k)
    groups = spec.groups
    # (C_out, Cg*K) -> (G, Kg, Cg*K) -> (G, Cg*K, Kg): columns of the GEMM's right operand
    columns = codes.reshape(groups, spec.out_channels // groups, -1).transpose(1, 2).contiguous()
    return QuantizedConvWeight(columns, scale, columns.to(torch.int32).sum(dim=1))


def _patches(x_q: torch.Tensor, x_zero_point: int, spec: ConvSpec) -> torch.Tensor:
    """(G, N*L, Cg*K) int8 patches; padding is filled with the zero point (the code of real 0)."""
    flat = [p for before, after in reversed(spec.padding) for p in (before, after)]
    padded = torch.nn.functional.pad(x_q, flat, value=x_zero_point) if any(flat) else x_q
    unpadded = dataclasses.replace(spec, padding=((0, 0),) * spec.dims)
    return im2col_matrix(padded, unpadded)


def _requantize(acc: torch.Tensor, x_scale: float, w: QuantizedConvWeight, bias: torch.Tensor | None,
                out_scale: float, out_zero_point: int, out_scheme: QuantScheme, spec: ConvSpec,
                shape: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
    """(G, N*L, Kg) exact integer sums -> (N, C_out, *out) output codes."""
    multiplier = (x_scale * w.scale.double() / out_scale).reshape(spec.groups, 1, -1)
    real = acc.double() * multiplier
    if bias is not None:
        real = real + (bias.double() / out_scale).reshape(spec.groups, 1, -1)
    codes = (torch.round(real) + out_zero_point).clamp(out_scheme.qmin, out_scheme.qmax).to(out_scheme.dtype)
    n, out_spatial = shape[0], shape[2:]
    # (G, N*L, Kg) -> (N, G, Kg, *out) -> (N, C_out, *out)
    codes = codes.reshape(spec.groups, n, *out_spatial, -1)
    return codes.permute(1, 0, codes.dim() - 1, *range(2, 2 + spec.dims)).reshape(shape)


def int8_conv(x_q: torch.Tensor, x_scale: float, x_zero_point: int, weight: QuantizedConvWeight,
              bias: torch.Tensor | None, spec: ConvSpec, out_scale: float, out_zero_point: int,
              out_scheme: QuantScheme = QuantScheme(symmetric=False)) -> torch.Tensor:  # fmt: skip
    """The integer convolution through torch._int_mm (int32 accumulation). x_q: (N, C_in, *spatial) int8."""
    cols = _patches(x_q, x_zero_point, spec)
    acc = torch.stack([torch._int_mm(cols[g], weight.columns[g]) for g in range(spec.groups)])  # int32
    acc = acc - x_zero_point * weight.column_sums.unsqueeze(1)
    shape = spec.output_shape(x_q.shape)
    return _requantize(acc, x_scale, weight, bias, out_scale, out_zero_point, out_scheme, spec, shape)


def int8_conv_reference(x_q: torch.Tensor, x_scale: float, x_zero_point: int, weight: QuantizedConvWeight,
                        bias: torch.Tensor | None, spec: ConvSpec, out_scale: float, out_zero_point: int,
                        out_scheme: QuantScheme = QuantScheme(symmetric=False)) -> torch.Tensor:  # fmt: skip
    """The oracle: (x_q - zp) @ w in float64, exact for int8 operands at any realistic reduction length."""
    cols = _patches(x_q, x_zero_point, spec).double() - x_zero_point
    acc = torch.matmul(cols, weight.columns.double())
    shape = spec.output_shape(x_q.shape)
    return _requantize(acc, x_scale, weight, bias, out_scale, out_zero_point, out_scheme, spec, shape)
