"""Numerics, accuracy and robustness of a candidate model against its reference (`convopt verify`).

Read-only consumers of models: nothing here changes a model's parameters or mode.
"""

import sys
import types

from convopt.verify.accuracy import AccuracyReport, ModelAccuracy, evaluate_accuracy, predict_logits
from convopt.verify.attacks import AttackCurve, AttackPoint, fgsm, pgd, robust_accuracy_curve
from convopt.verify.bounds import IBPReport, certified_by_bounds, ibp_certify, interval_bounds
from convopt.verify.numerics import LayerNumerics, NumericsReport, compare_numerics
from convopt.verify.profile import LayerTime, ProfileReport, profile_model
from convopt.verify.report import VerifyReport
from convopt.verify.smoothing import (
    ABSTAIN, SmoothingReport, certified_accuracy_curve, certify, lower_confidence_bound, predict, smoothing_certify,
)  # fmt: skip
from convopt.verify.suite import VerifyConfig, as_tensors, verify_models

__all__ = [
    "ABSTAIN", "AccuracyReport", "AttackCurve", "AttackPoint", "IBPReport", "LayerNumerics", "LayerTime",
    "ModelAccuracy", "NumericsReport", "ProfileReport", "SmoothingReport", "VerifyConfig", "VerifyReport",
    "as_tensors", "certified_accuracy_curve", "certified_by_bounds", "certify", "compare_numerics",
    "evaluate_accuracy", "fgsm", "ibp_certify", "interval_bounds", "lower_confidence_bound", "pgd", "predict",
    "predict_logits", "profile_model", "robust_accuracy_curve", "smoothing_certify", "verify_models",
]  # fmt: skip


class _CallableModule(types.ModuleType):
    """`convopt.verify` is both this package and the function ARCHITECTURE.md promises:
    `convopt.verify(reference, candidate, data)` runs `verify_models`, while `convopt.verify.interval_bounds`
    and friends stay importable. (A plain function named `verify` would be shadowed by this package the
    moment anything imported `convopt.verify.*`.)"""

    def __call__(self, reference, candidate, data, config=None, **kwargs):
        return verify_models(reference, candidate, data, config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
