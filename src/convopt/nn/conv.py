"""AlgoConv1d/2d/3d: a torch.nn conv computed by a chosen algorithm, with the weight transform cached.

The wrapper shares the original module's parameters (same tensors, same state-dict keys `weight` and
`bias`), so a checkpoint of the original loads into it and vice versa. The algorithm's prepared weight
(Winograd-domain filters, sparse matrix, ...) is computed once and reused until the weight changes:
the cache key is the weight's identity, storage, version counter (bumped by every in-place update:
optimizer steps, load_state_dict, `with torch.no_grad(): w.mul_(...)`), dtype and device. While the
weight needs gradients the transform is recomputed every call, so autograd sees it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import InvalidSpecError
from convopt.kernels.dispatch import resolve_algorithm
from convopt.kernels.registry import ConvAlgorithm
from convopt.spec import ConvSpec

_TORCH_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class _AlgoConvNd(nn.Module):
    dims = 0

    def __init__(self, conv: nn.Module, algorithm: str = "auto"):
        super().__init__()
        expected = _TORCH_CONVS[self.dims]
        if type(conv) is not expected:
            raise InvalidSpecError(f"{type(self).__name__} wraps {expected.__name__}, got {type(conv).__name__}")
        self.spec = ConvSpec.from_module(conv)
        # Non-zero padding modes pad explicitly first; the algorithm then sees a padding-free conv.
        self._explicit_pad = self.spec.padding_mode != "zeros"
        self._algo_spec = (
            dataclasses.replace(self.spec, padding=((0, 0),) * self.dims, padding_mode="zeros")
            if self._explicit_pad else self.spec
        )  # fmt: skip
        self.weight = conv.weight
        self.bias = conv.bias
        self.algorithm: ConvAlgorithm = resolve_algorithm(algorithm, self._algo_spec, conv.weight.dtype)
        self._cache_key: tuple[Any, ...] | None = None
        self._prepared: Any = None

    @classmethod
    def from_conv(cls, conv: nn.Module, algorithm: str = "auto") -> "_AlgoConvNd":
        """Wrap an existing nn.ConvNd (parameters shared, not copied)."""
        return cls(conv, algorithm)

    def __getstate__(self) -> dict[str, Any]:
        # The cache is derived data (and may hold sparse tensors, which cannot be deep-copied or pickled).
        state = self.__dict__.copy()
        state["_prepared"], state["_cache_key"] = None, None
        return state

    def _key(self) -> tuple[Any, ...]:
        w = self.weight
        return (id(w), w.data_ptr(), w._version, w.dtype, w.device)

    def prepared_weight(self) -> Any:
        """The algorithm's form of the weight, from the cache while the weight is unchanged."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            self._cache_key, self._prepared = None, None
            return self.algorithm.prepare(self.weight, self._algo_spec)
        key = self._key()
        if key != self._cache_key:
            self._prepared = self.algorithm.prepare(self.weight.detach(), self._algo_spec)
            self._cache_key = key
        return self._prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == self.dims + 2
        if not batched:
            x = x.unsqueeze(0)
        self.spec.output_shape(x.shape)  # typed error for a wrong channel count or a too-small input
        if self._explicit_pad:
            flat = [p for before, after in reversed(self.spec.padding) for p in (before, after)]
            mode = "constant" if self.spec.padding_mode == "zeros" else self.spec.padding_mode
            x = F.pad(x, flat, mode=mode)
        y = self.algorithm.run(x, self.prepared_weight(), self.bias, self._algo_spec)
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, stride={s.stride}, "
                f"padding={s.padding}, dilation={s.dilation}, groups={s.groups}, bias={s.bias}, "
                f"padding_mode={s.padding_mode!r}, algorithm={self.algorithm.name!r}")  # fmt: skip


class AlgoConv1d(_AlgoConvNd):
    """nn.Conv1d computed by a convopt algorithm (see module docstring)."""

    dims = 1


class AlgoConv2d(_AlgoConvNd):
    """nn.Conv2d computed by a convopt algorithm (see module docstring).

    Example:
        >>> import torch
        >>> from convopt.nn import AlgoConv2d
        >>> conv = torch.nn.Conv2d(16, 16, 3, padding=1).eval()
        >>> fast = AlgoConv2d.from_conv(conv, "im2col")
        >>> x = torch.randn(1, 16, 8, 8)
        >>> torch.allclose(fast(x), conv(x), atol=1e-4)
        True
    """

    dims = 2


class AlgoConv3d(_AlgoConvNd):
    """nn.Conv3d computed by a convopt algorithm (see module docstring)."""

    dims = 3


_WRAPPERS = {nn.Conv1d: AlgoConv1d, nn.Conv2d: AlgoConv2d, nn.Conv3d: AlgoConv3d}


def from_conv(conv: nn.Module, algorithm: str = "auto") -> _AlgoConvNd:
    """Wrap any nn.Conv1d/2d/3d in the matching AlgoConvNd."""
    if type(conv) not in _WRAPPERS:
        raise InvalidSpecError(f"from_conv takes nn.Conv1d/2d/3d, got {type(conv).__name__}")
    return _WRAPPERS[type(conv)](conv, algorithm)
