"""Model transforms: one Config dataclass plus one registered handler per file."""

from convopt.transforms.algorithm import AlgorithmConfig
from convopt.transforms.backend import BackendConfig
from convopt.transforms.config import (
    Compose, StepRecord, TransformConfig, TransformContext, TransformReport, config_from_dict, config_from_json, config_to_json,
    register_transform,
)  # fmt: skip
from convopt.transforms.fold_bn import FoldBatchNormConfig
from convopt.transforms.fuse import FuseConfig
from convopt.transforms.layout import LayoutConfig

__all__ = [
    "AlgorithmConfig", "BackendConfig", "Compose", "FoldBatchNormConfig", "FuseConfig", "LayoutConfig", "StepRecord", "TransformConfig", "TransformContext",
    "TransformReport", "config_from_dict", "config_from_json", "config_to_json", "register_transform",
]  # fmt: skip
