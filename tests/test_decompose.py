"""Tensor decomposition: exact recovery of low-rank weights, equal outputs, rank choice, MAC targets, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import convopt
from convopt.errors import ConfigError
from convopt.transforms import decompose_factors as factors
from convopt.transforms.config import config_from_json, config_to_json
from convopt.transforms.decompose import DecomposeConfig, decompose_
from convopt.transforms.decompose_rank import (
    LayerGeometry, energy_rank, linear_rank_for_macs, tucker2_cost, tucker2_ranks_for_macs,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")
f64 = torch.float64


def _tucker_weight(c_out: int, c_in: int, r_out: int, r_in: int, kernel=(3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    core = torch.randn(r_out, r_in, *kernel, generator=g, dtype=f64)
    return factors.tucker2_to_weight(torch.randn(c_out, r_out, generator=g, dtype=f64), core,
                                     torch.randn(c_in, r_in, generator=g, dtype=f64))  # fmt: skip


def _cp_weight(c_out: int, c_in: int, rank: int, kernel=(3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    parts = [torch.randn(n, rank, generator=g, dtype=f64) for n in (c_out, c_in, *kernel)]
    return factors.cp_to_weight(*parts)


def _conv_with(weight: torch.Tensor, bias: bool = True, **kw) -> nn.Module:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=bias, dtype=f64, **kw)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return nn.Sequential(conv).eval()


def _decomposed_matches(model: nn.Module, config: DecomposeConfig, x: torch.Tensor, kinds: list[type]) -> float:
    reference = model(x)
    result = decompose_(model, config)
    assert [type(m) for m in model[0]] == kinds and len(result.layers) == 1
    torch.testing.assert_close(model(x), reference, rtol=1e-9, atol=1e-9)
    return result.layers[0].rel_error


def test_tucker2_recovers_a_known_multilinear_rank_and_the_layer_output():
    w = _tucker_weight(24, 20, 6, 5)
    u_out, core, u_in = factors.tucker2(w, 6, 5)
    assert factors.relative_error(w, factors.tucker2_to_weight(u_out, core, u_in)) < 1e-5
    torch.testing.assert_close(u_out.T @ u_out, torch.eye(6, dtype=f64))  # orthonormal factors
    assert factors.relative_error(w, factors.tucker2_to_weight(*factors.tucker2(w, 4, 5))) > 1e-2  # too low: lossy
    model = _conv_with(_tucker_weight(24, 20, 6, 6), stride=2, padding=1, dilation=2, padding_mode="reflect")
    error = _decomposed_matches(model, DecomposeConfig("tucker", rank=6), torch.randn(2, 20, 13, 11, dtype=f64),
                                [nn.Conv2d] * 3)  # fmt: skip
    assert error < 1e-5
    assert [m.kernel_size for m in model[0]] == [(1, 1), (3, 3), (1, 1)] and model[0].core.stride == (2, 2)


def test_tucker2_on_conv1d_and_with_one_mode_at_full_rank():
    conv = nn.Conv1d(3, 16, 5, padding=2, dtype=f64)
    with torch.no_grad():
        conv.weight.copy_(_tucker_weight(16, 3, 2, 3, kernel=(5,)))
    model, x = nn.Sequential(conv), torch.randn(2, 3, 30, dtype=f64)
    reference = model(x)
    result = decompose_(model, DecomposeConfig("tucker", energy=1 - 1e-9))  # R_in = C_in = 3: no reduce 1x1
    assert result.layers[0].ranks == (2, 3)
    assert list(model[0]._modules) == ["core", "expand"] and model[0].core.in_channels == 3
    torch.testing.assert_close(model(x), reference)


def test_cp_recovers_a_known_rank_and_the_layer_output():
    w = _cp_weight(12, 10, 4, kernel=(3, 5))
    assert factors.relative_error(w, factors.cp_to_weight(*factors.cp(w, 4))) < 1e-5
    model = _conv_with(w, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    error = _decomposed_matches(model, DecomposeConfig("cp", rank=4), torch.randn(2, 10, 12, 15, dtype=f64),
                                [nn.Conv2d] * 4)  # fmt: skip
    assert error < 1e-5
    vertical, horizontal = model[0].vertical, model[0].horizontal
    assert vertical.groups == horizontal.groups == 4
    assert vertical.kernel_size == (3, 1) and horizontal.kernel_size == (1, 5)


def test_svd_recovers_low_rank_1x1_convs_and_linears():
    g = torch.Generator().manual_seed(3)
    low = torch.randn(32, 5, generator=g, dtype=f64) @ torch.randn(5, 24, generator=g, dtype=f64)
    first, second = factors.svd(low, 5)
    assert factors.relative_error(low, second @ first) < 1e-5
    model = _conv_with(low[:, :, None, None], stride=2, padding=1, padding_mode="circular")
    assert _decomposed_matches(model, DecomposeConfig("svd", rank=5), torch.randn(2, 24, 9, 9, dtype=f64),
                               [nn.Conv2d] * 2) < 1e-5  # fmt: skip
    linear = nn.Linear(24, 32, dtype=f64)
    with torch.no_grad():
        linear.weight.copy_(low)
    assert _decomposed_matches(nn.Sequential(linear), DecomposeConfig("svd", energy=1 - 1e-9),
                               torch.randn(3, 7, 24, dtype=f64), [nn.Linear] * 2) < 1e-5  # fmt: skip


def test_energy_picks_the_true_ranks_and_skips_layers_that_would_grow():
    model = _conv_with(_tucker_weight(40, 32, 7, 3))
    result = decompose_(model, DecomposeConfig("tucker", energy=1 - 1e-9))
    assert result.layers[0].ranks == (7, 3)
    full = _conv_with(torch.randn(8, 8, 3, 3, dtype=f64))
    result = decompose_(full, DecomposeConfig("tucker", energy=1.0))
    assert "would not reduce MACs" in result.skipped["0"] and isinstance(full[0], nn.Conv2d)
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9/14, 13/14, 1
    assert [energy_rank(s, e) for e in (0.5, 0.9, 13 / 14, 0.95, 1.0)] == [1, 2, 2, 3, 3]


def test_mac_target_search_prefers_aligned_ranks_and_stays_in_the_window():
    g = LayerGeometry(64, 64, (3, 3), in_px=100, out_px=100, mid_px=100)
    flat = torch.linspace(1 / 64, 1, 64, dtype=f64)  # a flat spectrum
    r_out, r_in = tucker2_ranks_for_macs(g, 0.3 * g.macs(), flat, flat)
    macs = tucker2_cost(g, r_out, r_in)[0]
    assert 0.95 * 0.3 * g.macs() <= macs <= 0.3 * g.macs() and r_out % 8 == 0 and r_in % 8 == 0
    assert linear_rank_for_macs(10, 100, 405.0) == 40  # 40 is aligned and in [0.95, 1] x target
    assert linear_rank_for_macs(10, 100, 415.0) == 40  # 41 is in the window too, but 40 is aligned
    assert linear_rank_for_macs(10, 100, 5.0) == 1  # unreachable: the smallest rank


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_resnet18_3x3_layers_hit_the_mac_target():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model, x = resnet18().eval(), torch.randn(1, 3, 64, 64)
    flops_before = _flops(model, x)
    config = config_from_json(config_to_json(DecomposeConfig("tucker", ratio=0.5, modules="layer*")))
    assert config == DecomposeConfig("tucker", ratio=0.5, modules="layer*")
    result = decompose_(model, config, (x,))
    assert len(result.layers) == 16 and set(result.skipped) == {f"layer{i}.0.downsample.0" for i in (2, 3, 4)}
    assert all("use method='svd'" in reason for reason in result.skipped.values())
    ratios = [d.macs_after / d.macs_before for d in result.layers]
    assert all(0.45 <= r <= 0.5 for r in ratios), ratios
    total_before = sum(d.macs_before for d in result.layers)
    total_after = sum(d.macs_after for d in result.layers)
    assert abs(total_after / total_before - 0.5) <= 0.05 * 0.5
    assert _flops(model, x) // 2 == flops_before // 2 - total_before + total_after  # MAC formulas = torch's counter
    assert all(0.0 < d.rel_error < 1.0 for d in result.layers)


def test_registered_handler_records_changes_and_output_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2), nn.Flatten(),
                          nn.LazyLinear(10))  # fmt: skip
    x = torch.randn(2, 3, 12, 12)
    reference = model(x)
    config = DecomposeConfig("tucker", ratio=0.5)
    out, report = convopt.apply(model, config, example_inputs=x, max_rel_error=float("inf"))  # lossy: no budget
    record = report.steps[0]
    assert set(record.changed) == {"0", "2"} and "Linear layer" in record.skipped["4"]
    assert all("relative reconstruction error" in text and "MACs" in text for text in record.changed.values())
    assert "2 layer(s) decomposed" in record.notes[0]
    assert 0.0 < report.max_rel_error < 1.0 and out(x).shape == reference.shape
    assert isinstance(model[0], nn.Conv2d)  # apply works on a copy


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=0.0), "strictly between 0 and 1"), (dict(ratio=1.0), "strictly between 0 and 1"),
    (dict(ratio=1.5), "strictly between 0 and 1"), (dict(rank=0), "integer >= 1"), (dict(rank=-3), "integer >= 1"),
    (dict(rank=True), "integer >= 1"), (dict(energy=0.0), r"\(0, 1\]"), (dict(), "exactly one of"),
    (dict(ratio=0.5, rank=4), "exactly one of"), (dict(method="cp", energy=0.9), "no singular values"),
    (dict(method="tt", ratio=0.5), "tucker, cp, svd"),
])  # fmt: skip
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DecomposeConfig(**kwargs)


def test_patterns_that_match_nothing_and_layers_that_are_skipped_with_reasons():
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(32, 32, 3, groups=32), nn.ConvTranspose2d(32, 32, 3),
                          nn.Conv2d(32, 64, 3, groups=2))  # fmt: skip
    with pytest.raises(ConfigError, match=r"modules='head\.\*'\) selects no conv or linear layer; .* are 0, 1, 2, 3"):
        decompose_(model, DecomposeConfig("tucker", ratio=0.5, modules="head.*"))
    with pytest.raises(ConfigError, match=r"matches no layer it can decompose.*groups=32"):
        decompose_(model, DecomposeConfig("tucker", ratio=0.5, modules="1"))
    with pytest.raises(ConfigError, match="SVD handles 1x1 convs"):
        decompose_(model, DecomposeConfig("svd", rank=4, modules="0"))
    result = decompose_(model, DecomposeConfig("tucker", ratio=0.5))
    assert [d.name for d in result.layers] == ["0"]
    assert "depthwise" in result.skipped["1"] and "groups=32" in result.skipped["1"]
    assert "transposed" in result.skipped["2"] and "groups=2" in result.skipped["3"]
    assert isinstance(model[1], nn.Conv2d) and isinstance(model[2], nn.ConvTranspose2d)  # untouched
    record = convopt.apply_(nn.Sequential(nn.Conv2d(8, 8, 3)), DecomposeConfig("cp", rank=2)).steps[0]
    assert "per output position" in record.notes[0] and "CP rank 2" in record.changed["0"]
    assert json.loads(config_to_json(DecomposeConfig("svd", energy=0.9)))["energy"] == 0.9


def test_lazy_layers_are_skipped_until_initialised():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(ConfigError, match="lazy layer not initialised"):
        decompose_(model, DecomposeConfig("svd", rank=2, modules="2"))
    model(torch.randn(1, 3, 6, 6))
    assert [d.name for d in decompose_(model, DecomposeConfig("svd", rank=2, modules="2")).layers] == ["2"]
