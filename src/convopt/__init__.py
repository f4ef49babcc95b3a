"""convopt: make the convolutional layers of PyTorch models fast, small and trustworthy.

Units everywhere: one MAC is one multiply-accumulate; FLOPs = 2 x MACs.
"""

from convopt.analysis.cost import CostReport, LayerCost
from convopt.analysis.hardware import HardwareProfile
from convopt import verify  # a callable package: convopt.verify(reference, candidate, data)
from convopt.api import analyze, apply, apply_, example_input
from convopt.artifacts import load
from convopt.errors import (
    BudgetExceededError, CalibrationError, ConfigError, ConvoptError, HardwareProfileError, InputShapeError, InvalidSpecError,
    ModelLoadError, UnsupportedConvError, UntraceableModelError,
)  # fmt: skip
from convopt.kernels import conv, list_algorithms
from convopt.spec import ConvSpec
from convopt.transforms import (
    AlgorithmConfig, BackendConfig, Compose, DecomposeConfig, DistillConfig, FoldBatchNormConfig, FuseConfig,
    Int8Config, LayoutConfig, PruneConfig, StructureConfig, TransformConfig, TransformReport,
)  # fmt: skip
from convopt.training import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "ConvSpec", "conv", "list_algorithms", "load", "verify", "analyze", "apply", "apply_", "example_input",
    "CostReport", "LayerCost", "HardwareProfile", "TransformConfig", "TransformReport", "Compose",
    "AlgorithmConfig", "BackendConfig", "FoldBatchNormConfig", "FuseConfig", "LayoutConfig",
    "PruneConfig", "DecomposeConfig", "DistillConfig", "Int8Config", "StructureConfig", "TrainConfig",
    "ConvoptError", "BudgetExceededError", "CalibrationError", "ConfigError", "HardwareProfileError", "InputShapeError",
    "InvalidSpecError", "ModelLoadError", "UnsupportedConvError", "UntraceableModelError",
]  # fmt: skip
