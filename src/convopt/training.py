"""The shared fine-tuning loop (distillation, QAT, fine-tuning after pruning): deterministic, resumable, DDP-ready.

`fit(model, (x, y), loss_fn, TrainConfig(...))` trains `model` in place on in-memory tensors and returns
a `TrainHistory`. Three properties hold by construction:

- Deterministic: the sample order of epoch e is a permutation seeded by (seed, e); the generator handed
  to `augment` at step s is seeded by (seed, e, s, rank); the global torch RNG (dropout, ...) is forked,
  seeded by `seed`, and restored to the caller's state afterwards. Same config, same threads: same weights.
- Resumable: with `checkpoint=PATH`, model, optimizer, position (epoch, step), RNG state, partial-epoch
  sums and history are written atomically at every epoch end (and every `checkpoint_every` steps); a
  later `fit` with the same config resumes from it and ends with bit-identical weights.
- Distributed: under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
  CPU, NCCL on CUDA) and each rank takes every WORLD_SIZE-th sample of the epoch order, as
  torch.utils.data.DistributedSampler does (the order is padded by wrap-around to a multiple of
  WORLD_SIZE). `batch_size` is per rank; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from convopt.errors import ConfigError, ConvoptError, InputShapeError
from convopt.io import atomic_write_bytes

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
CHECKPOINT_FORMAT = 1
# Fields that may differ between the run that wrote a checkpoint and the run that resumes it.
_RESUMABLE_CHANGES = {"epochs", "checkpoint", "checkpoint_every"}

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs, optimizer (Adam, or SGD with momentum 0.9), learning rate and its schedule.

    `schedule="cosine"` decays the rate per step from `lr` to 0 over all epochs; `checkpoint` is the
    checkpoint file's path (None: no checkpoint); `checkpoint_every` > 0 also checkpoints every N steps.
    """

    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"TrainConfig.{name}={value!r}: expected an integer")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 0:
            raise ConfigError(f"TrainConfig(epochs={self.epochs}, batch_size={self.batch_size}, checkpoint_every="
                              f"{self.checkpoint_every}): epochs and batch_size must be >= 1, checkpoint_every >= 0")  # fmt: skip
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"TrainConfig.{name}={value!r}: expected a finite number >= 0")
        if self.lr == 0:
            raise ConfigError("TrainConfig.lr=0 would not train at all: give a positive learning rate")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"TrainConfig.optimizer={self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"TrainConfig.schedule={self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            raise ConfigError(f"TrainConfig.checkpoint={self.checkpoint!r}: give the checkpoint file's path as a str")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {sorted(unknown)}")
        return cls(**data)


@dataclass
class TrainHistory:
    """One entry per finished epoch: {"epoch": 1-based, "loss": mean training loss, "metric": evaluate()
    or None, "seconds": wall time of the epoch's training steps and evaluation}."""

    epochs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(e) for e in self.epochs]}


