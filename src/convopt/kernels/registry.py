"""The registry of convolution algorithms: what each computes, for which (ConvSpec, dtype), and why not.

An algorithm is two pure functions: `prepare(weight, spec)` turns the weight into the form the algorithm
consumes (Winograd-domain filters, a sparse matrix, ...; the nn wrappers cache it), and
`run(x, prepared, bias, spec)` computes the batched convolution. `supports(spec, dtype)` returns None
when the algorithm handles the case, otherwise the reason it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from convopt._registry import Registry
from convopt.spec import ConvSpec

SupportFn = Callable[[ConvSpec, torch.dtype], "str | None"]


def _identity_prepare(weight: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    return weight


@dataclass(frozen=True)
class ConvAlgorithm:
    """A registered convolution algorithm.

    Attributes:
        name: registry key, e.g. "winograd_f4".
        run: run(x (N, C_in, *spatial), prepared, bias (C_out,) or None, spec) -> (N, C_out, *out_spatial).
        supports: supports(spec, dtype) -> None, or the reason this algorithm cannot compute it.
        prepare: prepare(weight, spec) -> what `run` consumes (default: the weight itself).
        error_kind: "elementwise" (exact up to summation order) or "normwise" (transform algorithms);
            picks the row of `convopt.testing.TOLERANCES` it is held to.
        summary: one line for `list_algorithms()` and the bench table.
        workspace: optional workspace(spec, input_shape, itemsize) -> scratch bytes, so callers can skip
            a candidate that would not fit in memory (and say so) instead of crashing.
    """

    name: str
    run: Callable[..., torch.Tensor]
    supports: SupportFn
    prepare: Callable[[torch.Tensor, ConvSpec], Any] = _identity_prepare
    error_kind: str = "elementwise"
    summary: str = ""
    workspace: Callable[[ConvSpec, tuple[int, ...], int], int] | None = None

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
        return self.run(x, self.prepare(weight, spec), bias, spec)


ALGORITHMS: Registry[ConvAlgorithm] = Registry("convolution algorithm")
FLOAT_DTYPES = (torch.float32, torch.float64)


def register_algorithm(algorithm: ConvAlgorithm) -> ConvAlgorithm:
    return ALGORITHMS.register(algorithm.name, algorithm)


def list_algorithms(pattern: str = "*") -> list[str]:
    """Names of the registered convolution algorithms matching a glob pattern."""
    return ALGORITHMS.list(pattern)


def get_algorithm(name: str) -> ConvAlgorithm:
    return ALGORITHMS.get(name)


def support_reason(name: str, spec: ConvSpec, dtype: torch.dtype) -> str | None:
    """None when algorithm `name` supports (spec, dtype), else why not."""
    return ALGORITHMS.get(name).supports(spec, dtype)


def supporting_algorithms(spec: ConvSpec, dtype: torch.dtype) -> list[str]:
    return [name for name in ALGORITHMS if ALGORITHMS.get(name).supports(spec, dtype) is None]


# ---- shared support guards ---------------------------------------------------------------------------
def require(*checks: tuple[bool, str]) -> str | None:
    """The first failing check's reason, or None: `require((spec.dims == 2, "2-d only"), ...)`."""
    for ok, reason in checks:
        if not ok:
            return reason
    return None


def float_dtype_reason(dtype: torch.dtype) -> tuple[bool, str]:
    return dtype in FLOAT_DTYPES, f"dtype {dtype} is not supported (float32 and float64 are)"


def pad_input(x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """Apply the spec's per-side zero padding explicitly (F.pad lists the last dim first)."""
    if not any(p for side in spec.padding for p in side):
        return x
    flat = [p for before, after in reversed(spec.padding) for p in (before, after)]
    return torch.nn.functional.pad(x, flat)


def add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return y
    return y + bias.view(1, -1, *([1] * (y.dim() - 2)))
