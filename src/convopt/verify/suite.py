"""verify_models: one call that runs every requested check of a candidate against its reference."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from convopt.errors import ConvoptError, UnsupportedLayerError
from convopt.verify.accuracy import evaluate_accuracy
from convopt.verify.attacks import ATTACKS, NORMS, robust_accuracy_curve
from convopt.verify.bounds import ibp_certify
from convopt.verify.numerics import DEFAULT_MIN_SQNR_DB, compare_numerics
from convopt.verify.profile import profile_model
from convopt.verify.report import VerifyReport
from convopt.verify.smoothing import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, smoothing_certify


@dataclass(frozen=True)
class VerifyConfig:
    """What `verify_models` checks, and how hard. Each part runs on the first samples of the data.

    Defaults: numerics and accuracy always; attacks, smoothing, IBP and profiling only when asked for.
    Smoothing uses Cohen et al.'s n0 = 100, n = 100,000, alpha = 0.001 unless told otherwise.
    """

    max_samples: int = 1000  # numerics and accuracy
    batch_size: int = 128
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB
    attacks: tuple[str, ...] = ()
    eps: tuple[float, ...] = (0.01, 0.03, 0.1)
    norm: str = "inf"
    pgd_steps: int = 10
    pgd_step_size: float | None = None  # None: 2.5 eps / steps
    restarts: int = 1
    surrogate: bool = False  # attack the candidate with the reference's gradients
    attack_samples: int = 256
    smoothing_sigma: float | None = None
    smoothing_n0: int = DEFAULT_N0
    smoothing_n: int = DEFAULT_N
    smoothing_alpha: float = DEFAULT_ALPHA
    smoothing_samples: int = 10  # each costs n0 + n forward passes per model
    ibp_eps: float | None = None
    ibp_samples: int = 256
    profile: bool = False
    profile_repeats: int = 5
    trace_path: str | None = None  # the candidate's Chrome trace; the reference's gets '.reference' inserted
    valid_range: tuple[float, float] | None = (0.0, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_samples", "batch_size", "pgd_steps", "restarts", "attack_samples", "smoothing_n0",
                     "smoothing_n", "smoothing_samples", "ibp_samples", "profile_repeats"):  # fmt: skip
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConvoptError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ConvoptError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        if self.norm not in NORMS:
            raise ConvoptError(f"norm {self.norm!r}: expected one of {', '.join(NORMS)}")
        if self.attacks and (not self.eps or any(not e >= 0 for e in self.eps)):
            raise ConvoptError(f"eps {self.eps!r}: attacks need one or more non-negative radii, e.g. 0.01,0.03,0.1")
        if self.smoothing_sigma is not None and not self.smoothing_sigma > 0:
            raise ConvoptError(f"smoothing sigma {self.smoothing_sigma!r}: expected a positive noise level")
        if not 0 < self.smoothing_alpha < 1:
            raise ConvoptError(f"smoothing alpha {self.smoothing_alpha!r}: expected a probability in (0, 1)")
        if self.ibp_eps is not None and not self.ibp_eps >= 0:
            raise ConvoptError(f"ibp eps {self.ibp_eps!r}: expected a non-negative radius")
        if self.valid_range is not None and not self.valid_range[0] < self.valid_range[1]:
            raise ConvoptError(f"valid_range {self.valid_range!r}: expected (low, high) with low < high")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["attacks"], data["eps"] = list(self.attacks), list(self.eps)
        data["valid_range"] = list(self.valid_range) if self.valid_range else None
        return data


def as_tensors(data: Any, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a pair of tensors or from an iterable of (x, y) batches (a DataLoader), at most `limit`."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, Iterable):
        xs, ys, count = [], [], 0
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise ConvoptError("data batches must be (inputs, labels) pairs")
            xs.append(batch[0])
            ys.append(torch.as_tensor(batch[1]))
            count += len(batch[0])
            if count >= limit:
                break
        if not xs:
            raise ConvoptError("the data set is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ConvoptError(f"data of type {type(data).__name__}: pass (x, y) tensors or a DataLoader of (x, y)")
    if len(x) != len(y):
        raise ConvoptError(f"{len(x)} inputs but {len(y)} labels; pass one label per input")
    return x[:limit], y[:limit].long()


def _trace_for(role: str, path: str | None) -> str | None:
    if path is None or role == "candidate":
        return path
    target = Path(path)
    return str(target.with_name(f"{target.stem}.reference{target.suffix or '.json'}"))


def verify_models(
    reference: nn.Module,
    candidate: nn.Module,
    data: Any,
    config: VerifyConfig | None = None,
    *,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    data_name: str = "tensors",
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Numerics, accuracy and (as configured) attacks, randomized smoothing, IBP and profiling.

    Args:
        reference, candidate: models in eval mode taking the same inputs and returning (N, classes) logits.
        data: (x, y) tensors or a DataLoader of (x, y) batches; inputs in `config.valid_range`.
        config: a VerifyConfig (defaults: numerics and accuracy on up to 1000 samples).
        progress: called with a short description before each stage.

    Example:
        >>> import torch
        >>> from convopt.models import default_model
        >>> model = default_model()
        >>> report = verify_models(model, model, (torch.rand(8, 1, 28, 28), torch.arange(8)))
        >>> report.numerics.first_failing is None
        True
    """
    config = config or VerifyConfig()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    x, y = as_tensors(data, config.max_samples)
    models = {"reference": reference, "candidate": candidate}
    report = VerifyReport(reference_name, candidate_name, data_name, len(x), config.valid_range,
                          config=config.to_dict())
    say("accuracy")
    report.accuracy = evaluate_accuracy(reference, candidate, x, y, batch_size=config.batch_size)
    say("layer numerics")
    report.numerics = compare_numerics(reference, candidate, x, batch_size=min(config.batch_size, 64),
                                       min_sqnr_db=config.min_sqnr_db)  # fmt: skip
    for role, model in models.items():
        _robustness(report, role, model, reference, x, y, config, say)
    if config.profile:
        for role, model in models.items():
            say(f"profiling the {role}")
            report.profile[role] = profile_model(model, x[: config.batch_size], repeats=config.profile_repeats,
                                                 trace_path=_trace_for(role, config.trace_path))  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def _robustness(report: VerifyReport, role: str, model: nn.Module, reference: nn.Module, x: torch.Tensor,
                y: torch.Tensor, config: VerifyConfig, say: Callable[[str], None]) -> None:  # fmt: skip
    surrogate = reference if (config.surrogate and role == "candidate") else None
    xa, ya = x[: config.attack_samples], y[: config.attack_samples]
    for attack in config.attacks:
        say(f"{attack} on the {role}")
        curve = robust_accuracy_curve(model, xa, ya, config.eps, attack=attack, norm=config.norm,
                                      steps=config.pgd_steps, step_size=config.pgd_step_size,
                                      restarts=config.restarts, valid_range=config.valid_range, surrogate=surrogate,
                                      batch_size=config.batch_size, seed=config.seed)  # fmt: skip
        report.attacks.setdefault(role, []).append(curve)
        report.warnings.extend(f"{role}: {warning}" for warning in curve.warnings)
    if config.smoothing_sigma is not None:
        say(f"randomized smoothing of the {role}")
        count = config.smoothing_samples
        report.smoothing[role] = smoothing_certify(
            model, x[:count], y[:count], config.smoothing_sigma, n0=config.smoothing_n0, n=config.smoothing_n,
            alpha=config.smoothing_alpha, batch_size=config.batch_size, seed=config.seed)
    if config.ibp_eps is not None:
        say(f"interval bounds of the {role}")
        count = config.ibp_samples
        try:
            report.ibp[role] = ibp_certify(model, x[:count], y[:count], config.ibp_eps,
                                           input_range=config.valid_range, batch_size=min(config.batch_size, 64))
        except UnsupportedLayerError as exc:  # reported, not hidden: the other model may still be bounded
            report.warnings.append(f"{role}: no interval bounds: {exc}")


__all__ = ["VerifyConfig", "as_tensors", "verify_models"]
