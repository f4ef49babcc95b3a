"""PruneConfig (structured, unstructured, N:M) and PruneRecord, the per-layer report of one pruning step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from convopt.errors import ConfigError
from convopt.transforms.config import StepRecord, TransformConfig

KINDS = ("structured", "unstructured", "n:m")
CRITERIA = ("l1", "l2", "bn", "taylor")
SCOPES = ("global", "layer")
TARGETS = ("macs", "params", "latency")


@dataclass(frozen=True)
class PruneConfig(TransformConfig):
    """Prune the selected conv/linear layers.

    Attributes:
        kind: "structured" removes whole channels (layers shrink physically); "unstructured" zeroes single
            weights by magnitude; "n:m" keeps the n largest of every m consecutive input channels per tap.
        ratio: in (0, 1). structured: fraction of the `target` cost to REMOVE (0.5 leaves 50% of the MACs);
            unstructured: fraction of weights set to zero; n:m: None or exactly 1 - n/m.
        criterion: "l1", "l2" (weight norms), "bn" (BatchNorm |gamma|, structured only) or "taylor"
            (|w * grad| from labelled calibration batches).
        scope: "global" (one ranking across layers) or "layer" (the same ratio in every layer).
        target: structured only: the cost `ratio` removes -- "macs", "params" or measured "latency".
        n, m: the N:M pattern (2:4 by default).
        round_to: structured only: keep channel counts multiples of this (e.g. 8 for SIMD-friendly widths).
        max_layer_ratio: structured only: at most this fraction of any layer's channels is removed.
    """

    lossy: ClassVar[bool] = True  # judged by accuracy, not by the output-change budget

    kind: str = "structured"
    ratio: float | None = None
    criterion: str = "l1"
    scope: str = "global"
    target: str = "macs"
    n: int = 2
    m: int = 4
    round_to: int = 1
    max_layer_ratio: float = 0.7

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r}: use one of {KINDS}")
        for name, allowed in (("criterion", CRITERIA), ("scope", SCOPES), ("target", TARGETS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: use one of {allowed}")
        if self.kind == "n:m":
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
                raise ConfigError(f"n={self.n}, m={self.m}: N:M pruning needs integers 0 < n < m (2:4 is usual)")
            if self.ratio is not None and abs(self.ratio - (1 - self.n / self.m)) > 1e-12:
                raise ConfigError(
                    f"ratio={self.ratio} contradicts {self.n}:{self.m} (= {1 - self.n / self.m}); omit it"
                )
        elif self.ratio is None:
            raise ConfigError(f"kind={self.kind!r} needs ratio=... in (0, 1), e.g. 0.5")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0 < self.ratio < 1):
            raise ConfigError(f"ratio={self.ratio!r} must lie strictly between 0 and 1 (0.5 removes half)")
        if self.kind != "structured":
            if self.criterion == "bn":
                raise ConfigError("criterion='bn' ranks channels: use it with kind='structured', or use 'l1'")
            if self.target != "macs" or self.round_to != 1:
                raise ConfigError(f"target/round_to apply to kind='structured' only, got kind={self.kind!r}")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise ConfigError(f"round_to={self.round_to!r} must be a positive integer (1 = no rounding)")
        if not 0 < self.max_layer_ratio < 1:
            raise ConfigError(f"max_layer_ratio={self.max_layer_ratio!r} must lie strictly between 0 and 1")

    @property
    def sparsity(self) -> float:
        """Fraction of weights zeroed (unstructured, n:m) or of the cost removed (structured)."""
        return 1 - self.n / self.m if self.kind == "n:m" else float(self.ratio)


def parse_prune_spec(text: str) -> PruneConfig:
    """The CLI form: "structured:0.5", "unstructured:0.8", "2:4" (any "N:M")."""
    kind, _, value = text.partition(":")
    try:
        if kind in ("structured", "unstructured"):
            return PruneConfig(kind=kind, ratio=float(value))
        return PruneConfig(kind="n:m", n=int(kind), m=int(value))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--prune {text!r}: use structured:RATIO, unstructured:RATIO or N:M (e.g. 2:4)") from exc


@dataclass
class PruneRecord(StepRecord):
    """A StepRecord plus per-layer figures: `layers[name]` holds channels, MACs and params before/after
    (structured) or weights, zeros and sparsity (unstructured / N:M)."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    sparsity: float | None = None
    cost_fraction: float | None = None  # structured: the target cost left, as a fraction of the original
