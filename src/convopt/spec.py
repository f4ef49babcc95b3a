"""ConvSpec: every hyper-parameter of one convolution, normalised, with its exact cost.

Units, stated once for the whole package: one MAC is one multiply-accumulate; FLOPs = 2 x MACs.
MACs follow the convention torchvision publishes (and `torch.utils.flop_counter` uses): every kernel
tap at every output position counts, padded taps included, and bias adds are not MACs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from convopt.errors import InputShapeError, InvalidSpecError

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _tuple(value: int | Sequence[int], dims: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(value)
    if len(value) == 1:
        return value * dims
    if len(value) != dims or not all(isinstance(v, int) for v in value):
        raise InvalidSpecError(f"{what}={value!r}: expected an int or {dims} ints for a {dims}-d convolution")
    return value


def _per_side_padding(
    padding: Any, dims: int, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """Normalise int / per-dim / per-side / 'same' / 'valid' padding to ((before, after), ...) per dim."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * dims
        if padding == "same":
            if any(s != 1 for s in stride):
                raise InvalidSpecError(f"padding='same' needs stride 1 (PyTorch rule), got stride={stride}")
            # PyTorch puts the odd extra pad after: before = total // 2.
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise InvalidSpecError(f"padding={padding!r}: use an int, a tuple, 'same' or 'valid'")
    if isinstance(padding, int):
        return ((padding, padding),) * dims
    padding = tuple(padding)
    if len(padding) == 1 and isinstance(padding[0], int):
        return ((padding[0], padding[0]),) * dims
    if len(padding) != dims:
        raise InvalidSpecError(f"padding={padding!r}: expected {dims} entries (ints or (before, after) pairs)")
    out = []
    for p in padding:
        if isinstance(p, int):
            out.append((p, p))
        elif len(tuple(p)) == 2 and all(isinstance(v, int) for v in p):
            out.append((int(p[0]), int(p[1])))
        else:
            raise InvalidSpecError(f"padding entry {p!r}: expected an int or a (before, after) pair")
    return tuple(out)


