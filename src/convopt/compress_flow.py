"""Compression before tuning: prune, decompose, then win the accuracy back by distillation.

`compress(model, inputs, plan)` works on a copy of `model`: it applies the plan's PruneConfig and
DecomposeConfig, fine-tunes the result against the original (the teacher) with knowledge distillation
when asked, measures MACs, parameters and latency of every layer before and after, and checks the
accuracy budget on held-out data. The changed architecture is recorded as a StructureConfig, so the
saved model reloads without repeating the (weight- and data-dependent) choices.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from convopt.analysis.cost import CostReport
from convopt.api import analyze
from convopt.errors import BudgetExceededError, ConfigError
from convopt.training import TrainConfig
from convopt.transforms.decompose import DecomposeConfig
from convopt.transforms.distill import distill
from convopt.transforms.pipeline import apply_
from convopt.transforms.prune_config import PruneConfig, parse_prune_spec
from convopt.transforms.restructure import StructureConfig
from convopt.verify.accuracy import top1_percent


def parse_decompose_spec(text: str) -> DecomposeConfig:
    """The CLI form: "tucker:0.5" (keep 50% of each layer's MACs), "tucker:0.5:latency" (50% of all the layers'
    MACs, placed where measured time drops most), "tucker:vbmf" / "svd:vbmf" (ranks estimated by VBMF),
    "cp:RANK", "svd:ENERGY" (e.g. svd:0.9)."""
    method, _, value = text.partition(":")
    value, _, allocate = value.partition(":")
    try:
        if method in ("tucker", "svd") and value == "vbmf" and not allocate:
            return DecomposeConfig(method, rank="vbmf")
        if method == "tucker" and allocate in ("", "latency"):
            return DecomposeConfig("tucker", ratio=float(value), allocate=allocate or "layer")
        if method == "cp" and not allocate:
            return DecomposeConfig("cp", rank=int(value))
        if method == "svd" and not allocate:
            return DecomposeConfig("svd", energy=float(value))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
    raise ConfigError(f"--decompose {text!r}: use tucker:MAC_RATIO[:latency] (e.g. tucker:0.5), tucker:vbmf, "
                      "cp:RANK, svd:ENERGY or svd:vbmf")  # fmt: skip


@dataclass(frozen=True)
class CompressionPlan:
    """What to do to the model before tuning. `max_accuracy_drop` is in accuracy points (top-1, %).

    Distillation: `distill_epochs` of Adam at `lr` with cosine decay, loss weights `temperature` and
    `alpha` (see convopt.transforms.distill), and random shifts of up to `shift` pixels (zero fill) of each
    image batch (N, C, H, W) -- 0 turns them off; other input ranks are never shifted (the report says so).
    With these defaults, 5 epochs bring the embedded MNIST model back to within 0.5 point of its 98.5%
    after structured pruning to 50% MACs or Tucker-2 at 50% (benchmarks/bench_compress_mnist.py); Adam at
    2e-3 recovers faster than at 1e-3, and 2-pixel shifts keep 4000 digits from being memorised.
    """

    prune: PruneConfig | None = None
    decompose: DecomposeConfig | None = None
    distill_epochs: int = 0
    max_accuracy_drop: float = 1.0
    temperature: float = 4.0
    alpha: float = 0.9
    lr: float = 2e-3
    shift: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.distill_epochs, int) or self.distill_epochs < 0:
            raise ConfigError(f"distill epochs={self.distill_epochs!r}: give a whole number >= 0")
        if not (math.isfinite(self.max_accuracy_drop) and self.max_accuracy_drop >= 0):
            raise ConfigError(f"max accuracy drop={self.max_accuracy_drop!r}: give points >= 0, e.g. 1.0")
        if not isinstance(self.shift, int) or isinstance(self.shift, bool) or self.shift < 0:
            raise ConfigError(f"shift={self.shift!r}: give the largest random shift in pixels, an integer >= 0 "
                              "(0 turns it off)")  # fmt: skip

    @classmethod
    def from_cli(cls, prune: str | None, decompose: str | None, distill_epochs: int | None,
                 max_accuracy_drop: float | None) -> "CompressionPlan | None":  # fmt: skip
        if not (prune or decompose or distill_epochs):
            return None
        return cls(prune=parse_prune_spec(prune) if prune else None,
                   decompose=parse_decompose_spec(decompose) if decompose else None,
                   distill_epochs=distill_epochs or 0,
                   max_accuracy_drop=1.0 if max_accuracy_drop is None else max_accuracy_drop)  # fmt: skip


@dataclass
class CompressResult:
    model: nn.Module
    structure: StructureConfig
    report: dict[str, Any] = field(default_factory=dict)


def training_split(spec: str, input_shape: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(training (x, y), held-out (x, y)) for a --data SPEC: mnist / digits train on their train split and
    are judged on the split SPEC names (test by default); an image folder trains on its first half."""
    from convopt.data import load_data

    name, _, split = spec.partition(":")
    if name in ("mnist", "digits"):
        if split in ("train", "all"):
            raise ConfigError(f"--data {spec}: fine-tuning uses the train split, so accuracy must be measured on "
                              f"held-out digits: use --data {name} (or {name}:test)")  # fmt: skip
        return load_data(f"{name}:train", input_shape=input_shape), load_data(spec, input_shape=input_shape)
    x, y = load_data(spec, input_shape=input_shape)
    if len(x) < 4:
        raise ConfigError(f"--data {spec} has {len(x)} images: too few to both fine-tune and measure accuracy")
    half = len(x) // 2
    return (x[:half], y[:half]), (x[half:], y[half:])


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image of x (N, C, H, W) by up to `max_shift` pixels along H and W (zero fill)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)  # (N, C, H + 2s, W + 2s)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * max_shift)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)  # (N, C, H, W)


