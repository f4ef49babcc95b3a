"""Run selected convolutions with a chosen algorithm (AlgoConv wrappers that share the original parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from convopt.errors import ConfigError, UnsupportedConvError
from convopt.kernels.registry import ALGORITHMS
from convopt.nn.conv import from_conv
from convopt.transforms.config import (
    StepRecord, TransformConfig, TransformContext, named_selected, register_transform, set_submodule,
)  # fmt: skip


@dataclass(frozen=True)
class AlgorithmConfig(TransformConfig):
    """Compute selected nn.Conv1d/2d/3d layers with `algorithm` (a registered name or "auto").

    Layers the algorithm cannot compute keep PyTorch's conv, and the report says why for each one.
    """

    algorithm: str = "auto"

    def __post_init__(self) -> None:
        if self.algorithm != "auto" and self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm={self.algorithm!r}: use 'auto' or one of {', '.join(ALGORITHMS)}")


@register_transform(AlgorithmConfig)
def use_algorithm(model: nn.Module, config: AlgorithmConfig, context: TransformContext) -> StepRecord:
    record = StepRecord(config.to_dict())
    for name, conv in named_selected(model, config, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        try:
            wrapped = from_conv(conv, config.algorithm)
        except UnsupportedConvError as exc:
            record.skipped[name] = str(exc)
            continue
        set_submodule(model, name, wrapped)
        record.changed[name] = wrapped.algorithm.name
    return record
