"""INT8 fake-quant simulation: FakeQuantConv arithmetic, STE and LSQ gradients, calibration, per-layer report."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convopt.errors import CalibrationError, ConfigError
from convopt.kernels.quantize import dequantize, quantize
from convopt.nn.quant import ACT_SCHEME, WEIGHT_SCHEME, FakeQuantConv, fake_quantize_weight, lsq_fake_quantize
from convopt.transforms.fold_bn import FoldBatchNormConfig
from convopt.transforms.pipeline import apply_
from convopt.transforms.quant_sim import (
    calibrate, layer_report, prepare_quant_sim, quantized_layers, single_layer_factory, strip_quant_sim,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _calibrated_layer(inner: nn.Module, x: torch.Tensor, **kwargs) -> FakeQuantConv:
    layer = FakeQuantConv(inner, **kwargs)
    layer.start_observing()
    layer(x)
    layer.finish_observing("probe")
    return layer


def test_fake_quant_conv_equals_integer_round_trip():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
    x = torch.randn(2, 3, 9, 9)
    layer = _calibrated_layer(conv, x)
    assert layer.act_scale.dtype == torch.float32 and layer.act_zero_point.dtype == torch.int32
    assert set(layer.state_dict()) == {"inner.weight", "inner.bias", "act_scale", "act_zero_point"}
    # the engine's arithmetic: uint8 codes of the input, int8 codes (-127..127) of the weight per channel
    amax = conv.weight.detach().abs().amax(dim=(1, 2, 3))
    w_scale = amax / 127
    w_codes = quantize(conv.weight.detach(), w_scale, torch.zeros(8, dtype=torch.int64), WEIGHT_SCHEME)
    assert int(w_codes.min()) >= -127 and int(w_codes.abs().max()) == 127
    x_codes = quantize(x, layer.act_scale, layer.act_zero_point, ACT_SCHEME)
    x_hat = dequantize(x_codes, layer.act_scale, layer.act_zero_point, ACT_SCHEME)
    w_hat = dequantize(w_codes, w_scale, torch.zeros(8, dtype=torch.int64), WEIGHT_SCHEME)
    expected = conv._conv_forward(x_hat, w_hat, conv.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.enabled = False
    torch.testing.assert_close(layer(x), conv(x))


def test_linear_and_uncalibrated_and_unsupported():
    with pytest.raises(CalibrationError, match="calibrate"):
        FakeQuantConv(nn.Linear(4, 3))(torch.randn(2, 4))
    with pytest.raises(ConfigError, match="ConvTranspose2d"):
        FakeQuantConv(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(ConfigError, match="observer"):
        FakeQuantConv(nn.Linear(4, 3), observer="nope")
    layer = _calibrated_layer(nn.Linear(4, 3), torch.randn(5, 4))
    assert layer(torch.randn(2, 7, 4)).shape == (2, 7, 3)
    direct = FakeQuantConv(nn.Linear(4, 3), observer="moving_average")
    direct.observe = True  # the observe flag alone also records inputs
    direct(torch.full((2, 4), 3.0))
    direct.finish_observing()
    assert direct.act_range()[1] == pytest.approx(3.0) and not direct.observe
    with pytest.raises(CalibrationError, match="saw no calibration data"):
        FakeQuantConv(nn.Linear(4, 3)).finish_observing("head")


@pytest.mark.parametrize("learnable", [False, True])
def test_ste_input_gradient_is_one_inside_the_clamp_range_and_zero_outside(learnable):
    layer = _calibrated_layer(nn.Linear(4, 3), torch.linspace(-1.0, 2.0, 40).reshape(10, 4), learnable_scale=learnable)
    low, high = layer.act_range()
    step = float(layer.act_scale.detach())
    assert low == pytest.approx(-1.0, abs=step) and high == pytest.approx(2.0, abs=step)
    x = torch.tensor([[-5.0, -0.3, 0.7, 1.9], [low - 0.1, high + 0.1, 3.0, 0.0]], requires_grad=True)
    layer.fake_quantize_input(x).sum().backward()
    inside = (x.detach() >= low) & (x.detach() <= high)
    assert inside.sum() == 4 and (~inside).sum() == 4
    assert torch.equal(x.grad, inside.float())


def test_weight_ste_gradient_is_identity():
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    upstream = torch.randn_like(w)
    (fake_quantize_weight(w) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # narrow-range symmetric: every weight is inside the range


def test_lsq_scale_gradient_matches_esser_closed_form():
    """d x_hat / d s = round(x/s) - x/s inside, qmin - z below, qmax - z above, times g (Esser et al. 2020)."""
    torch.manual_seed(1)
    x = torch.randn(500, dtype=torch.float64) * 3
    s = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    z, g = torch.tensor(100), 0.37
    upstream = torch.randn_like(x)
    out = lsq_fake_quantize(x, s, z, ACT_SCHEME, grad_scale=g)
    (out * upstream).sum().backward()
    v = x / s.detach()
    unrounded = v + 100
    below, above = torch.tensor(0.0 - 100, dtype=torch.float64), torch.tensor(255.0 - 100, dtype=torch.float64)
    local = torch.where(unrounded <= 0, below, torch.where(unrounded >= 255, above, torch.round(v) - v))
    assert (unrounded < 0).any() and (unrounded > 255).any()  # both saturation branches are exercised
    assert float(s.grad) == pytest.approx(float((local * upstream).sum() * g), rel=1e-9)
    # forward value is the plain fake-quant value
    expected = ((torch.round(v) + 100).clamp(0, 255) - 100) * s.detach()
    assert torch.equal(out.detach(), expected)
    # the input gradient is the STE one: 1 strictly inside the range, 0 outside
    x.requires_grad_(True)
    lsq_fake_quantize(x, s.detach(), z, ACT_SCHEME).sum().backward()
    assert torch.equal(x.grad, ((unrounded > 0) & (unrounded < 255)).double())


def test_learnable_scale_is_a_parameter_with_lsq_gradient_and_same_state_key():
    x = torch.rand(3, 5) * 4
    layer = _calibrated_layer(nn.Linear(5, 2), x)
    before = layer.state_dict()["act_scale"].clone()
    layer.learnable_scale = True
    assert isinstance(layer.act_scale, nn.Parameter) and "act_scale" in dict(layer.named_parameters())
    assert torch.equal(layer.state_dict()["act_scale"], before)
    probe = torch.rand(3, 5) * 5  # some values above the calibrated range
    layer.fake_quantize_input(probe).sum().backward()
    s, zp = float(layer.act_scale.detach()), int(layer.act_zero_point)
    v = probe / s
    local = torch.where(v + zp >= 255, torch.tensor(255.0 - zp), torch.round(v) - v)
    g = 1 / math.sqrt(5 * 255)
    assert float(layer.act_scale.grad) == pytest.approx(float(local.sum()) * g, rel=1e-4)
    layer.learnable_scale = False
    assert "act_scale" in dict(layer.named_buffers()) and torch.equal(layer.act_scale, before)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)]
    return nn.Sequential(*layers).eval()


def test_calibrate_progress_and_reset():
    model = _small_cnn()
    sim = prepare_quant_sim(model)
    assert set(quantized_layers(sim)) == {"0", "2", "4"} and not isinstance(model[0], FakeQuantConv)
    calls = []
    calibrate(sim, [torch.rand(3, 2, 8, 8) for _ in range(4)], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert sim[0].act_range()[1] == pytest.approx(1.0, abs=0.01)
    calibrate(sim, (torch.rand(3, 2, 8, 8) * 10 for _ in range(2)), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 0)  # a generator has no known length
    assert sim[0].act_range()[1] == pytest.approx(10.0, rel=0.05)  # observers started afresh


def test_calibration_errors_name_the_shapes():
    model = _small_cnn()
    sim = prepare_quant_sim(model)
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(sim, [])
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(sim, iter(()))
    with pytest.raises(CalibrationError) as info:
        calibrate(sim, [torch.rand(3, 2, 8, 8), torch.rand(3, 5, 8, 8)])
    message = str(info.value)
    assert "batch 1" in message and "got shape (3, 5, 8, 8)" in message and "expected (N, 2, 8, 8)" in message
    with pytest.raises(CalibrationError) as info:
        calibrate(sim, [torch.rand(3, 7, 8, 8)])
    assert "got shape (3, 7, 8, 8)" in str(info.value) and "expected (N, 2, H, W)" in str(info.value)
    with pytest.raises(CalibrationError, match="tensors"):
        calibrate(sim, [(torch.rand(3, 2, 8, 8), torch.zeros(3))])
    assert not any(layer.observe for layer in quantized_layers(sim).values())


def test_prepare_options():
    model = _small_cnn()
    with pytest.raises(ConfigError, match="observer"):
        prepare_quant_sim(model, observer="kl")
    with pytest.raises(ConfigError, match="not modules"):
        prepare_quant_sim(model, exclude=frozenset({"conv9"}))
    with pytest.raises(ConfigError, match="selects no"):
        prepare_quant_sim(model, modules="head*")
    sim = prepare_quant_sim(model, exclude=frozenset({"2"}))
    assert set(quantized_layers(sim)) == {"0", "4"} and isinstance(sim[2], nn.Conv2d)
    assert set(quantized_layers(prepare_quant_sim(model, modules="4"))) == {"4"}
    with pytest.raises(ConfigError, match="already"):
        prepare_quant_sim(sim)
    plain = strip_quant_sim(sim)
    assert not quantized_layers(plain) and torch.equal(plain[0].weight, model[0].weight)


def test_percentile_observer_clips_an_outlier_that_minmax_keeps():
    model = _small_cnn()
    data = torch.rand(256, 2, 8, 8)
    data[0, 0, 0, 0] = 200.0  # one outlier among 32768 values: beyond the 99.99th percentile
    clips = {}
    for name in ("minmax", "percentile"):
        sim = prepare_quant_sim(model, observer=name)
        calibrate(sim, data.split(64))
        clips[name] = sim[0].act_range()[1]
    assert clips["minmax"] == pytest.approx(200.0, rel=0.01) and clips["percentile"] < 20.0


def test_single_layer_factory_quantizes_one_layer_only():
    model = _small_cnn()
    sim = prepare_quant_sim(model)
    calibrate(sim, torch.rand(8, 2, 8, 8))
    only = single_layer_factory(sim)("2")
    assert [n for n, m in quantized_layers(only).items() if m.enabled] == ["2"]
    assert all(m.enabled for m in quantized_layers(sim).values())  # the calibrated sim is untouched
    with pytest.raises(ConfigError, match="not a quantized layer"):
        single_layer_factory(sim)("1")


def _torchvision_report(builder, size: int) -> tuple[list[dict], int]:
    torch.manual_seed(0)
    model = builder(weights=None).eval()
    layers = sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    apply_(model, FoldBatchNormConfig())  # the engine quantizes the BN-folded model
    sim = prepare_quant_sim(model)
    calibrate(sim, [torch.randn(2, 3, size, size) for _ in range(2)])
    return layer_report(model, sim, torch.randn(2, 3, size, size)), layers


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_random_weight_torchvision_models_per_layer_report(name):
    import torchvision

    rows, layers = _torchvision_report(getattr(torchvision.models, name), 48)
    assert len(rows) == layers
    worst = min(rows, key=lambda r: r["weight_sqnr_db"])
    print(f"{name}: min per-channel weight SQNR {worst['weight_sqnr_db']:.1f} dB ({worst['name']}), "
          f"min output SQNR {min(r['output_sqnr_db'] for r in rows):.1f} dB")  # fmt: skip
    assert worst["weight_sqnr_db"] >= 30.0
    for row in rows:
        assert row["output_sqnr_db"] > 20.0 and row["cosine"] > 0.99, row["name"]
        assert 0 < row["max_abs_error"] < float("inf")
        assert row["weight_range"][0] < 0 < row["weight_range"][1]
        for hist in (row["weight_hist"], row["act_hist"]):
            assert len(hist["counts"]) == 32 and len(hist["edges"]) == 33 and sum(hist["counts"]) > 0
    conv1 = rows[0]
    assert sum(conv1["act_hist"]["counts"]) == 2 * 3 * 48 * 48


def test_layer_report_output_error_is_that_layers_alone():
    model = _small_cnn()
    sim = prepare_quant_sim(model)
    x = torch.rand(4, 2, 8, 8)
    calibrate(sim, x)
    rows = {r["name"]: r for r in layer_report(model, sim, x)}
    with torch.no_grad():  # layer "2" alone quantized, fed the float model's real input
        real_input = model[1](model[0](x))
        y_ref, y = model[2](real_input), sim[2](real_input)
    assert rows["2"]["max_abs_error"] == pytest.approx(float((y - y_ref).abs().max()), rel=1e-6)
    assert rows["2"]["act_range"] == pytest.approx([float(real_input.min()), float(real_input.max())])
    assert rows["4"]["kind"] == "Linear" and rows["0"]["precision"] == "int8"
    with pytest.raises(ConfigError, match="float model"):
        layer_report(nn.Sequential(nn.Identity()), sim, x)