@dataclass(frozen=True)
class ConvSpec:
    """Normalised hyper-parameters of one (possibly transposed) 1-d, 2-d or 3-d convolution.

    `padding` is always per side: ((before, after), ...) per spatial dim. For a transposed conv it has
    PyTorch's meaning (rows removed from the full output). Build with `ConvSpec.create(...)`,
    `ConvSpec.from_module(m)` or `ConvSpec.from_weight(w, ...)`; the constructor validates.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        dims = len(self.kernel_size)
        if dims not in (1, 2, 3):
            raise InvalidSpecError(f"kernel_size={self.kernel_size}: only 1-d, 2-d and 3-d convolutions exist")
        for name in ("stride", "padding", "dilation"):
            if len(getattr(self, name)) != dims:
                raise InvalidSpecError(f"{name}={getattr(self, name)} does not match kernel_size={self.kernel_size}")
        if not self.output_padding:
            object.__setattr__(self, "output_padding", (0,) * dims)
        if self.in_channels <= 0 or self.out_channels <= 0 or self.groups <= 0:
            raise InvalidSpecError(
                f"channels and groups must be positive: in={self.in_channels} out={self.out_channels} groups={self.groups}"
            )
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise InvalidSpecError(
                f"groups={self.groups} must divide in_channels={self.in_channels} and out_channels={self.out_channels}"
            )
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise InvalidSpecError(
                f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation} must all be >= 1"
            )
        if any(p < 0 for side in self.padding for p in side):
            raise InvalidSpecError(f"padding={self.padding} must be non-negative")
        if self.padding_mode not in PADDING_MODES:
            raise InvalidSpecError(f"padding_mode={self.padding_mode!r}: use one of {PADDING_MODES}")
        if self.transposed:
            if self.padding_mode != "zeros":
                raise InvalidSpecError("transposed convolutions only support padding_mode='zeros' (PyTorch rule)")
            for op, s, d in zip(self.output_padding, self.stride, self.dilation):
                if not 0 <= op < max(s, d):
                    raise InvalidSpecError(
                        f"output_padding={self.output_padding} must be smaller than stride or dilation (PyTorch rule)"
                    )
        elif any(self.output_padding):
            raise InvalidSpecError("output_padding only applies to transposed convolutions")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        dims: int | None = None,
        stride: int | Sequence[int] = 1,
        padding: Any = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        transposed: bool = False,
        output_padding: int | Sequence[int] = 0,
    ) -> "ConvSpec":
        """Build from the arguments `nn.ConvNd` / `F.convNd` take; `dims` defaults to len(kernel_size)."""
        if dims is None:
            if isinstance(kernel_size, int):
                raise InvalidSpecError("an int kernel_size needs dims=1, 2 or 3")
            dims = len(tuple(kernel_size))
        kernel = _tuple(kernel_size, dims, "kernel_size")
        stride_t = _tuple(stride, dims, "stride")
        dilation_t = _tuple(dilation, dims, "dilation")
        if transposed and isinstance(padding, str):
            raise InvalidSpecError(f"padding={padding!r} is not supported for transposed convolutions (PyTorch rule)")
        return cls(
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            kernel_size=kernel,
            stride=stride_t,
            padding=_per_side_padding(padding, dims, kernel, dilation_t, stride_t),
            dilation=dilation_t,
            groups=int(groups),
            bias=bool(bias),
            padding_mode=padding_mode,
            transposed=bool(transposed),
            output_padding=_tuple(output_padding, dims, "output_padding"),
        )

    @classmethod
    def from_module(cls, module: nn.Module) -> "ConvSpec":
        """Build from an `nn.Conv1d/2d/3d` or `nn.ConvTranspose1d/2d/3d` module."""
        if not isinstance(module, _CONV_TYPES):
            raise InvalidSpecError(f"{type(module).__name__} is not a torch.nn convolution module")
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        return cls.create(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            transposed=transposed,
            output_padding=module.output_padding if transposed else 0,
        )

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        *,
        bias: bool = False,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        transposed: bool = False,
        output_padding: Any = 0,
    ) -> "ConvSpec":
        """Build from a weight tensor and functional-call arguments (as `F.convNd` / aten see them)."""
        dims = weight.dim() - 2
        if dims not in (1, 2, 3):
            raise InvalidSpecError(f"weight of shape {tuple(weight.shape)}: expected 3, 4 or 5 dimensions")
        if transposed:  # weight is (C_in, C_out / groups, *k)
            in_ch, out_ch = weight.shape[0], weight.shape[1] * groups
        else:  # weight is (C_out, C_in / groups, *k)
            in_ch, out_ch = weight.shape[1] * groups, weight.shape[0]
        return cls.create(
            in_ch, out_ch, tuple(weight.shape[2:]), stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, transposed=transposed, output_padding=output_padding,
        )  # fmt: skip

    # ---- shape and cost -----------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def params(self) -> int:
        return math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)

    def _split(self, input_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == self.dims + 1:  # unbatched input (C, *spatial)
            shape = (1, *shape)
        if len(shape) != self.dims + 2:
            raise InputShapeError(
                f"input shape {tuple(input_shape)}: a {self.dims}-d conv takes (N, C, then {self.dims} spatial sizes)"
                f" or the unbatched (C, then {self.dims} spatial sizes)"
            )
        if shape[1] != self.in_channels:
            raise InputShapeError(f"input shape {tuple(input_shape)} has {shape[1]} channels, the conv expects {self.in_channels}")
        return shape[0], shape[2:]

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Output shape for an input of `input_shape` (batched (N, C, ...) or unbatched (C, ...))."""
        batch, spatial = self._split(input_shape)
        out = []
        for i, size in enumerate(spatial):
            k, s, d = self.kernel_size[i], self.stride[i], self.dilation[i]
            lo, hi = self.padding[i]
            if self.transposed:
                o = (size - 1) * s - lo - hi + d * (k - 1) + self.output_padding[i] + 1
            else:
                if self.padding_mode == "reflect" and max(lo, hi) >= size:
                    raise InputShapeError(f"reflect padding {lo, hi} needs an input wider than the pad, got {size}")
                if self.padding_mode == "circular" and max(lo, hi) > size:
                    raise InputShapeError(f"circular padding {lo, hi} cannot exceed the input size {size}")
                o = (size + lo + hi - d * (k - 1) - 1) // s + 1
            if o <= 0:
                raise InputShapeError(
                    f"input spatial size {tuple(spatial)} is too small for kernel {self.kernel_size} "
                    f"with dilation {self.dilation} and padding {self.padding}"
                )
            out.append(o)
        shape = (batch, self.out_channels, *out)
        return shape if len(tuple(input_shape)) == self.dims + 2 else shape[1:]

    def macs(self, input_shape: Sequence[int]) -> int:
        """Multiply-accumulates of one call (closed form, padded taps included, bias excluded)."""
        batch, spatial = self._split(input_shape)
        kernel_volume = math.prod(self.kernel_size)
        if self.transposed:  # every input element scatters into C_out/groups * K outputs
            return batch * self.in_channels * math.prod(spatial) * (self.out_channels // self.groups) * kernel_volume
        out_spatial = self.output_shape((batch, self.in_channels, *spatial))[2:]
        return batch * self.out_channels * math.prod(out_spatial) * (self.in_channels // self.groups) * kernel_volume

    def bytes_moved(self, input_shape: Sequence[int], itemsize: int = 4) -> tuple[int, int]:
        """(bytes read, bytes written) if input, weight and bias are read once and the output written once."""
        read = math.prod(input_shape) + math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)
        written = math.prod(self.output_shape(input_shape))
        return read * itemsize, written * itemsize
