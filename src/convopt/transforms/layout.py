"""Memory layout per model: NCHW (contiguous) or channels_last (NHWC), chosen by measurement.

oneDNN runs 1x1 and depthwise convs much faster in channels_last (REFERENCES.md s.5: 84% vs 45% of
peak on 1x1), while some layers prefer NCHW; since converting between layouts costs a full copy, the
choice is made once per model. Weights are converted in place; activations follow, because PyTorch's
convolution produces the layout of its weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convopt.errors import ConfigError
from convopt.timing import interleaved_times
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform

FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class LayoutConfig(TransformConfig):
    """Convert the model to `memory_format`; "auto" times both on the example inputs and keeps the faster."""

    memory_format: str = "auto"
    repeats: int = 5

    def __post_init__(self) -> None:
        if self.memory_format not in FORMATS:
            raise ConfigError(f"memory_format={self.memory_format!r}: use one of {FORMATS}")


def convert_layout(model: nn.Module, memory_format: str) -> nn.Module:
    """Convert every 4-D/5-D parameter and buffer to channels_last(_3d), or all back to contiguous, in place.

    Per tensor rank, so a model mixing 2-D and 3-D convs converts cleanly.
    """
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for tensor in table.values():
                if tensor is None:
                    continue
                if memory_format == "channels_last":
                    target = {4: torch.channels_last, 5: torch.channels_last_3d}.get(tensor.dim())
                else:
                    target = torch.contiguous_format
                if target is not None and not tensor.is_contiguous(memory_format=target):
                    tensor.data = tensor.data.contiguous(memory_format=target)
    return model


@register_transform(LayoutConfig)
def choose_layout(model: nn.Module, config: LayoutConfig, context: TransformContext) -> StepRecord:
    record = StepRecord(config.to_dict())
    choice = config.memory_format
    if choice == "auto":
        if not context.example_inputs:
            raise ConfigError("LayoutConfig('auto') measures the model: pass example_inputs, or name a format")
        times = {}
        for candidate in ("contiguous", "channels_last"):
            convert_layout(model, candidate)
            times[candidate] = interleaved_times({candidate: lambda: model(*context.example_inputs)},
                                                 repeats=config.repeats)[candidate].median_s  # fmt: skip
        choice = min(times, key=times.get)
        record.notes.append(", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items()) + f": chose {choice}")
    convert_layout(model, choice)
    record.changed["*"] = choice
    return record
