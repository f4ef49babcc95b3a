"""Numerics, accuracy and robustness of a candidate model against its reference (`convopt verify`).

Read-only consumers of models: nothing here changes a model's parameters or mode.
"""

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
