"""Knowledge distillation: recover a compressed model's accuracy with the original as teacher.

Loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)   (Hinton et al.
2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531: the T^2 factor keeps the soft
term's gradients, which shrink as 1/T^2, on the scale of the hard term's), plus optional attention
transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", arXiv:1612.03928) between
chosen (student layer, teacher layer) pairs, captured with forward hooks.

Training runs through `convopt.training.fit`, so it is deterministic, checkpoints, resumes and runs
under torchrun; the teacher is frozen (eval mode, no gradients) for the run and restored afterwards.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConfigError, InputShapeError
from convopt.training import TrainConfig, TrainHistory, fit

Pairs = tuple[tuple[str, str], ...]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_loss_weights(temperature: float, alpha: float, beta: float = 0.0) -> None:
    if not _number(temperature) or not temperature > 0 or math.isinf(temperature):
        raise ConfigError(f"temperature={temperature!r}: expected a finite number > 0 (typical: 2 to 8)")
    if not _number(alpha) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha!r}: expected the soft-loss weight in [0, 1] (1 - alpha weighs the labels)")
    if not _number(beta) or not beta >= 0 or math.isinf(beta):
        raise ConfigError(f"beta={beta!r}: expected a finite attention-transfer weight >= 0 (the paper uses 1000)")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:  # fmt: skip
    """alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels), averaged over the batch.

    Args:
        student_logits: (N, C); teacher_logits: (N, C); labels: (N,) class indices (unused, may be None,
            when alpha == 1).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise InputShapeError(f"distillation_loss needs student and teacher logits of the same (N, C) shape, got "
                              f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")  # fmt: skip
    _check_loss_weights(temperature, alpha)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2
    if alpha == 1.0:
        return soft
    if labels is None:
        raise InputShapeError(f"distillation_loss with alpha={alpha} < 1 needs labels for the hard-label term")
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: sum_c |f_c|^p, flattened and L2-normalised per sample.

    Args:
        features: (N, C, *spatial) activations.

    Returns:
        (N, prod(spatial)) non-negative maps of unit L2 norm (all-zero features give an all-zero map).
    """
    if features.dim() < 3:
        raise InputShapeError(f"attention_map needs (N, C, *spatial) features, got shape {tuple(features.shape)}")
    energy = features.abs().pow(p).sum(dim=1).flatten(1)  # (N, H*W)
    return F.normalize(energy, dim=1)


def attention_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, beta: float = 1000.0,
                   names: tuple[str, str] = ("student", "teacher")) -> torch.Tensor:  # fmt: skip
    """beta * mean over the batch and positions of (a_s - a_t)^2, with a = attention_map(features).

    That is beta / (H*W) * mean_n ||a_s - a_t||_2^2: the form of the authors' released code, for which
    beta = 1000 was tuned (the paper writes beta / 2 * ||a_s - a_t||_2). Spatial sizes must match: no
    interpolation, the error names both layers.
    """
    if student_features.shape[2:] != teacher_features.shape[2:] or len(student_features) != len(teacher_features):
        raise InputShapeError(f"attention transfer pair {names[0]!r} -> {names[1]!r}: shapes "
                              f"{tuple(student_features.shape)} and {tuple(teacher_features.shape)} differ in batch "
                              "or spatial size; pair layers whose outputs have the same (N, *, H, W)")  # fmt: skip
    return beta * (attention_map(student_features) - attention_map(teacher_features)).pow(2).mean()


@dataclass(frozen=True)
class DistillConfig:
    """A distillation recipe: epochs, temperature, alpha, attention pairs (student layer, teacher layer), beta, lr.

    The JSON-able half of `distill`'s arguments; `train_config()` and `loss_kwargs()` turn it into them.
    """

    epochs: int = 1
    temperature: float = 4.0
    alpha: float = 0.9
    attention: Pairs = ()
    beta: float = 1000.0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        pairs = tuple(tuple(pair) for pair in self.attention)
        if not all(len(pair) == 2 and all(isinstance(n, str) for n in pair) for pair in pairs):
            raise ConfigError(f"DistillConfig.attention={self.attention!r}: expected (student layer, teacher layer) "
                              "name pairs, e.g. (('layer3', 'layer3'),)")  # fmt: skip
        object.__setattr__(self, "attention", pairs)
        _check_loss_weights(self.temperature, self.alpha, self.beta)
        TrainConfig(epochs=self.epochs, lr=self.lr)  # validates both with TrainConfig's messages

    def to_dict(self) -> dict[str, Any]:
        return {"type": "DistillConfig", **dataclasses.asdict(self), "attention": [list(p) for p in self.attention]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields - {"type"}
        if unknown or data.get("type", "DistillConfig") != "DistillConfig":
            raise ConfigError(f"not a DistillConfig: unknown field(s) {sorted(unknown)} or type {data.get('type')!r}")
        return cls(**{k: v for k, v in data.items() if k in fields})

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The TrainConfig for this recipe (epochs, lr), with any other TrainConfig fields overridden."""
        return TrainConfig(**{"epochs": self.epochs, "lr": self.lr, **overrides})

    def loss_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `distill` (temperature, alpha, attention_pairs, beta)."""
        return dict(temperature=self.temperature, alpha=self.alpha, attention_pairs=self.attention, beta=self.beta)


class _Capture:
    """Forward hooks that keep the latest output of each named module (by qualified name)."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            some = ", ".join(list(n for n in modules if n)[:12])
            raise ConfigError(f"attention transfer: the {role} has no module(s) {missing}; its modules include {some}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in dict.fromkeys(names)]

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output

        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def distill(student: nn.Module, teacher: nn.Module, data: tuple[torch.Tensor, torch.Tensor], config: TrainConfig, *,
            temperature: float = 4.0, alpha: float = 0.9, attention_pairs: Sequence[tuple[str, str]] = (),
            beta: float = 1000.0, evaluate: Callable[[nn.Module], float] | None = None,
            progress: Callable[[str, int, int], None] | None = None,
            augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> TrainHistory:  # fmt: skip
    """Train `student` in place to match `teacher` on data = (x (N, ...), labels (N,)); see the module docstring.

    The teacher sees the same (augmented) batch as the student, in eval mode under no_grad. With
    `attention_pairs`, the loss adds `attention_loss` for each (student layer, teacher layer) pair.
    Returns the `fit` history (per epoch: loss, evaluate(student), seconds).
    """
    _check_loss_weights(temperature, alpha, beta)
    pairs = tuple((str(s), str(t)) for s, t in attention_pairs)
    student_hooks = _Capture(student, [s for s, _ in pairs], "student")
    teacher_hooks = _Capture(teacher, [t for _, t in pairs], "teacher")
    teacher_mode = teacher.training
    teacher_grads = [(p, p.requires_grad) for p in teacher.parameters()]
    teacher.eval().requires_grad_(False)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = distillation_loss(model(x), teacher_logits, y, temperature, alpha)
        for s, t in pairs:
            loss = loss + attention_loss(student_hooks.outputs[s], teacher_hooks.outputs[t], beta, (s, t))
        return loss

    try:
        return fit(student, data, loss_fn, config, evaluate=evaluate, progress=progress, augment=augment)
    finally:
        student_hooks.close()
        teacher_hooks.close()
        teacher.train(teacher_mode)
        for param, flag in teacher_grads:
            param.requires_grad_(flag)