accuracy = top1_percent  # top-1 % on labelled (x, y), None without data


def _layer_table(before: CostReport, after: CostReport) -> list[dict[str, Any]]:
    """MACs, params and measured ms per conv/linear layer; a decomposed layer sums its pieces."""
    def table(report: CostReport) -> dict[str, dict[str, float]]:
        rows: dict[str, dict[str, float]] = {}
        for layer in report.layers:
            if layer.macs == 0:
                continue
            row = rows.setdefault(layer.name, {"macs": 0, "params": 0, "ms": 0.0})
            row["macs"] += layer.macs
            row["params"] += layer.params
            row["ms"] += (layer.seconds or 0.0) * 1e3
        return rows

    old, new = table(before), table(after)
    rows = []
    for name, row in old.items():
        parts = {n: r for n, r in new.items() if n == name or n.startswith(f"{name}.")}
        merged = {k: sum(r[k] for r in parts.values()) for k in ("macs", "params", "ms")}
        rows.append({"name": name, **{f"{k}_before": row[k] for k in row}, **{f"{k}_after": merged[k] for k in merged}})
    return rows


def _totals(report: CostReport) -> dict[str, float]:
    return {"macs": report.macs, "params": report.params, "ms": (report.latency_seconds or 0.0) * 1e3}


