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
    module: nn.Module | None = None  # the runnable model, deployable as convopt's result


def _warmed_backend(name: str, build: Callable[[], nn.Module], inputs: tuple[torch.Tensor, ...]) -> Backend:
    """Build the wrapper and make its first call (compilation or export happens there), timing both;
    any failure becomes the backend's `unavailable` reason."""
    start = time.perf_counter()
    try:
        module = build()
        with torch.no_grad():
            module(*inputs)
    except Exception as exc:  # compilers and exporters fail in many ways: the report says which
        return Backend(name, None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def run() -> Any:
        with torch.no_grad():
            return module(*inputs)

    return Backend(name, run, time.perf_counter() - start, module=module)


def inductor_backend(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Backend:
    """torch.compile with inductor, weight freezing and channels_last; compiled (and warmed) here."""
    return _warmed_backend(
        "torch.compile", lambda: InductorModule(convert_layout(copy.deepcopy(model), "channels_last")), inputs
    )


def onnxruntime_backend(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Backend:
    """ONNX Runtime's CPU provider on the exported model, with the current intra-op thread count."""
    return _warmed_backend("onnxruntime", lambda: OnnxRuntimeModule(copy.deepcopy(model)), inputs)


def comparison_backends(model: nn.Module, inputs: tuple[torch.Tensor, ...], say: Callable[[str], None],
                        precision: str = "") -> list[Backend]:  # fmt: skip
    """The whole-graph backends every optimize result is timed against: torch.compile and ONNX Runtime."""
    label = f", {precision}" if precision else ""
    say(f"building torch.compile (inductor{label}) for comparison")
    backends = [inductor_backend(model, inputs)]
    say(f"exporting to ONNX Runtime{f' ({precision})' if precision else ''} for comparison")
    backends.append(onnxruntime_backend(model, inputs))
    return backends
