"""Task accuracy of a reference and a candidate on labelled data, and how often the two agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from convopt.errors import ConvoptError, InputShapeError

Metric = Callable[[torch.Tensor, torch.Tensor], float]  # (logits (N, K), labels (N,)) -> score


@dataclass
class ModelAccuracy:
    top1: float
    topk: float  # top-k accuracy with k = AccuracyReport.k (5, or the number of classes if fewer)
    metric: float | None = None


@dataclass
class AccuracyReport:
    num_samples: int
    k: int
    reference: ModelAccuracy
    candidate: ModelAccuracy
    agreement: float  # fraction of samples on which the two top-1 predictions are equal
    metric_name: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def top1_drop(self) -> float:
        """Reference top-1 minus candidate top-1, in percentage points."""
        return 100.0 * (self.reference.top1 - self.candidate.top1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples, "k": self.k, "agreement": self.agreement,
            "top1_drop_points": self.top1_drop, "metric_name": self.metric_name, "notes": list(self.notes),
            "reference": dict(self.reference.__dict__), "candidate": dict(self.candidate.__dict__),
        }  # fmt: skip


def call_model(model: nn.Module, batch: torch.Tensor, label: str) -> object:
    """model(batch), with any failure turned into an InputShapeError naming the shape (the model's own
    errors are arbitrary: RuntimeError from a layer, AssertionError from an exported program's guards)."""
    try:
        return model(batch)
    except Exception as exc:  # noqa: BLE001 - reported, with the model's own message
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(
            f"the {label} rejects inputs of shape {tuple(batch.shape)}: {message} (a program exported for one "
            "batch size needs that batch size: --batch-size)"
        ) from exc


def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, label: str = "model") -> torch.Tensor:
    """(N, K) outputs of `model` on `x`, in batches, without gradients; a shape the model rejects is an
    InputShapeError naming the shape."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            out = call_model(model, batch, label)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConvoptError(f"the {label} returns {got}; accuracy needs (N, classes) logits")
            outputs.append(out.dequantize() if out.is_quantized else out)
    return torch.cat(outputs).float()


def top1_percent(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None, batch: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> float | None:  # fmt: skip
    """Top-1 accuracy in % of `model` on labelled data = (x (N, ...), y (N,)), in batches; None without data."""
    if data is None:
        return None
    x, y = data
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            correct += int((model(x[start : start + batch]).argmax(1) == y[start : start + batch]).sum())
            if progress:
                progress(min(start + batch, len(x)), len(x))
    return 100.0 * correct / max(len(x), 1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if not len(labels):
        return 0.0
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).double().mean())


def evaluate_accuracy(
    reference: nn.Module,
    candidate: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    k: int = 5,
    metric: Metric | None = None,
    metric_name: str | None = None,
) -> AccuracyReport:
    """Top-1 and top-k accuracy of both models, their top-1 agreement, and an optional user metric.

    Args:
        x: (N, ...) inputs; y: (N,) integer class labels.
        metric: called as metric(logits, labels) on all N samples of each model; higher or lower is better
            as the user defines it; reported as is.
    """
    if len(x) != len(y):
        raise ConvoptError(f"{len(x)} inputs but {len(y)} labels; pass one label per input")
    ref_logits = predict_logits(reference, x, batch_size=batch_size, label="reference")
    cand_logits = predict_logits(candidate, x, batch_size=batch_size, label="candidate")
    classes = ref_logits.shape[1]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ConvoptError(f"labels range over {int(y.min())}..{int(y.max())} but the model has {classes} outputs; "
                           "check that the data set matches the model")  # fmt: skip
    k = min(k, classes)

    def score(logits: torch.Tensor) -> ModelAccuracy:
        value = float(metric(logits, y)) if metric is not None else None
        return ModelAccuracy(topk_accuracy(logits, y, 1), topk_accuracy(logits, y, k), value)

    agreement = float((ref_logits.argmax(1) == cand_logits.argmax(1)).double().mean()) if len(y) else 0.0
    name = metric_name or (getattr(metric, "__name__", "metric") if metric is not None else None)
    return AccuracyReport(len(y), k, score(ref_logits), score(cand_logits), agreement, name)


__all__ = ["AccuracyReport", "Metric", "ModelAccuracy", "call_model", "evaluate_accuracy", "predict_logits",
           "topk_accuracy"]  # fmt: skip
