"""Replay a changed architecture: which submodules a compression step replaced, and with what.

Structured pruning and decomposition choose shapes from the weights (channel importance, singular-value
energy) and from data, so replaying the step on a freshly built architecture would not reproduce them.
`StructureConfig.capture(original, compressed)` records every replaced or resized layer as a small
JSON description (type and constructor arguments, nested for containers); its handler rebuilds exactly
those modules, after which the saved weights load strictly. Only an allow-list of layer types can be
described, so a recipe never names arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from convopt.errors import ConfigError
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_STATELESS = (nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid, nn.Flatten)
_CONTAINERS = (nn.Sequential,)
ALLOWED = {cls.__name__: cls for cls in _CONVS + _NORMS + _STATELESS + _CONTAINERS + (nn.Linear,)}


def describe(module: nn.Module) -> dict[str, Any]:
    """A JSON description from which `build` makes a module of the same type and shapes."""
    kind = type(module).__name__
    if ALLOWED.get(kind) is not type(module):
        raise ConfigError(f"cannot record a {kind} in a recipe (allowed: {', '.join(sorted(ALLOWED))})")
    if isinstance(module, _CONVS):
        args = {k: getattr(module, k) for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                                  "dilation", "groups", "padding_mode")}  # fmt: skip
        if module.transposed:
            args["output_padding"] = module.output_padding
            args.pop("padding_mode")
        args["bias"] = module.bias is not None
    elif isinstance(module, _NORMS):
        args = {"num_features": module.num_features, "eps": module.eps, "momentum": module.momentum,
                "affine": module.affine, "track_running_stats": module.track_running_stats}  # fmt: skip
    elif isinstance(module, nn.Linear):
        args = {"in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}
    elif isinstance(module, nn.Sequential):
        return {"type": kind, "children": [[name, describe(child)] for name, child in module.named_children()]}
    else:
        args = {}
        if isinstance(module, nn.Flatten):
            args = {"start_dim": module.start_dim, "end_dim": module.end_dim}
        elif hasattr(module, "inplace"):
            args = {"inplace": module.inplace}
    return {"type": kind, "args": {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}}


def build(description: dict[str, Any]) -> nn.Module:
    kind = description.get("type")
    if kind not in ALLOWED:
        raise ConfigError(f"recipe names layer type {kind!r}, which is not on the allow-list {sorted(ALLOWED)}")
    if kind == "Sequential":
        from collections import OrderedDict

        return nn.Sequential(OrderedDict((name, build(child)) for name, child in description["children"]))
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in description.get("args", {}).items()}
    try:
        return ALLOWED[kind](**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"recipe layer {kind}({args}) cannot be built: {exc}") from exc


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@dataclass(frozen=True)
class StructureConfig(TransformConfig):
    """Replace the named submodules by rebuilt ones: {qualified name: description from `describe`}."""

    layers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layers, dict) or not all(isinstance(k, str) and k for k in self.layers):
            raise ConfigError("StructureConfig(layers=...) needs {module name: description}; use StructureConfig.capture")
        for description in self.layers.values():
            build(description)  # validates types and arguments now, not at load time

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.layers)))

    @classmethod
    def capture(cls, original: nn.Module, changed: nn.Module) -> "StructureConfig":
        """The outermost submodules of `changed` whose type or shapes differ from `original`'s."""
        before = dict(original.named_modules())
        layers: dict[str, Any] = {}
        for name, module in changed.named_modules():
            if not name or any(name.startswith(f"{done}.") for done in layers):
                continue
            old = before.get(name)
            if type(module).__name__ not in ALLOWED:
                if old is None or type(old) is not type(module):
                    raise ConfigError(f"{name}: a new {type(module).__name__} cannot be recorded in a recipe")
                continue
            if old is None or type(old) is not type(module) or _description_or_none(old) != describe(module):
                layers[name] = describe(module)
        return cls(layers=layers)


def _description_or_none(module: nn.Module) -> dict[str, Any] | None:
    try:
        return describe(module)
    except ConfigError:
        return None


@register_transform(StructureConfig)
def restructure(model: nn.Module, config: StructureConfig, context: TransformContext) -> StepRecord:
    record = StepRecord(config.to_dict())
    for name, description in config.layers.items():
        try:
            _set(model, name, build(description).train(model.training))
        except AttributeError as exc:
            raise ConfigError(f"StructureConfig: the model has no parent module for {name!r}") from exc
        record.changed[name] = f"rebuilt as {description['type']}"
    return record
