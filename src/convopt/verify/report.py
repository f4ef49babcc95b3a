"""VerifyReport: everything `convopt verify` measured, as data (renderers live in convopt.report)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from convopt.verify.accuracy import AccuracyReport
from convopt.verify.attacks import AttackCurve
from convopt.verify.bounds import IBPReport
from convopt.verify.numerics import NumericsReport
from convopt.verify.profile import ProfileReport
from convopt.verify.smoothing import SmoothingReport

ROLES = ("reference", "candidate")


@dataclass
class VerifyReport:
    """Numerics, accuracy and robustness of a candidate model against its reference.

    The per-model parts (attacks, smoothing, ibp, profile) are keyed by role: "reference" / "candidate".
    """

    reference: str
    candidate: str
    data: str
    num_samples: int
    valid_range: tuple[float, float] | None
    numerics: NumericsReport | None = None
    accuracy: AccuracyReport | None = None
    attacks: dict[str, list[AttackCurve]] = field(default_factory=dict)
    smoothing: dict[str, SmoothingReport] = field(default_factory=dict)
    ibp: dict[str, IBPReport] = field(default_factory=dict)
    profile: dict[str, ProfileReport] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """No layer broke the numerics tolerance (True when numerics were not run)."""
        return self.numerics is None or self.numerics.first_failing is None

    def to_dict(self) -> dict[str, Any]:
        def per_role(parts: dict[str, Any]) -> dict[str, Any]:
            return {role: part.to_dict() for role, part in parts.items()}

        return _json_safe({
            "reference": self.reference, "candidate": self.candidate, "data": self.data,
            "num_samples": self.num_samples, "valid_range": list(self.valid_range) if self.valid_range else None,
            "passed": self.passed,
            "numerics": self.numerics.to_dict() if self.numerics else None,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "attacks": {role: [c.to_dict() for c in curves] for role, curves in self.attacks.items()},
            "smoothing": per_role(self.smoothing), "ibp": per_role(self.ibp), "profile": per_role(self.profile),
            "config": dict(self.config), "warnings": list(self.warnings), "notes": list(self.notes),
            "seconds": self.seconds,
        })  # fmt: skip


def _json_safe(value: Any) -> Any:
    """Non-finite floats (an exact layer's SQNR is inf) become the strings "inf", "-inf", "nan": strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


__all__ = ["ROLES", "VerifyReport"]
