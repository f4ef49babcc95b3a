"""`reference`: float64 ground truth, plus naive loops that cross-check it on tiny shapes.

Every other algorithm is tested against `reference_conv`, which computes in float64 with PyTorch's own
convolution after explicit padding. `naive_conv` is the definition written out as loops (no library
convolution at all), used only to prove the reference itself right.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from convopt.kernels.registry import ConvAlgorithm, add_bias, pad_input, register_algorithm, require
from convopt.spec import ConvSpec

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def reference_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """The convolution in float64 (returns float64): x (N, C_in, *S), weight (C_out, C_in/g, *K)."""
    x64, w64 = pad_input(x.to(torch.float64), spec), weight.to(torch.float64)
    y = _CONV[spec.dims](x64, w64, None, spec.stride, 0, spec.dilation, spec.groups)
    return add_bias(y, bias.to(torch.float64) if bias is not None else None)


def naive_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """The definition as Python loops over outputs, in float64. Tiny shapes only."""
    x64 = pad_input(x.to(torch.float64), spec)
    w64 = weight.to(torch.float64)
    out_shape = spec.output_shape(x.shape)
    y = torch.zeros(out_shape, dtype=torch.float64)
    per_group_in, per_group_out = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    for n, k in itertools.product(range(out_shape[0]), range(spec.out_channels)):
        group = k // per_group_out
        for position in itertools.product(*(range(s) for s in out_shape[2:])):
            total = float(bias[k]) if bias is not None else 0.0
            for c in range(per_group_in):
                for tap in itertools.product(*(range(s) for s in spec.kernel_size)):
                    source = tuple(p * s + t * d for p, s, t, d in zip(position, spec.stride, tap, spec.dilation))
                    total += float(x64[(n, group * per_group_in + c, *source)]) * float(w64[(k, c, *tap)])
            y[(n, k, *position)] = total
    return y


def _run(x, weight, bias, spec):
    return reference_conv(x, weight, bias, spec).to(x.dtype)


def _supports(spec: ConvSpec, dtype: torch.dtype) -> str | None:
    return require(
        (not spec.transposed, "transposed convolutions are not part of the algorithm library"),
        (dtype.is_floating_point, f"dtype {dtype} is not a floating-point type"),
    )


REFERENCE = register_algorithm(
    ConvAlgorithm("reference", _run, _supports, summary="float64 ground truth (slow; for testing)")
)
