"""Run the whole model through another execution backend when it measured fastest and passed verification.

convopt's own kernels and passes work op by op in eager mode; inductor (torch.compile) generates fused
code for the whole graph. Where inductor wins on this machine, the honest answer is to use it: the
optimizer then records BackendConfig("inductor") in the recipe, and `convopt.load` returns the model
wrapped so that it is compiled (with weight freezing) on its first call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from convopt.errors import ConfigError
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform

BACKENDS = ("eager", "inductor")


class InductorModule(nn.Module):
    """`model` compiled by torch.compile (inductor, weights frozen for inference) on first use.

    The wrapped model is the submodule `model`, so parameters keep their names under `model.`.
    """

    def __init__(self, model: nn.Module, compiled: Callable[..., Any] | None = None):
        super().__init__()
        self.model = model
        self._compiled = compiled

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled code is rebuilt, never copied or pickled
        return state

    def forward(self, *args: Any) -> Any:
        import torch._inductor.config as inductor_config

        if torch.is_grad_enabled():  # freezing is an inference-only optimisation: train through eager
            return self.model(*args)
        with inductor_config.patch(freezing=True):
            if self._compiled is None:
                self._compiled = torch.compile(self.model)
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
    record.changed["*"] = "compiled by torch.compile (inductor, freezing) on first call"
    return InductorModule(model), record
