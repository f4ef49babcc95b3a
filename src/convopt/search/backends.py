"""Other execution backends, measured on the same inputs and threads as convopt's result.

`torch.compile` (inductor, with freezing and channels_last, the configuration REFERENCES.md s.5 found
fastest) and ONNX Runtime (CPU) on the model exported with torch.onnx. Each returns a callable plus
what it cost to build, or the reason it could not be built: a backend that fails is reported, not hidden.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from convopt.transforms.backend import InductorModule, OnnxRuntimeModule
from convopt.transforms.layout import convert_layout


@dataclass
class Backend:
    name: str
    run: Callable[[], Any] | None
    build_seconds: float
    unavailable: str | None = None
    module: nn.Module | None = None  # the runnable model, when it can be kept (inductor)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def inductor_backend(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Backend:
    """torch.compile with inductor, weight freezing and channels_last; compiled (and warmed) here."""
    start = time.perf_counter()
    try:
        module = InductorModule(convert_layout(copy.deepcopy(model), "channels_last"))
        with torch.no_grad():
            module(*inputs)  # the first call compiles
    except Exception as exc:  # compilation can fail in many ways; the report says which
        return Backend("torch.compile", None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def run() -> Any:
        with torch.no_grad():
            return module(*inputs)

    return Backend("torch.compile", run, time.perf_counter() - start, module=module)


def onnxruntime_backend(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Backend:
    """ONNX Runtime's CPU provider on the exported model, with the current intra-op thread count."""
    start = time.perf_counter()
    try:
        module = OnnxRuntimeModule(copy.deepcopy(model))
        with torch.no_grad():
            module(*inputs)  # the first call exports and opens the session
    except Exception as exc:  # export or session creation failed; the report says why
        return Backend("onnxruntime", None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def run() -> Any:
        with torch.no_grad():
            return module(*inputs)

    return Backend("onnxruntime", run, time.perf_counter() - start, module=module)
