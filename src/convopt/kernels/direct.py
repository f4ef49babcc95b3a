"""`direct`: PyTorch's own convolution (oneDNN / cuDNN underneath). The baseline; always supported."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convopt.kernels.registry import ConvAlgorithm, pad_input, register_algorithm, require
from convopt.spec import ConvSpec

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    symmetric = all(before == after for before, after in spec.padding)
    if symmetric:  # let the library pad (no copy); asymmetric ('same' with even kernels) pads first
        padding = [before for before, _ in spec.padding]
        return _CONV[spec.dims](x, weight, bias, spec.stride, padding, spec.dilation, spec.groups)
    return _CONV[spec.dims](pad_input(x, spec), weight, bias, spec.stride, 0, spec.dilation, spec.groups)


def _supports(spec: ConvSpec, dtype: torch.dtype) -> str | None:
    return require((not spec.transposed, "transposed convolutions are not part of the algorithm library"))


DIRECT = register_algorithm(ConvAlgorithm("direct", _run, _supports, summary="PyTorch's F.convNd (baseline)"))
