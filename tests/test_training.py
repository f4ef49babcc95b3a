"""The shared training loop: validation, determinism, kill-and-resume to identical weights, DDP sharding."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConfigError, ConvoptError, InputShapeError
from convopt.training import TrainConfig, TrainHistory, epoch_order, fit, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 96, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long()  # a learnable rule
    return x, y


def _model(dropout: float = 0.2, norm: bool = True) -> nn.Module:
    torch.manual_seed(3)
    norms = [nn.BatchNorm1d(16)] if norm else []
    layers = [nn.Linear(8, 16), *norms, nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2)]
    return nn.Sequential(*layers)


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x + 0.1 * torch.randn(x.shape, generator=g)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=float("nan")),
                                 dict(optimizer="lbfgs"), dict(schedule="step"), dict(checkpoint_every=-1),
                                 dict(epochs=1.5), dict(weight_decay=-1.0), dict(checkpoint=3)])  # fmt: skip
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_config_round_trip():
    config = TrainConfig(epochs=3, lr=0.01, optimizer="sgd", schedule="cosine", checkpoint="a/b.pt", checkpoint_every=5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="momentum"):
        TrainConfig.from_dict({**config.to_dict(), "momentum": 0.9})


def test_epoch_order_is_seeded_and_shards_partition_it():
    full = epoch_order(10, seed=0, epoch=2)
    assert torch.equal(full, epoch_order(10, seed=0, epoch=2))
    assert not torch.equal(full, epoch_order(10, seed=0, epoch=3))
    assert sorted(full.tolist()) == list(range(10))
    shards = [epoch_order(10, 0, 2, rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded 10 -> 12 by wrap-around
    merged = torch.stack(shards, 1).flatten()  # interleave back: rank r owns positions r, r+3, ...
    assert torch.equal(merged[:10], full) and torch.equal(merged[10:], full[:2])


def test_fit_learns_reports_progress_and_is_deterministic():
    data, calls = _data(), []
    model = _model()
    history = fit(model, data, _ce, TrainConfig(epochs=4, lr=0.02), progress=lambda *a: calls.append(a),
                  evaluate=lambda m: float((m(data[0]).argmax(1) == data[1]).float().mean()))  # fmt: skip
    assert isinstance(history, TrainHistory) and [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]
    assert history.epochs[-1]["loss"] < 0.7 * history.epochs[0]["loss"]
    assert history.epochs[-1]["metric"] > 0.85 and all(e["seconds"] > 0 for e in history.epochs)
    assert calls[:2] == [("epoch 1/4", 1, 2), ("epoch 1/4", 2, 2)] and len(calls) == 8
    assert model.training  # mode restored
    again = _model()
    fit(again, data, _ce, TrainConfig(epochs=4, lr=0.02))
    assert _same_state(model, again)
    other = _model()
    fit(other, data, _ce, TrainConfig(epochs=4, lr=0.02, seed=1))
    assert not _same_state(model, other)


def test_fit_leaves_the_callers_rng_alone():
    model, data = _model(), _data()  # _model() seeds the global RNG itself
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(model, data, _ce, TrainConfig())
    assert torch.equal(torch.rand(3), expected)


class _Kill(Exception):
    pass


@pytest.mark.parametrize("every,kill_at", [(0, ("epoch 2/3", 1)), (2, ("epoch 2/3", 3))])
def test_kill_and_resume_gives_bit_identical_weights(tmp_path, every, kill_at):
    """Dropout (global RNG), BatchNorm buffers, Adam state, augmentation and cosine schedule all resume."""
    data = _data(120)
    base = dict(epochs=3, lr=0.01, batch_size=16, schedule="cosine", checkpoint_every=every)
    straight = _model()
    straight_history = fit(straight, data, _ce, TrainConfig(**base), augment=_noise)

    def kill(label: str, step: int, total: int) -> None:
        if (label, step) == kill_at:
            raise _Kill

    path = str(tmp_path / "ckpt" / "run.pt")
    resumed = _model()
    with pytest.raises(_Kill):
        fit(resumed, data, _ce, TrainConfig(**base, checkpoint=path), augment=_noise, progress=kill)
    saved = load_checkpoint(path)
    assert (saved["epoch"], saved["step"]) == ((1, 0) if every == 0 else (1, 2))
    assert not _same_state(resumed, straight)
    fresh = _model()  # a new process would start from scratch: the weights come from the checkpoint
    history = fit(fresh, data, _ce, TrainConfig(**base, checkpoint=path), augment=_noise)
    assert _same_state(fresh, straight)
    assert [e["loss"] for e in history.epochs] == [e["loss"] for e in straight_history.epochs]
    assert not list(tmp_path.joinpath("ckpt").glob("*.tmp"))  # atomic writes leave no temp files


def test_finished_checkpoint_resumes_to_the_same_weights_and_config_changes_are_refused(tmp_path):
    data, path = _data(), str(tmp_path / "c.pt")
    first = _model()
    fit(first, data, _ce, TrainConfig(epochs=2, checkpoint=path))
    second = _model()
    history = fit(second, data, _ce, TrainConfig(epochs=2, checkpoint=path), progress=lambda *a: pytest.fail("trained"))
    assert _same_state(first, second) and len(history.epochs) == 2
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.1"):
        fit(_model(), data, _ce, TrainConfig(epochs=2, lr=0.1, checkpoint=path))
    longer = fit(second, data, _ce, TrainConfig(epochs=3, checkpoint=path))  # more epochs: allowed
    assert [e["epoch"] for e in longer.epochs] == [1, 2, 3]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        fit(_model(), data, _ce, TrainConfig(checkpoint=str(tmp_path / "junk.pt")))


def test_bad_inputs_raise_clear_errors():
    x, y = _data()
    with pytest.raises(InputShapeError, match="same non-zero first dimension"):
        fit(_model(), (x, y[:-1]), _ce, TrainConfig())
    with pytest.raises(InputShapeError, match="pair of tensors"):
        fit(_model(), x, _ce, TrainConfig())
    frozen = _model().requires_grad_(False)
    with pytest.raises(ConfigError, match="requires_grad"):
        fit(frozen, (x, y), _ce, TrainConfig())
    with pytest.raises(ConvoptError, match="lower the learning rate"):
        fit(_model(), (x, y), lambda m, a, b: _ce(m, a, b) * float("nan"), TrainConfig())


def _ddp_worker(rank: int, world: int, port: int, data, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = _model(dropout=0.0, norm=False)  # per-rank BatchNorm statistics and dropout masks would differ
    fit(model, data, _ce, TrainConfig(epochs=2, lr=0.05, batch_size=12, optimizer="sgd"))
    torch.save(model.state_dict(), f"{out}.{rank}")


@pytest.mark.slow  # ~15 s on two loaded cores: two spawned processes each import torch
def test_ddp_two_ranks_match_one_process_with_twice_the_batch(tmp_path):
    """Rank r takes every 2nd sample of the epoch order, so the averaged gradient over 2 ranks x 12 samples is
    the gradient of one process's batch of 24 (up to summation order)."""
    import torch.multiprocessing as mp

    data = _data(96)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, data, str(tmp_path / "w")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"w.{r}", weights_only=True) for r in range(2)]
    single = _model(dropout=0.0, norm=False)
    before = {k: v.clone() for k, v in single.state_dict().items()}
    fit(single, data, _ce, TrainConfig(epochs=2, lr=0.05, batch_size=24, optimizer="sgd"))
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key])  # DDP keeps the replicas identical
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, before[key])
