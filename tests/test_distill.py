"""Knowledge distillation: the KD loss, attention transfer, the recipe config, and a real MNIST recovery."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConfigError, InputShapeError
from convopt.training import TrainConfig
from convopt.transforms.distill import DistillConfig, attention_loss, attention_map, distill, distillation_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_loss_matches_its_formula_in_float64():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (5,))
    T, alpha = 3.0, 0.7
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=T, alpha=alpha), expected)


def test_kd_gradient_vanishes_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    student = copy.deepcopy(teacher)
    x = torch.randn(16, 6)
    labels = teacher(x).argmax(1)  # labels agree with the teacher
    distillation_loss(student(x), teacher(x), labels, temperature=4.0, alpha=1.0).backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters()) < 1e-6
    student.zero_grad()
    shifted = student(x) + torch.randn(16, 4)  # a different student gets a real gradient
    distillation_loss(shifted, teacher(x), labels, alpha=1.0).backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters()) > 1e-3


def test_t_squared_keeps_the_soft_gradient_scale_constant():
    """Hinton et al.: d KL / d z_s shrinks as 1/T^2 for large T, so T^2 * KL has T-independent gradients."""
    t = torch.randn(8, 10)
    s0 = t + torch.randn(8, 10)
    norms = {}
    for T in (10.0, 20.0, 40.0):
        s = s0.clone().requires_grad_(True)
        distillation_loss(s, t, None, temperature=T, alpha=1.0).backward()
        norms[T] = float(s.grad.norm())
    assert norms[20.0] / norms[10.0] == pytest.approx(1.0, rel=0.05)
    assert norms[40.0] / norms[20.0] == pytest.approx(1.0, rel=0.02)
    s = s0.clone().requires_grad_(True)
    (F.kl_div(F.log_softmax(s / 20, 1), F.log_softmax(t / 20, 1), reduction="batchmean", log_target=True)).backward()
    assert float(s.grad.norm()) == pytest.approx(norms[20.0] / 400, rel=1e-4)  # without T^2: 400x smaller


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(temperature=float("nan")), dict(alpha=1.5),
                                 dict(alpha=-0.1)])  # fmt: skip
def test_kd_loss_rejects_bad_weights_and_shapes(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), **bad)
    with pytest.raises(InputShapeError, match=r"\(2, 3\) and \(2, 4\)"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(InputShapeError, match="needs labels"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), None, alpha=0.5)


def test_attention_map_properties():
    f = torch.randn(3, 8, 5, 6)
    a = attention_map(f)
    assert a.shape == (3, 30) and bool((a >= 0).all())
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(attention_map(-2.5 * f[:, torch.randperm(8)]), a)  # sign, scale, channel order
    manual = (f**2).sum(1).flatten(1)
    torch.testing.assert_close(a, manual / manual.norm(dim=1, keepdim=True))
    hot = torch.zeros(1, 4, 3, 3)
    hot[0, :, 1, 2] = 1.0
    assert attention_map(hot)[0].argmax() == 5 and float(attention_map(hot)[0, 5]) == pytest.approx(1.0)
    assert float(attention_loss(f, f * 3)) == pytest.approx(0.0, abs=1e-6)
    g = torch.randn(3, 2, 5, 6)  # channel counts may differ between student and teacher
    expected = 1000.0 * ((attention_map(f) - attention_map(g)) ** 2).mean()
    torch.testing.assert_close(attention_loss(f, g), expected)
    with pytest.raises(InputShapeError, match="'s1' -> 't1'.*same"):
        attention_loss(f, torch.randn(3, 8, 4, 6), names=("s1", "t1"))


def test_distill_config_round_trip_and_validation():
    config = DistillConfig(epochs=2, temperature=3.0, alpha=0.5, attention=[["layer3", "layer3"]], beta=500.0)
    assert config.attention == (("layer3", "layer3"),)
    assert DistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.train_config(batch_size=32) == TrainConfig(epochs=2, lr=1e-3, batch_size=32)
    assert config.loss_kwargs()["attention_pairs"] == (("layer3", "layer3"),)
    for bad, field in [(dict(epochs=0), "epochs"), (dict(alpha=2.0), "alpha"), (dict(beta=-1.0), "beta"),
                       (dict(attention=("layer3",)), "attention"), (dict(temperature=-1.0), "temperature")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            DistillConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        DistillConfig.from_dict({"epochs": 1, "gamma": 2})


def _small_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )  # fmt: skip


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_distillation_teaches_a_small_student_mnist_digits():
    """~125 steps of KD with attention transfer from the embedded default raise a fresh student's held-out accuracy."""
    from convopt.data import load_mnist
    from convopt.models import default_model, default_weights_available

    if not default_weights_available():
        pytest.skip("the embedded default model's trained weights are not in the package")
    teacher = default_model()
    (x, y), (xt, yt) = load_mnist("train"), load_mnist("test")
    student = _small_student()
    before = _accuracy(student, xt, yt)
    grads = [p.requires_grad for p in teacher.parameters()]
    history = distill(student, teacher, (x, y), TrainConfig(epochs=2, lr=5e-3), temperature=4.0, alpha=0.9,
                      attention_pairs=[("3", "layer3")], beta=100.0, evaluate=lambda m: _accuracy(m, xt, yt))  # fmt: skip
    after = _accuracy(student, xt, yt)
    assert before < 0.3 and after > before + 0.5, (before, after)  # about 0.10 -> 0.88 here
    assert history.epochs[-1]["metric"] == pytest.approx(after)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert [p.requires_grad for p in teacher.parameters()] == grads and not teacher.training  # teacher restored
    assert all(not m._forward_hooks for m in student.modules())  # hooks removed


def test_distill_names_bad_attention_layers():
    teacher, student = _small_student(), _small_student()
    data = (torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    with pytest.raises(ConfigError, match=r"student has no module\(s\) \['nope'\]"):
        distill(student, teacher, data, TrainConfig(), attention_pairs=[("nope", "3")])
    with pytest.raises(InputShapeError, match="'1' -> '3'"):  # 14x14 against 7x7
        distill(student, teacher, data, TrainConfig(), attention_pairs=[("1", "3")])
