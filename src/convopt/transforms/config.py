"""Transform configs and their handlers: frozen dataclasses, a registry from config type to handler, JSON.

A config says *what* to do (`FoldBatchNormConfig()`, `AlgorithmConfig("winograd_f4")`); its registered
handler does it to a model in place and returns what it changed. Configs round-trip through JSON via an
allow-list of registered types, so a recipe file can reproduce an optimization but never name arbitrary
code.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from convopt._registry import Registry
from convopt.errors import ConfigError


@dataclass(frozen=True)
class TransformConfig:
    """Base of every config. `modules` selects which modules (by qualified name, fnmatch pattern) it touches."""

    modules: str = field(default="*", kw_only=True)

    def selects(self, name: str) -> bool:
        return fnmatch.fnmatch(name, self.modules)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and value and isinstance(value[0], TransformConfig):
                value = [step.to_dict() for step in value]
            data[f.name] = value
        return data


@dataclass
class TransformContext:
    """What handlers may need beyond the model: example inputs, calibration data, progress output."""

    example_inputs: tuple[Any, ...] = ()
    calibration: Any = None
    log: Callable[[str], None] = lambda message: None


@dataclass
class StepRecord:
    """What one config did: which modules changed and how (e.g. {'layer1.conv1': 'folded layer1.bn1'})."""

    config: dict[str, Any]
    changed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    max_rel_error: float | None = None
    seconds: float | None = None


@dataclass
class TransformReport:
    """Every step applied, in order, with its measured output change."""

    steps: list[StepRecord] = field(default_factory=list)

    @property
    def max_rel_error(self) -> float | None:
        errors = [s.max_rel_error for s in self.steps if s.max_rel_error is not None]
        return max(errors) if errors else None

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [dataclasses.asdict(s) for s in self.steps], "max_rel_error": self.max_rel_error}


Handler = Callable[[nn.Module, TransformConfig, TransformContext], StepRecord]
CONFIG_TYPES: Registry[type] = Registry("transform config")
HANDLERS: dict[type, Handler] = {}


def register_transform(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: `@register_transform(MyConfig)` on `handler(model, config, context) -> StepRecord`."""

    def wrap(handler: Handler) -> Handler:
        CONFIG_TYPES.register(config_type.__name__, config_type)
        HANDLERS[config_type] = handler
        return handler

    return wrap


@dataclass(frozen=True)
class Compose(TransformConfig):
    """Several configs applied in order; each step is checked before the next runs."""

    steps: tuple[TransformConfig, ...] = ()

    def __init__(self, steps: Any = (), modules: str = "*"):
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "modules", modules)
        if modules != "*":
            raise ConfigError("Compose(modules=...) is not supported: give each step its own modules=... pattern")
        for step in self.steps:
            if not isinstance(step, TransformConfig):
                raise ConfigError(f"Compose takes transform configs, got {type(step).__name__}")


def config_from_dict(data: dict[str, Any]) -> TransformConfig:
    """Rebuild a config from `to_dict()` output; only registered config types are accepted."""
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError(f"a config must be a JSON object with a 'type' key, got {data!r:.80}")
    kind = data["type"]
    if kind == "Compose":
        return Compose([config_from_dict(step) for step in data.get("steps", [])], data.get("modules", "*"))
    if kind not in CONFIG_TYPES:
        raise ConfigError(f"unknown transform config {kind!r}; known: Compose, {', '.join(CONFIG_TYPES)}")
    config_type = CONFIG_TYPES.get(kind)
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = set(data) - known - {"type"}
    if unknown:
        raise ConfigError(f"{kind} has no field(s) {sorted(unknown)}; its fields are {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "type"}
    return config_type(**values)


def config_to_json(config: TransformConfig) -> str:
    return json.dumps(config.to_dict(), indent=2)


def config_from_json(text: str) -> TransformConfig:
    try:
        return config_from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"recipe is not valid JSON: {exc}") from exc


def named_selected(model: nn.Module, config: TransformConfig, types: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs of the given types that the config's `modules` pattern selects."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types) and config.selects(n)]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """max|ref - cand| / max|ref| (0 when both are zero)."""
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    error = float((reference - candidate).abs().max()) if reference.numel() else 0.0
    return error / scale if scale else error
