"""An optimized model on disk: DIR/model.safetensors + DIR/recipe.json (+ reports and exports).

The recipe names where the original architecture comes from (a MODEL argument as `analyze` takes it)
and the transform configs that were applied. `load(DIR)` rebuilds the architecture, replays the
configs to get the same module structure, then loads the saved tensors strictly. A directory is
written next to its destination and renamed into place, so DIR is never left half-written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file
from torch import nn

from convopt.errors import ConvoptError, ModelLoadError
from convopt.loading import load_model
from convopt.transforms.config import Compose, TransformConfig, config_from_dict
from convopt.transforms.int8_engine import Int8Module
from convopt.transforms.pipeline import apply, flatten_steps
from convopt.transforms.quantize import Int8Config

RECIPE_VERSION = 1
WEIGHTS_FILE, RECIPE_FILE, ORIGINAL_FILE = "model.safetensors", "recipe.json", "original.safetensors"
INT8_FILE = "model.int8.onnx"  # an INT8 model's engine graph (QDQ ONNX); model.safetensors holds its float weights


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _staging_dir(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise ConvoptError(f"--out {out}: cannot write there ({exc.strerror})") from exc


def check_writable(out: Path) -> None:
    """Raise now if `out` cannot become a convopt output folder (a file, a foreign folder, no permission)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RECIPE_FILE).exists())):
        raise ConvoptError(f"--out {out} exists and is not a convopt output folder; choose another path")
    shutil.rmtree(_staging_dir(out))


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        check_writable(out)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _save_state(model: nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))


def save_optimized(model: nn.Module, out: str | Path, *, source: str | None, input_shape: list[int],
                   config: TransformConfig, original: nn.Module | None = None,
                   extra_files: dict[str, Callable[[Path], Any]] | None = None,
                   recipe_extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write model.safetensors, recipe.json and any `extra_files` ({name: writer(path)}) into `out`, atomically.

    With `original`, its weights go to original.safetensors, so `convopt verify DIR` can compare the
    result with exactly the model it came from (random or user weights cannot be rebuilt otherwise).
    """
    out = Path(out)
    staging = _staging_dir(out)
    try:
        _save_state(model, staging / WEIGHTS_FILE)
        if original is not None:
            _save_state(original, staging / ORIGINAL_FILE)
        recipe = {
            "version": RECIPE_VERSION,
            "source": source or "",
            "input_shape": list(input_shape),
            "config": config.to_dict(),
            "weights_sha256": sha256_of(staging / WEIGHTS_FILE),
            **(recipe_extra or {}),
        }
        if isinstance(model, Int8Module):
            (staging / INT8_FILE).write_bytes(model.onnx_bytes)
            recipe["int8"] = {"onnx": INT8_FILE, "onnx_sha256": sha256_of(staging / INT8_FILE), "engine": model.engine}
        (staging / RECIPE_FILE).write_text(json.dumps(recipe, indent=2), encoding="utf-8")
        for name, writer in (extra_files or {}).items():
            writer(staging / name)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_recipe(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory} is not a convopt output folder (no {RECIPE_FILE})")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if recipe.get("version") != RECIPE_VERSION:
        raise ModelLoadError(f"{path}: recipe version {recipe.get('version')!r} is not {RECIPE_VERSION}")
    return recipe


def _architecture(recipe: dict[str, Any], directory: Path, trust_code: bool) -> nn.Module:
    """Rebuild the recipe's architecture; a source that is Python code runs only when trusted."""
    source = recipe["source"] or ""
    if source and not source.startswith("torchvision:") and not trust_code and not Path(source).suffix in (".pt2",):
        raise ModelLoadError(
            f"{directory / RECIPE_FILE} names code to run ({source!r}); pass trust_code=True (CLI: --trust-code) "
            "only for folders you made yourself"
        )
    return load_model(source or None).model


def load_original(directory: str | Path, *, trust_code: bool = False) -> nn.Module:
    """The model an optimize output folder was made from, with its original weights (eval mode)."""
    directory = Path(directory)
    recipe = read_recipe(directory)
    weights = directory / ORIGINAL_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{directory} has no {ORIGINAL_FILE}: name the reference model explicitly")
    model = _architecture(recipe, directory, trust_code)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def is_output_folder(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / RECIPE_FILE).is_file()


def load(directory: str | Path, *, trust_code: bool = False) -> nn.Module:
    """The optimized model saved in `directory` by `convopt optimize --out`, ready for inference (eval mode).

    The recipe names where the architecture comes from. The embedded default, torchvision models and
    .pt2 programs load as they are; a Python file or module (file.py:callable) is code, and runs only
    with `trust_code=True`, for folders you made yourself.

    Example:
        >>> import convopt
        >>> model = convopt.load("out/")  # doctest: +SKIP
    """
    directory = Path(directory)
    recipe = read_recipe(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{directory} has no {WEIGHTS_FILE}")
    if sha256_of(weights) != recipe.get("weights_sha256"):
        raise ModelLoadError(f"{weights} does not match the hash in {RECIPE_FILE}: the folder was modified")
    if "int8" in recipe:
        return _load_int8(directory, recipe, trust_code)
    model, _ = apply(_architecture(recipe, directory, trust_code), config_from_dict(recipe["config"]))
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{weights} does not fit the rebuilt architecture: {str(exc).splitlines()[0]}") from exc
    return model.eval()


def _load_int8(directory: Path, recipe: dict[str, Any], trust_code: bool) -> nn.Module:
    """The saved INT8 model: the recipe's float steps replayed (no recalibration), its saved engine graph."""
    int8 = recipe["int8"]
    path = directory / INT8_FILE
    if int8.get("onnx") != INT8_FILE or not path.is_file():
        raise ModelLoadError(f"{directory} has no {INT8_FILE} (the INT8 engine graph its recipe names)")
    if sha256_of(path) != int8.get("onnx_sha256"):
        raise ModelLoadError(f"{path} does not match the hash in {RECIPE_FILE}: the folder was modified")
    steps = [s for s in flatten_steps(config_from_dict(recipe["config"])) if not isinstance(s, Int8Config)]
    float_model, _ = apply(_architecture(recipe, directory, trust_code), Compose(steps))
    model = Int8Module(float_model, path.read_bytes(), int8.get("engine", ""))
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{directory / WEIGHTS_FILE} does not fit the rebuilt architecture: "
                             f"{str(exc).splitlines()[0]}") from exc  # fmt: skip
    return model.eval()
