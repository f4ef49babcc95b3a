"""Quantization primitives: exact, pure functions shared by calibration, QAT and the INT8 engine.

Conventions, stated once:
- q = clamp(round(x / scale) + zero_point, qmin, qmax); x_hat = (q - zero_point) * scale.
- round() is round-half-to-even (torch.round), as in IEEE 754 and oneDNN / ONNX QuantizeLinear.
- The range always contains 0, so 0.0 is exactly representable (zero padding stays exact).
- Symmetric schemes: zero_point = 0 (signed) or 2^(bits-1) (unsigned); affine schemes fit [min, max].
- Per-channel: scale and zero_point are vectors along `axis` (axis 0 = output channels of a conv weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convopt.errors import ConfigError

MIN_SCALE = 1e-12  # a constant tensor still gets a usable scale


@dataclass(frozen=True)
class QuantScheme:
    """How real values map to integers. bits in 2..8; `narrow_range` drops the most negative code (-127..127)."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    axis: int = 0
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ConfigError(f"bits={self.bits}: use 2..8 (values are stored in 8-bit integers)")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def dtype(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8


def _broadcast(param: torch.Tensor, x: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    if not scheme.per_channel or param.dim() == 0:
        return param
    shape = [1] * x.dim()
    shape[scheme.axis] = -1
    return param.reshape(shape)


def choose_qparams(min_val: torch.Tensor, max_val: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) covering [min_val, max_val] (widened to include 0); per channel if they are vectors."""
    min_val = torch.minimum(torch.as_tensor(min_val, dtype=torch.float32), torch.zeros(()))
    max_val = torch.maximum(torch.as_tensor(max_val, dtype=torch.float32), torch.zeros(()))
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = torch.maximum(-min_val, max_val)
        half = (qmax - qmin) / 2  # 127.5 for int8, 127 with narrow range
        scale = (amax / half).clamp_min(MIN_SCALE)
        zero_point = torch.full_like(scale, 0 if scheme.signed else (qmax + qmin + 1) // 2, dtype=torch.int64)
        return scale, zero_point
    scale = ((max_val - min_val) / (qmax - qmin)).clamp_min(MIN_SCALE)
    zero_point = (qmin - torch.round(min_val / scale)).clamp(qmin, qmax).to(torch.int64)
    return scale, zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Real -> integer codes (int8 or uint8 storage) with round-half-to-even and saturation."""
    s, z = _broadcast(scale, x, scheme), _broadcast(zero_point, x, scheme)
    return (torch.round(x / s) + z).clamp(scheme.qmin, scheme.qmax).to(scheme.dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Integer codes -> real values: (q - zero_point) * scale, in float32."""
    s, z = _broadcast(scale, q, scheme), _broadcast(zero_point, q, scheme)
    return (q.to(torch.int32) - z).to(torch.float32) * s


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """dequantize(quantize(x)) in float, with the straight-through estimator (Bengio et al. 2013): the
    gradient passes unchanged where x is inside the representable range and is zero where it saturates."""
    s, z = _broadcast(scale, x, scheme), _broadcast(zero_point, x, scheme)
    codes = torch.round(x / s) + z
    inside = (codes >= scheme.qmin) & (codes <= scheme.qmax)
    quantized = (codes.clamp(scheme.qmin, scheme.qmax) - z) * s
    return torch.where(inside, x + (quantized - x).detach(), quantized.detach())


def quantization_error_bound(scale: torch.Tensor) -> torch.Tensor:
    """The worst rounding error inside the range: half a step."""
    return scale / 2
