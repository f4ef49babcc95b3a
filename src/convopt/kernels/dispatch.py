"""`convopt.conv`: F.conv1d/2d/3d semantics, computed by a chosen (or automatically picked) algorithm."""

from __future__ import annotations

from typing import Any

import torch

from convopt.errors import InputShapeError, InvalidSpecError, UnsupportedConvError
from convopt.kernels.registry import ALGORITHMS, ConvAlgorithm, supporting_algorithms
from convopt.spec import ConvSpec


def check_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
               dilation: Any, groups: int) -> ConvSpec:  # fmt: skip
    """Validate a functional conv call the way PyTorch does and return its ConvSpec (raises on invalid calls)."""
    if weight.dim() not in (3, 4, 5):
        raise InvalidSpecError(f"weight of shape {tuple(weight.shape)}: weight should have 3, 4 or 5 dimensions")
    dims = weight.dim() - 2
    if x.dim() not in (dims + 1, dims + 2):
        raise InputShapeError(
            f"expected a {dims + 1}-d (unbatched) or {dims + 2}-d (batched) input for a {dims + 2}-d weight, "
            f"got input of shape {tuple(x.shape)}"
        )
    tensors = [("input", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    if len({t.dtype for _, t in tensors}) > 1 or len({t.device for _, t in tensors}) > 1:
        described = ", ".join(f"{n} {t.dtype} on {t.device}" for n, t in tensors)
        raise InvalidSpecError(f"input, weight and bias dtypes and devices should be the same: {described}")
    if not isinstance(groups, int) or groups <= 0:
        raise InvalidSpecError(f"non-positive groups is not supported: groups={groups}")
    if isinstance(padding, str) and padding == "same" and any(
        s != 1 for s in ((stride,) * dims if isinstance(stride, int) else tuple(stride))
    ):
        raise InvalidSpecError("padding='same' is not supported for strided convolutions")
    if weight.shape[0] % groups:
        raise InvalidSpecError(f"expected weight to be at least {groups} at dimension 0 and divisible by groups")
    spec = ConvSpec.from_weight(weight, bias=bias is not None, stride=stride, padding=padding, dilation=dilation,
                                groups=groups)  # fmt: skip
    if bias is not None and tuple(bias.shape) != (spec.out_channels,):
        raise InvalidSpecError(f"bias of shape {tuple(bias.shape)}: expected ({spec.out_channels},)")
    spec.output_shape(x.shape)  # raises InputShapeError for channel mismatch or too small input
    return spec


def auto_algorithm(spec: ConvSpec, dtype: torch.dtype) -> str:
    """Interim cost rule (the autotuner replaces it with measurement): Winograd F(4,3) for wide 3x3 stride-1
    convs (>= 128 channels per group: at 64 channels oneDNN's direct conv wins here), FFT for large kernels
    (2-D k >= 11, 3-D k^3 >= 125: the measured break-even at batch 1), PyTorch's direct conv otherwise."""
    k_volume = 1
    for k in spec.kernel_size:
        k_volume *= k
    per_group_in, per_group_out = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    candidates = []
    if spec.dims == 2 and spec.kernel_size == (3, 3) and per_group_in >= 128 and per_group_out >= 128:
        candidates.append("winograd_f4")
    if (spec.dims == 2 and k_volume >= 121) or (spec.dims == 3 and k_volume >= 125) or (spec.dims == 1 and k_volume >= 64):
        candidates.append("fft")
    for name in candidates:
        if name in ALGORITHMS and ALGORITHMS.get(name).supports(spec, dtype) is None:
            return name
    return "direct"


def resolve_algorithm(name: str, spec: ConvSpec, dtype: torch.dtype) -> ConvAlgorithm:
    """The algorithm to run, or UnsupportedConvError naming the reason and the algorithms that can."""
    if name == "auto":
        name = auto_algorithm(spec, dtype)
    if name not in ALGORITHMS:
        raise UnsupportedConvError(f"unknown algorithm {name!r}; registered: {', '.join(ALGORITHMS)}")
    algorithm = ALGORITHMS.get(name)
    reason = algorithm.supports(spec, dtype)
    if reason is not None:
        able = [n for n in supporting_algorithms(spec, dtype) if n != "reference"]
        raise UnsupportedConvError(f"{name} cannot compute this convolution: {reason}; use one of: {', '.join(able)}")
    return algorithm


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0,
         dilation: Any = 1, groups: int = 1, *, algorithm: str = "auto") -> torch.Tensor:  # fmt: skip
    """Convolution with the semantics of F.conv1d/2d/3d (the dimension comes from the weight's rank).

    Args:
        x: (N, C_in, *spatial) or unbatched (C_in, *spatial).
        weight: (C_out, C_in / groups, *kernel).
        bias: (C_out,) or None.
        stride, padding, dilation, groups: as in F.convNd; padding also takes 'same', 'valid' and
            per-side ((before, after), ...) pairs.
        algorithm: a name from `list_algorithms()`, or "auto".

    Raises:
        UnsupportedConvError: the algorithm cannot compute this case (the message says why and what can).
        InvalidSpecError, InputShapeError: calls PyTorch itself rejects.

    Example:
        >>> import torch, convopt
        >>> x, w = torch.randn(2, 8, 16, 16), torch.randn(8, 8, 3, 3)
        >>> y = convopt.conv(x, w, padding=1, algorithm="im2col")
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-4)
        True
    """
    spec = check_call(x, weight, bias, stride, padding, dilation, groups)
    chosen = resolve_algorithm(algorithm, spec, x.dtype)
    batched = x.dim() == spec.dims + 2
    y = chosen(x if batched else x.unsqueeze(0), weight, bias, spec)
    return y if batched else y.squeeze(0)
