"""Candidate conv algorithms for one layer, ready to time: the shared step of `convopt bench` and the tuner.

For each algorithm: is the case supported, does its scratch memory fit, what is its normwise error
against the float64 reference on these very inputs, and (if it passes) a closure that runs it with the
weight already prepared -- the nn wrappers cache prepared weights, so preparing is never timed.
Every candidate left out gets its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from convopt.errors import UnsupportedConvError
from convopt.kernels.reference import reference_conv
from convopt.kernels.registry import ALGORITHMS
from convopt.spec import ConvSpec
from convopt.testing import normwise_error

MAX_WORKSPACE_BYTES = 2 * 2**30  # skip (and say so) candidates whose scratch memory would exceed this


@dataclass
class Candidates:
    runs: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def default_algorithms() -> list[str]:
    return [name for name in ALGORITHMS if name != "reference"]


def prepare_candidates(spec: ConvSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       algorithms: list[str] | None = None, *, budget_error: float | None = None) -> Candidates:  # fmt: skip
    """Runnable candidates for conv(x, weight, bias) under `spec`; with `budget_error`, any algorithm but
    `direct` whose normwise error is over it is skipped (NaN included)."""
    reference = reference_conv(x, weight, bias, spec)
    found = Candidates()
    for name in algorithms or default_algorithms():
        if name not in ALGORITHMS:
            raise UnsupportedConvError(f"unknown algorithm {name!r}; registered: {', '.join(ALGORITHMS)}")
        algorithm = ALGORITHMS.get(name)
        reason = algorithm.supports(spec, x.dtype)
        workspace = algorithm.workspace(spec, tuple(x.shape), x.element_size()) if algorithm.workspace else 0
        if reason is None and workspace > MAX_WORKSPACE_BYTES:
            reason = f"needs {workspace / 2**30:.1f} GiB of scratch memory (limit {MAX_WORKSPACE_BYTES / 2**30:.0f} GiB)"
        if reason is not None:
            found.skipped[name] = reason
            continue
        prepared = algorithm.prepare(weight, spec)
        with torch.no_grad():
            error = normwise_error(algorithm.run(x, prepared, bias, spec), reference, x, weight, spec)
        found.errors[name] = error
        if budget_error is not None and not error <= budget_error and name != "direct":
            found.skipped[name] = f"normwise error {error:.1e} is over the budget {budget_error:.0e}"
            continue
        found.runs[name] = lambda algorithm=algorithm, prepared=prepared: algorithm.run(x, prepared, bias, spec)
    return found
