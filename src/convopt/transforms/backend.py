"""Run the whole model through another execution backend when it measured fastest and passed verification.

convopt's own kernels and passes work op by op in eager mode; inductor (torch.compile) and ONNX Runtime
run the whole graph. Where one of them wins on this machine, the honest answer is to use it: the
optimizer then records BackendConfig("inductor" | "onnxruntime") in the recipe, and `convopt.load`
returns the model wrapped so that it is compiled or exported on its first inference call.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from convopt.errors import ConfigError
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform

BACKENDS = ("eager", "inductor", "onnxruntime")


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


class OnnxRuntimeModule(nn.Module):
    """`model` exported to ONNX and run by ONNX Runtime's CPU provider (built on the first inference call).

    Training (grad mode) runs the eager `model`; the wrapped model is the submodule `model`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._session: Any = None
        self._key: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"], state["_key"] = None, None
        return state

    def build(self, *args: torch.Tensor) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        # Idle ORT threads would otherwise spin and steal the cores from whatever runs next (e.g. the
        # PyTorch candidates timed in the same interleaved rounds).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with tempfile.TemporaryDirectory(prefix="convopt-onnx-") as folder:  # the session keeps its own copy
            export_onnx(self.model, args, Path(folder) / "model.onnx")
            self._session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options,
                                                 providers=["CPUExecutionProvider"])  # fmt: skip
        self._key = weights_key(self.model)

    def forward(self, *args: torch.Tensor) -> Any:
        if torch.is_grad_enabled():
            return self.model(*args)
        if self._session is None or weights_key(self.model) != self._key:  # weights are baked into the export
            self.build(*args)
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(self._session.get_inputs(), args)}
        outputs = [torch.from_numpy(o) for o in self._session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def weights_key(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and version of every parameter and buffer: changes on any in-place update or replacement."""
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))


class InductorModule(nn.Module):
    """`model` compiled by torch.compile (inductor, weights frozen for inference) on first use.

    The wrapped model is the submodule `model`, so parameters keep their names under `model.`.
    """

    def __init__(self, model: nn.Module, compiled: Callable[..., Any] | None = None):
        super().__init__()
        self.model = model
        self._compiled = compiled
        self._key = weights_key(model) if compiled is not None else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"], state["_key"] = None, None  # compiled code is rebuilt, never copied or pickled
        return state

    def forward(self, *args: Any) -> Any:
        import torch._inductor.config as inductor_config

        if torch.is_grad_enabled():  # freezing is an inference-only optimisation: train through eager
            return self.model(*args)
        key = weights_key(self.model)
        with inductor_config.patch(freezing=True):
            if self._compiled is None or key != self._key:  # frozen weights are constants: recompile
                torch._dynamo.reset()
                self._compiled, self._key = torch.compile(self.model), key
            return self._compiled(*args)


@dataclass(frozen=True)
class BackendConfig(TransformConfig):
    """Execute the model with `backend`: "eager" (no change) or "inductor" (torch.compile with freezing)."""

    backend: str = "inductor"
    rewrites_graph: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}: use one of {BACKENDS}")


@register_transform(BackendConfig)
def use_backend(model: nn.Module, config: BackendConfig, context: TransformContext) -> tuple[nn.Module, StepRecord]:
    record = StepRecord(config.to_dict())
    if config.backend == "eager":
        return model, record
    if config.backend == "onnxruntime":
        record.changed["*"] = "exported to ONNX and run by ONNX Runtime (CPU) from the first call"
        return OnnxRuntimeModule(model), record
    record.changed["*"] = "compiled by torch.compile (inductor, freezing) on first call"
    return InductorModule(model), record
