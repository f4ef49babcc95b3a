"""Typed errors. Every message names the offending values and what to do instead."""

from __future__ import annotations


class ConvoptError(Exception):
    """Base class of every error convopt raises on purpose (the CLI turns these into exit code 2)."""


class InvalidSpecError(ConvoptError, ValueError):
    """Convolution hyper-parameters or call arguments (dtypes, devices, bias shape) that PyTorch would reject."""


class ModelLoadError(ConvoptError):
    """A MODEL argument that names nothing loadable, or loads into something that is not a model."""


class InputShapeError(ConvoptError, ValueError):
    """An input shape that is malformed, or that the model rejects (the message names the layer)."""


class HardwareProfileError(ConvoptError):
    """The hardware microbenchmarks could not run or gave no usable figure."""


class UnsupportedConvError(ConvoptError, NotImplementedError):
    """A convolution algorithm cannot compute this (spec, dtype); the message says why and what can."""


class BudgetExceededError(ConvoptError):
    """A transform changed the model's outputs by more than the allowed error or accuracy budget."""


class UntraceableModelError(ConvoptError):
    """A graph pass needs torch.fx tracing and the model (the message names the module) cannot be traced."""


class ConfigError(ConvoptError, ValueError):
    """A transform config or recipe file that is invalid; the message names the field and the fix."""


class UnsupportedLayerError(ConvoptError, NotImplementedError):
    """An analysis (interval bounds, ...) meets a layer or graph node it cannot handle; the message names it."""


class CalibrationError(ConvoptError, ValueError):
    """Calibration data that cannot calibrate the model: an empty set, or a batch whose shape the model rejects."""