def compress(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], plan: CompressionPlan, *,
             train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
             eval_data: tuple[torch.Tensor, torch.Tensor] | None = None, checkpoint_dir: str | Path | None = None,
             repeats: int = 5, progress: Callable[[str], None] | None = None,
             on_step: Callable[[str, int, int], None] | None = None) -> CompressResult:  # fmt: skip
    """Apply `plan` to a copy of `model` (eval mode); see the module docstring.

    Raises:
        ConfigError: distillation or the Taylor criterion without training data.
        BudgetExceededError: the result loses more than `plan.max_accuracy_drop` points on `eval_data`.
    """
    say = progress or (lambda message: None)
    start = time.perf_counter()
    if plan.distill_epochs and train_data is None:
        raise ConfigError("--distill needs labelled training data: pass --data (e.g. mnist or imagefolder:PATH)")
    model = model.eval()
    student = copy.deepcopy(model)
    say("measuring every layer of the original")
    before = analyze(model, example_inputs, hardware="auto", measure=True, repeats=repeats)
    baseline = accuracy(model, eval_data)
    trajectory: list[dict[str, Any]] = [{"stage": "original", "accuracy": baseline}]
    steps: list[dict[str, Any]] = []
    calibration = None
    if train_data is not None:
        # Taylor importance batches spread evenly over the data (a split sorted by class would else give one class).
        batch = max(1, int(example_inputs[0].shape[0]))
        picks = torch.linspace(0, len(train_data[0]) - 1, min(8 * batch, len(train_data[0]))).long()
        calibration = [(train_data[0][i], train_data[1][i]) for i in picks.split(batch)]
    for verb, stage, config in (("pruning", "pruned", plan.prune), ("decomposing", "decomposed", plan.decompose)):
        if config is None:
            continue
        say(f"{verb} the model")
        report = apply_(student, config, example_inputs=example_inputs, calibration=calibration)
        record = report.steps[0]
        steps.append({"config": record.config, "changed": record.changed, "skipped": record.skipped,
                      "notes": record.notes, "layers": getattr(record, "layers", {})})  # fmt: skip
        trajectory.append({"stage": stage, "accuracy": accuracy(student.eval(), eval_data)})
    history, distilling = None, {}
    if plan.distill_epochs:
        say(f"distilling from the original for {plan.distill_epochs} epoch(s)")
        checkpoint = str(Path(checkpoint_dir) / "distill.ckpt") if checkpoint_dir else None
        config = TrainConfig(epochs=plan.distill_epochs, lr=plan.lr, checkpoint=checkpoint, schedule="cosine")
        shift = plan.shift if train_data[0].dim() == 4 else 0  # only images (N, C, H, W) shift
        augment = f"random shifts up to {shift} px" if shift else "none"
        if plan.shift and not shift:
            augment += f": training inputs {tuple(train_data[0].shape)} are not images (N, C, H, W)"
        distilling = {"lr": plan.lr, "temperature": plan.temperature, "alpha": plan.alpha, "augment": augment}
        history = distill(student, model, train_data, config, temperature=plan.temperature, alpha=plan.alpha,
                          evaluate=(lambda m: accuracy(m.eval(), eval_data)) if eval_data is not None else None,
                          progress=on_step,
                          augment=(lambda x, g: random_shift(x, g, shift)) if shift else None)  # fmt: skip
        for entry in history.epochs:
            trajectory.append({"stage": f"distill epoch {entry['epoch']}", "accuracy": entry.get("metric"),
                               "loss": entry.get("loss")})  # fmt: skip
    student.eval()
    say("measuring every layer of the compressed model")
    after = analyze(student, example_inputs, hardware="auto", measure=True, repeats=repeats)
    final = accuracy(student, eval_data)
    report = {
        "plan": {"prune": plan.prune.to_dict() if plan.prune else None,
                 "decompose": plan.decompose.to_dict() if plan.decompose else None,
                 "distill_epochs": plan.distill_epochs, "max_accuracy_drop": plan.max_accuracy_drop,
                 **distilling},  # fmt: skip
        "accuracy": {"before": baseline, "after": final},
        "totals": {"before": _totals(before), "after": _totals(after)},
        "layers": _layer_table(before, after),
        "steps": steps,
        "trajectory": trajectory,
        "training": history.to_dict() if history else None,
        "seconds": time.perf_counter() - start,
    }
    if baseline is not None and final is not None and baseline - final > plan.max_accuracy_drop:
        hint = "" if plan.distill_epochs else "; add --distill EPOCHS to recover accuracy"
        raise BudgetExceededError(f"the compressed model loses {baseline - final:.2f} accuracy points ({baseline:.2f}% "
                                  f"-> {final:.2f}%, best achieved), over the budget of {plan.max_accuracy_drop} "
                                  f"(--max-accuracy-drop){hint}; try a milder ratio")  # fmt: skip
    return CompressResult(student, StructureConfig.capture(model, student), report)
