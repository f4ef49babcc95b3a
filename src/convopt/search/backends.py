"""Other execution backends, measured on the same inputs and threads as convopt's result.

`torch.compile` (inductor, with freezing and channels_last, the configuration REFERENCES.md s.5 found
fastest) and ONNX Runtime (CPU) on the model exported with torch.onnx. Each returns a callable plus
what it cost to build, or the reason it could not be built: a backend that fails is reported, not hidden.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from convopt.transforms.backend import InductorModule


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
    module = InductorModule(copy.deepcopy(model).to(memory_format=torch.channels_last))
    try:
        with torch.no_grad():
            module(*inputs)  # the first call compiles
    except Exception as exc:  # compilation can fail in many ways; the report says which
        return Backend("torch.compile", None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def run() -> Any:
        with torch.no_grad():
            return module(*inputs)

    return Backend("torch.compile", run, time.perf_counter() - start, module=module)


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path) -> None:
    """torch.onnx (dynamo exporter) with a dynamic batch dimension; the file is checked by onnx.checker."""
    import onnx

    names = [f"input_{i}" for i in range(len(inputs))]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, input_names=names,
                          dynamic_shapes=tuple({0: batch} for _ in inputs), verbose=False)  # fmt: skip
    onnx.checker.check_model(str(path), full_check=False)


def onnxruntime_backend(model: nn.Module, inputs: tuple[torch.Tensor, ...], threads: int,
                        onnx_path: str | Path | None = None) -> Backend:  # fmt: skip
    """ONNX Runtime's CPU provider on the exported model, with the same intra-op thread count."""
    start = time.perf_counter()
    try:
        import onnxruntime as ort

        path = Path(onnx_path) if onnx_path else Path(tempfile.mkdtemp(prefix="convopt-onnx-")) / "model.onnx"
        if not path.exists():
            export_onnx(model, inputs, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    except Exception as exc:  # export or session creation failed; the report says why
        return Backend("onnxruntime", None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def run() -> Any:
        return torch.from_numpy(session.run(None, feeds)[0])

    return Backend("onnxruntime", run, time.perf_counter() - start)