def _seed_of(*parts: Any) -> int:
    """A 63-bit seed from a tuple of values (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample indices for `epoch`: a (seed, epoch)-seeded permutation of range(n), padded by
    wrap-around to a multiple of `world`, then every world-th entry from position `rank`. Shape (ceil(n/world),)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed_of("order", seed, epoch)))
    total = math.ceil(n / world) * world
    if total > n:
        order = torch.cat([order, order[: total - n]])  # (total,)
    return order[rank::world]


def _world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_available():
        raise ConvoptError(f"WORLD_SIZE={world} but this torch build has no torch.distributed; run without torchrun")
    return int(os.environ.get("RANK", "0")), world


def _check_data(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise InputShapeError(f"fit takes data as a pair of tensors (inputs, targets), got {type(data).__name__}")
    x, y = data
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
        raise InputShapeError(f"fit needs inputs and targets with the same non-zero first dimension, got "
                              f"{tuple(x.shape)} and {tuple(y.shape)}")  # fmt: skip
    return x, y


def _optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _lr_at(config: TrainConfig, step: int, total: int) -> float:
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return config.lr


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by `fit` (tensors and plain containers only: loaded with weights_only=True)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a convopt training checkpoint (format {CHECKPOINT_FORMAT}); "
                          "delete it or point TrainConfig.checkpoint elsewhere")  # fmt: skip
    return state


def _check_resumable(state: dict[str, Any], config: TrainConfig, world: int, path: str) -> None:
    saved, now = state["config"], config.to_dict()
    differ = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(f"checkpoint {path} was written with a different config ({pairs}); resume with the same "
                          "config or delete the checkpoint to start afresh")  # fmt: skip
    if state["step"] and state["world_size"] != world:
        raise ConfigError(f"checkpoint {path} stopped mid-epoch with {state['world_size']} process(es); resume it "
                          f"with the same number, not {world}")  # fmt: skip


def fit(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], loss_fn: LossFn, config: TrainConfig, *,
        evaluate: Callable[[nn.Module], float] | None = None, progress: Callable[[str, int, int], None] | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> TrainHistory:  # fmt: skip
    """Train `model` in place on `data` = (x (N, ...), y (N, ...)) by minimising `loss_fn(model, xb, yb)`.

    Args:
        model: trained in train mode; its own mode is restored afterwards. Parameters with
            requires_grad=False stay fixed. Batches are moved to the device of its first parameter.
        loss_fn: (model, xb (B, ...), yb (B, ...)) -> scalar; under torchrun `model` is the DDP wrapper.
        evaluate: called after each epoch with the model in eval mode under no_grad; its float goes into
            the history as "metric".
        progress: called after every step as progress("epoch E/EPOCHS", step, steps_per_epoch).
        augment: (xb, generator) -> xb', applied to each training batch; draw randomness only from generator.

    Returns:
        The history of every epoch, including those restored from the checkpoint.
    """
    x, y = _check_data(data)
    rank, world = _world()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("fit: the model has no parameter with requires_grad=True, so there is nothing to train")
    device = params[0].device
    run = _Run(model, model, config, _optimizer(params, config), rank, world, device)
    resumed = None
    if config.checkpoint is not None and Path(config.checkpoint).is_file():
        resumed = load_checkpoint(config.checkpoint)
        _check_resumable(resumed, config, world, config.checkpoint)
        model.load_state_dict(resumed["model"])
        run.optimizer.load_state_dict(resumed["optimizer"])
        run.pos = {k: resumed[k] for k in run.pos}
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        run.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(_seed_of("torch", config.seed))
            if resumed is not None:
                torch.set_rng_state(resumed["rng"])
                if "cuda_rng" in resumed and device.type == "cuda":
                    torch.cuda.set_rng_state(resumed["cuda_rng"], device)
            run.epochs(x, y, loss_fn, evaluate, progress, augment)
    finally:
        model.train(was_training)
        if owns_group:
            dist.destroy_process_group()
    return TrainHistory([dict(e) for e in run.pos["history"]])


@dataclass
class _Run:
    """One `fit` call: what it trains and where it is (`pos` is exactly what a checkpoint stores)."""

    net: nn.Module  # the model, or its DDP wrapper
    model: nn.Module
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    rank: int
    world: int
    device: torch.device
    pos: dict[str, Any] = field(
        default_factory=lambda: {"epoch": 0, "step": 0, "loss_sum": 0.0, "count": 0, "seconds": 0.0, "history": []}
    )

    def save(self) -> None:
        if self.config.checkpoint is not None and self.rank == 0:
            state = {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "world_size": self.world,
                     "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "rng": torch.get_rng_state(), **self.pos}  # fmt: skip
            if self.device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write_bytes(self.config.checkpoint, buffer.getvalue())
        if self.world > 1:
            dist.barrier()  # no rank runs ahead of a checkpoint it might have to resume from

    def epochs(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, evaluate: Any, progress: Any,
               augment: Any) -> None:  # fmt: skip
        config, pos = self.config, self.pos
        for epoch in range(pos["epoch"], config.epochs):
            order = epoch_order(len(x), config.seed, epoch, self.rank, self.world)
            steps = math.ceil(len(order) / config.batch_size)
            self.model.train()
            start = time.perf_counter() - pos["seconds"]
            for step in range(pos["step"], steps):
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                xb, yb = x[index].to(self.device), y[index].to(self.device)
                if augment is not None:
                    seed = _seed_of("augment", config.seed, epoch, step, self.rank)
                    xb = augment(xb, torch.Generator().manual_seed(seed))
                for group in self.optimizer.param_groups:
                    group["lr"] = _lr_at(config, epoch * steps + step, config.epochs * steps)
                loss = loss_fn(self.net, xb, yb)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ConvoptError(f"training loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                                       f"lower the learning rate (now {config.lr})")  # fmt: skip
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                pos.update(step=step + 1, loss_sum=pos["loss_sum"] + value * len(index),
                           count=pos["count"] + len(index))  # fmt: skip
                if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
                    pos["seconds"] = time.perf_counter() - start
                    self.save()
                if progress is not None:
                    progress(f"epoch {epoch + 1}/{config.epochs}", step + 1, steps)
            self._end_epoch(epoch, start, evaluate)

    def _end_epoch(self, epoch: int, start: float, evaluate: Any) -> None:
        pos, loss_sum, count = self.pos, self.pos["loss_sum"], self.pos["count"]
        if self.world > 1:
            totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64)
            dist.all_reduce(totals)
            loss_sum, count = float(totals[0]), int(totals[1])
        metric = None
        if evaluate is not None:
            self.model.eval()
            with torch.no_grad():
                metric = float(evaluate(self.model))
            self.model.train()
        entry = {"epoch": epoch + 1, "loss": loss_sum / count, "metric": metric, "seconds": time.perf_counter() - start}
        pos.update(epoch=epoch + 1, step=0, loss_sum=0.0, count=0, seconds=0.0, history=pos["history"] + [entry])
        self.save()
