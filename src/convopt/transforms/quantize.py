"""Int8Config: calibrate and run the model through the INT8 engine (see transforms/int8_engine.py).

Example:
    >>> import torch, convopt
    >>> from convopt.data import load_mnist
    >>> from convopt.models import default_model
    >>> x, _ = load_mnist("train")
    >>> fast, report = convopt.apply(default_model(), convopt.Int8Config(), calibration=x[:256])  # doctest: +SKIP
    >>> fast.engine in ("openvino", "onnxruntime")  # doctest: +SKIP
    True

The handler needs calibration data (`apply(..., calibration=...)`: a tensor (N, ...) or an iterable of
batches). INT8 changes outputs by about 1e-2 (relative): with `example_inputs`, pass a `max_rel_error`
that allows it, or judge the result on accuracy (convopt.quantize_flow.quantize_model does).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from convopt.errors import ConfigError
from convopt.kernels.observers import OBSERVERS
from convopt.transforms.config import StepRecord, TransformConfig, TransformContext, register_transform
from convopt.transforms.int8_engine import ENGINES, build_int8_model


@dataclass(frozen=True)
class Int8Config(TransformConfig):
    """Quantize to INT8 and run on the faster measured engine.

    Fields:
        engine: "auto" (time OpenVINO and ONNX Runtime, keep the faster), "openvino" or "onnxruntime".
        observer: activation range observer: minmax, moving_average, percentile, mse or entropy.
        exclude: module names kept in float (e.g. the most sensitive layers found by mixed precision), or
            op points "MODULE:OpType" for an op a module runs itself (e.g. "features.3:Add", a block's residual add).
        calibration_batches: use at most this many calibration batches (None: all that are given).
    """

    engine: str = "auto"
    observer: str = "minmax"
    exclude: tuple[str, ...] = ()
    calibration_batches: int | None = None
    rewrites_graph: ClassVar[bool] = True
    lossy: ClassVar[bool] = True  # judged by accuracy, not by the output-change budget

    def __post_init__(self) -> None:
        if self.engine not in (*ENGINES, "auto"):
            raise ConfigError(f"Int8Config(engine={self.engine!r}): use 'auto' or one of {ENGINES}")
        if self.observer not in OBSERVERS:
            raise ConfigError(f"Int8Config(observer={self.observer!r}): use one of {', '.join(OBSERVERS)}")
        if isinstance(self.exclude, str) or not all(isinstance(n, str) for n in self.exclude):
            raise ConfigError(f"Int8Config(exclude={self.exclude!r}): give a tuple of module names or "
                              "'MODULE:OpType' op points")  # fmt: skip
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.calibration_batches is not None and (not isinstance(self.calibration_batches, int)
                                                     or self.calibration_batches < 1):  # fmt: skip
            raise ConfigError(f"Int8Config(calibration_batches={self.calibration_batches!r}): use None or an int >= 1")
        if self.modules != "*":
            raise ConfigError("Int8Config(modules=...) is not supported: list the layers to keep in float in exclude=")


@register_transform(Int8Config)
def quantize_int8(model: nn.Module, config: Int8Config, context: TransformContext) -> tuple[nn.Module, StepRecord]:
    if context.calibration is None:
        raise ConfigError("Int8Config needs calibration data: convopt.apply(model, Int8Config(), calibration=x) with "
                          "x a tensor (N, ...) or an iterable of batches of representative inputs")  # fmt: skip
    calibration = context.calibration
    if config.calibration_batches is not None:
        from convopt.transforms.int8_engine import calibration_batches

        calibration = list(itertools.islice(calibration_batches(calibration), config.calibration_batches))
    shape = tuple(context.example_inputs[0].shape) if context.example_inputs else None
    build = build_int8_model(model, calibration, exclude=frozenset(config.exclude), engine=config.engine,
                             calibrate_method=config.observer, input_shape=shape)  # fmt: skip
    record = StepRecord(config.to_dict())
    times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in build.engine_times_ms.items())
    record.changed["*"] = f"INT8 engine {build.engine} ({times}; {build.calibration_samples} calibration samples)"
    record.skipped.update(build.excluded)
    record.notes.extend(build.notes)
    context.log(record.changed["*"])
    return build.module, record


__all__ = ["Int8Config"]
