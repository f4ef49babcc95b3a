"""The one tolerance table and the error measures convopt (and users' own tests) judge numerics by.

Sources: REFERENCES.md section 3. Elementwise limits follow `torch.testing.assert_close`'s defaults,
scaled with the reduction length; normwise limits divide the worst error by the worst possible output
magnitude, max(|x| conv |w|), which is what transform algorithms (Winograd, FFT) can promise.
"""

from __future__ import annotations

import math

import torch

from convopt.spec import ConvSpec

# Elementwise: |y - y_ref| <= atol * scale + rtol * |y_ref|, scale = sqrt(reduction length): rounding errors
# of a length-K sum grow like sqrt(K) for random data, and two fp32 implementations may differ by twice that.
ELEMENTWISE = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}
# Normwise: max|y - y_ref| / max(|x| conv |w|) <= limit.
NORMWISE = {
    torch.float32: {"default": 1e-5, "winograd_f6": 5e-5},
    torch.float64: {"default": 1e-12, "winograd_f6": 1e-11},
}
# SQNR floors (dB) for lossy INT8 (per-channel symmetric int8 weights, per-tensor uint8 activations): 8-bit
# rounding gives ~6 dB per bit less the crest factor of the data, so one layer lands near 35-40 dB; a deep
# model accumulates every layer's noise.
SQNR_FLOOR_DB = {"int8_weight": 30.0, "int8_layer": 30.0, "int8_model": 20.0}
TOLERANCES = {"elementwise": ELEMENTWISE, "normwise": NORMWISE, "sqnr_db": SQNR_FLOOR_DB}


def reduction_length(spec: ConvSpec) -> int:
    return spec.in_channels // spec.groups * math.prod(spec.kernel_size)


def elementwise_ok(y: torch.Tensor, y_ref: torch.Tensor, spec: ConvSpec) -> tuple[bool, float]:
    """(within tolerance, worst ratio of error to allowed error) for exact-up-to-rounding algorithms."""
    rtol, atol = ELEMENTWISE.get(y.dtype, ELEMENTWISE[torch.float32])
    scale = max(1.0, math.sqrt(reduction_length(spec)))
    error = (y.to(torch.float64) - y_ref.to(torch.float64)).abs()
    allowed = atol * scale + rtol * y_ref.to(torch.float64).abs()
    worst = float((error / allowed).max()) if error.numel() else 0.0
    return worst <= 1.0, worst


def normwise_error(y: torch.Tensor, y_ref: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> float:
    """max|y - y_ref| / max(|x| conv |w|), the bound on any output's magnitude (REFERENCES.md s.3)."""
    from convopt.kernels.reference import reference_conv

    bound = reference_conv(x.abs(), weight.abs(), None, spec).abs().max()
    error = (y.to(torch.float64) - y_ref.to(torch.float64)).abs().max() if y.numel() else torch.tensor(0.0)
    return float(error / bound) if float(bound) > 0 else float(error)


def normwise_limit(algorithm: str, dtype: torch.dtype) -> float:
    table = NORMWISE.get(dtype, NORMWISE[torch.float32])
    return table.get(algorithm, table["default"])


def sqnr_db(y_ref: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 20 log10(||y_ref|| / ||y_ref - y||), in dB (inf when equal)."""
    noise = torch.linalg.vector_norm((y_ref - y).to(torch.float64))
    signal = torch.linalg.vector_norm(y_ref.to(torch.float64))
    return float("inf") if float(noise) == 0 else float(20 * torch.log10(signal / noise))


def assert_conv_close(algorithm: str, error_kind: str, y: torch.Tensor, y_ref: torch.Tensor, x: torch.Tensor,
                      weight: torch.Tensor, spec: ConvSpec) -> None:  # fmt: skip
    """Raise AssertionError with the measured error when `y` is outside the table's tolerance."""
    if error_kind == "elementwise":
        ok, worst = elementwise_ok(y, y_ref, spec)
        assert ok, f"{algorithm}: elementwise error {worst:.3g}x the allowed tolerance for {spec}"
    else:
        error, limit = normwise_error(y, y_ref, x, weight, spec), normwise_limit(algorithm, y.dtype)
        assert error <= limit, f"{algorithm}: normwise error {error:.3g} > {limit:.3g} for {spec}"


__all__ = ["SQNR_FLOOR_DB", "TOLERANCES", "assert_conv_close", "elementwise_ok", "normwise_error", "normwise_limit", "sqnr_db"]
