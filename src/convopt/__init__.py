"""convopt: make the convolutional layers of PyTorch models fast, small and trustworthy.

Units everywhere: one MAC is one multiply-accumulate; FLOPs = 2 x MACs.
"""

from convopt.analysis.cost import CostReport, LayerCost
from convopt.analysis.hardware import HardwareProfile
from convopt.api import analyze, example_input
from convopt.errors import (
    ConvoptError, HardwareProfileError, InputShapeError, InvalidSpecError, ModelLoadError, UnsupportedConvError,
)  # fmt: skip
from convopt.kernels import conv, list_algorithms
from convopt.spec import ConvSpec

__version__ = "0.1.0"

__all__ = [
    "ConvSpec", "conv", "list_algorithms", "CostReport", "LayerCost", "HardwareProfile", "analyze", "example_input",
    "ConvoptError", "HardwareProfileError", "InputShapeError", "InvalidSpecError", "ModelLoadError",
    "UnsupportedConvError",
]  # fmt: skip
