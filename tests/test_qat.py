"""Quantization-aware training: BN folded, accuracy kept vs PTQ on MNIST, LSQ scales trained, kill-and-resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convopt.data import load_mnist
from convopt.models import default_model
from convopt.models.train_default import random_shift
from convopt.nn.quant import FakeQuantConv
from convopt.training import TrainConfig, fit
from convopt.transforms.qat import cross_entropy_loss, prepare_qat, qat_config, quantization_aware_training
from convopt.transforms.quant_sim import calibrate, prepare_quant_sim, quantized_layers

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist("train"), load_mnist("test")


def _simulated_accuracy(float_model: nn.Module, calibration: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    sim = prepare_quant_sim(float_model)
    calibrate(sim, calibration.split(128))
    with torch.no_grad():
        return float((sim(x).argmax(1) == y).float().mean() * 100)


def test_batchnorm_is_folded_before_training(mnist):
    (x, _), _ = mnist
    model = default_model()
    sim = prepare_qat(model, x[:64])
    assert not any(isinstance(m, _NORMS) for m in sim.modules())
    assert len(quantized_layers(sim)) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert any(isinstance(m, _NORMS) for m in model.modules())  # the caller's model is untouched
    with torch.no_grad():  # folding changes no function: the float part of the sim equals the model
        for layer in quantized_layers(sim).values():
            layer.enabled = False
        torch.testing.assert_close(sim(x[:16]), model(x[:16]), rtol=1e-4, atol=1e-4)


def test_learnable_scales_are_trained(mnist):
    (x, y), _ = mnist
    sim = prepare_qat(default_model(), x[:64], learnable_scales=True)
    before = {n: float(m.act_scale.detach()) for n, m in quantized_layers(sim).items()}
    assert all(isinstance(m.act_scale, nn.Parameter) for m in quantized_layers(sim).values())
    fit(sim, (x[:64], y[:64]), cross_entropy_loss, TrainConfig(epochs=1, lr=1e-2, batch_size=32))
    after = {n: float(m.act_scale.detach()) for n, m in quantized_layers(sim).items()}
    assert sum(after[n] != before[n] for n in before) >= len(before) - 1


@pytest.mark.slow
def test_short_qat_keeps_simulated_int8_accuracy_on_mnist(mnist):
    """200 steps of QAT (batch 8, SGD 1e-4, the default model's shift augmentation), seeded."""
    (x_train, y_train), (x_test, y_test) = mnist
    model = default_model()
    calibration = x_train[:256]
    ptq = _simulated_accuracy(model, calibration, x_test, y_test)
    config = qat_config(epochs=1, batch_size=8, seed=0)
    assert config.optimizer == "sgd" and config.lr == 1e-4
    tuned, history = quantization_aware_training(
        model, (x_train[:1600], y_train[:1600]), config, calibration=calibration, augment=random_shift
    )
    assert not any(isinstance(m, (FakeQuantConv, *_NORMS)) for m in tuned.modules())
    assert not tuned.training and len(history.epochs) == 1
    qat = _simulated_accuracy(tuned, calibration, x_test, y_test)
    print(f"simulated int8 top-1 on the 1000 held-out digits: PTQ {ptq:.1f}%, after QAT {qat:.1f}%")
    assert qat >= ptq - 0.3
    assert not torch.equal(tuned.fc.weight, model.fc.weight)  # it did train


class _Killed(RuntimeError):
    pass


def test_kill_and_resume_ends_with_identical_weights(mnist, tmp_path):
    (x, y), _ = mnist
    data, calibration = (x[:192], y[:192]), x[:64]
    model = default_model()

    def run(checkpoint, progress=None):
        config = TrainConfig(epochs=2, lr=1e-3, batch_size=32, seed=3, checkpoint=checkpoint, checkpoint_every=2)
        return quantization_aware_training(model, data, config, calibration=calibration, learnable_scales=True,
                                           progress=progress, augment=random_shift)  # fmt: skip

    reference, reference_history = run(None)
    seen = []

    def killer(label, step, steps):
        seen.append((label, step))
        if label == "epoch 2/2" and step == 3:  # mid-epoch: the last checkpoint is epoch 2, step 2
            raise _Killed("simulated kill")

    checkpoint = str(tmp_path / "qat.ckpt")
    with pytest.raises(_Killed):
        run(checkpoint, killer)
    resumed_steps = []
    resumed, history = run(checkpoint, lambda label, step, steps: resumed_steps.append((label, step)))
    assert resumed_steps[0] == ("epoch 2/2", 3) and len(resumed_steps) == 4  # it resumed, it did not restart
    reference_state, resumed_state = reference.state_dict(), resumed.state_dict()
    assert reference_state.keys() == resumed_state.keys()
    assert all(torch.equal(reference_state[k], resumed_state[k]) for k in reference_state)
    assert [e["loss"] for e in history.epochs] == [e["loss"] for e in reference_history.epochs]
    assert not torch.equal(reference.fc.weight, default_model().fc.weight)
