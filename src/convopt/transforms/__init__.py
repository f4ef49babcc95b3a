"""Model transforms: one Config dataclass plus one registered handler per file."""

from convopt.transforms.algorithm import AlgorithmConfig
from convopt.transforms.backend import BackendConfig
from convopt.transforms.config import (
    Compose, StepRecord, TransformConfig, TransformContext, TransformReport, config_from_dict, config_from_json, config_to_json,
    register_transform,
)  # fmt: skip
from convopt.transforms.decompose import DecomposeConfig
from convopt.transforms.distill import DistillConfig
from convopt.transforms.fold_bn import FoldBatchNormConfig
from convopt.transforms.fuse import FuseConfig
from convopt.transforms.layout import LayoutConfig
from convopt.transforms.prune import PruneConfig, PruneRecord, parse_prune_spec, prune_
from convopt.transforms.prune_schedule import PruneSchedule, prune_iteratively
from convopt.transforms.quantize import Int8Config
from convopt.transforms.restructure import StructureConfig

__all__ = [
    "AlgorithmConfig", "BackendConfig", "Compose", "DecomposeConfig", "DistillConfig", "FoldBatchNormConfig", "FuseConfig",
    "Int8Config", "LayoutConfig", "PruneConfig", "PruneRecord", "PruneSchedule", "StepRecord", "StructureConfig",
    "TransformConfig", "TransformContext", "TransformReport", "config_from_dict", "config_from_json", "config_to_json",
    "parse_prune_spec", "prune_", "prune_iteratively", "register_transform",
]  # fmt: skip
