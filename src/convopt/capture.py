"""What chosen layers see in one forward pass: hooks record each one's first input and output, then go."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def capture_layers(model: nn.Module, names: Iterable[str], inputs: tuple[Any, ...]
                   ) -> dict[str, tuple[torch.Tensor, Any]]:  # fmt: skip
    """{name: (first positional input, output)} of each named submodule on its first call during one
    `model(*inputs)` under no_grad. The tensors are clones: a later in-place op (ReLU(inplace=True), `+=`)
    must not alter what was seen. Modules not called are absent.

    Raises:
        AttributeError: a name is no submodule of `model` (callers say which model they expected).
    """
    seen: dict[str, tuple[torch.Tensor, Any]] = {}
    modules = [(name, model.get_submodule(name)) for name in names]

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, args: tuple, output: Any) -> None:  # None: the output stays as is
            if name not in seen:
                kept = output.detach().clone() if isinstance(output, torch.Tensor) else output
                seen[name] = (args[0].detach().clone(), kept)

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen
