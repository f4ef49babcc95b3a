"""Latency-aware rank allocation (transforms/decompose_latency.py) and its wiring into decompose_."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from convopt.compress_flow import parse_decompose_spec
from convopt.errors import ConfigError
from convopt.transforms import decompose_latency as latency
from convopt.transforms.decompose import DecomposeConfig, decompose_
from convopt.transforms.decompose_latency import STEPS, Choice, allocate


def brute_force(choices: dict[str, list[Choice]], budget: float, tol: float = 0.05) -> float:
    best = float("inf")
    for combo in itertools.product(*choices.values()):
        macs = sum(c.macs for c in combo)
        if (1 - tol) * budget - 1e-6 <= macs <= budget:
            best = min(best, sum(c.seconds for c in combo))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_the_fastest_mix_in_the_budget_window(seed):
    generator = torch.Generator().manual_seed(seed)
    unit = 1000  # MACs multiples of budget / STEPS: the knapsack's rounding is exact, so it must match brute force
    choices = {}
    for layer in range(4):
        whole = int(torch.randint(1000, 2000, (1,), generator=generator))
        options = [Choice(None, whole * unit, float(torch.rand(1, generator=generator)) + 1.0)]
        for _ in range(3):
            macs = int(torch.randint(100, whole, (1,), generator=generator))
            options.append(Choice((macs,), macs * unit, float(torch.rand(1, generator=generator))))
        choices[f"l{layer}"] = options
    total = sum(o[0].macs for o in choices.values())
    budget = (total // 2 // unit // STEPS * STEPS or STEPS) * unit  # a multiple of STEPS units near half
    try:
        chosen = allocate(choices, budget)
    except ConfigError:
        assert brute_force(choices, budget) == float("inf")
        return
    macs = sum(c.macs for c in chosen.values())
    assert 0.95 * budget - 1e-6 <= macs <= budget
    assert list(chosen) == list(choices)
    assert sum(c.seconds for c in chosen.values()) == pytest.approx(brute_force(choices, budget))


def test_allocation_raises_when_no_mix_lands_in_the_window():
    choices = {"a": [Choice(None, 100, 1.0), Choice((1,), 90, 0.5)], "b": [Choice(None, 100, 1.0)]}
    with pytest.raises(ConfigError, match="no mix of the ranks tried lands"):
        allocate(choices, budget_macs=100)


def two_layer_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()


def test_decompose_spends_the_mac_cut_where_it_buys_time(monkeypatch):
    """Faked timings: cutting layer 0 saves time, decomposing layer 2 costs time -> 0 is cut, 2 stays whole."""

    def fake_times(modules, inputs, options, macs, skeleton, repeats=5, progress=None):
        out = {}
        for name in modules:
            slow = name == "2"
            whole = [Choice(None, macs[name], 1.0)]
            out[name] = whole + [Choice(r, m, 2.0 if slow else m / macs[name]) for r, m in options[name].items()]
        return out

    monkeypatch.setattr(latency, "time_choices", fake_times)
    model, x = two_layer_model(), torch.randn(2, 16, 12, 12)
    result = decompose_(model, DecomposeConfig("tucker", ratio=0.8, allocate="latency"), (x,))
    assert [d.name for d in result.layers] == ["0"]
    assert "keeps it whole" in result.skipped["2"]
    assert isinstance(model[2], nn.Conv2d) and isinstance(model[0], nn.Sequential)
    before = 12 * 12 * 2 * 9 * (16 * 32 + 32 * 32)
    after = result.layers[0].macs_after + 12 * 12 * 2 * 9 * 32 * 32
    assert 0.95 * 0.8 * before <= after <= 0.8 * before
    assert result.layers[0].ms_before == pytest.approx(1e3) and result.layers[0].ms_after < 1e3
    assert any("latency allocation over 2 layer(s)" in n for n in result.notes)


def test_decompose_with_real_timings_keeps_the_budget_and_the_model_runs():
    model, x = two_layer_model(), torch.randn(2, 16, 12, 12)
    result = decompose_(model, DecomposeConfig("tucker", ratio=0.5, allocate="latency"), (x,))
    total = 12 * 12 * 2 * 9 * (16 * 32 + 32 * 32)
    kept = sum(d.macs_after for d in result.layers)
    kept += sum(12 * 12 * 2 * 9 * m.in_channels * m.out_channels for n, m in model.named_children()
                if isinstance(m, nn.Conv2d))  # fmt: skip
    assert 0.45 * total <= kept <= 0.5 * total
    assert all(d.ms_before is not None and d.ms_after is not None for d in result.layers)
    assert "measured" in result.layers[0].describe()
    assert model(x).shape == (2, 32, 12, 12)


def test_equal_geometries_share_their_timings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 8, 10, 10)
    inputs = latency.layer_inputs(model, ["0", "1"], (x,))
    assert torch.equal(inputs["0"], x) and inputs["1"].shape == x.shape
    options = {"0": {(4, 8): 1}, "1": {(4, 8): 1}}
    built = []

    def skeleton(module, ranks):
        built.append(ranks)
        return nn.Sequential(nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 3, padding=1))

    times = latency.time_choices(dict(model.named_children()), inputs, options, {"0": 9, "1": 9}, skeleton, repeats=3)
    assert built == [(4, 8)]  # the second layer reuses the first one's measurement
    assert times["0"] == times["1"] and times["0"][0].ranks is None and times["0"][1].seconds > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 0.5, "allocate": "fastest"}, "allocate='fastest'"),
    ({"energy": 0.9, "allocate": "latency"}, "give ratio="),
])  # fmt: skip
def test_config_rejects_bad_allocations(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DecomposeConfig("tucker", **kwargs)


def test_latency_allocation_needs_example_inputs():
    with pytest.raises(ConfigError, match="pass example inputs"):
        decompose_(two_layer_model(), DecomposeConfig("tucker", ratio=0.5, allocate="latency"))


def test_cli_spec_for_latency_allocation():
    assert parse_decompose_spec("tucker:0.5:latency") == DecomposeConfig("tucker", ratio=0.5, allocate="latency")
    assert parse_decompose_spec("tucker:0.5").allocate == "layer"
    for bad in ("cp:4:latency", "tucker:0.5:fastest", "svd:0.9:latency"):
        with pytest.raises(ConfigError, match="--decompose"):
            parse_decompose_spec(bad)


def test_replacements_of_a_channels_last_model_stay_channels_last():
    x = torch.randn(2, 16, 12, 12)
    plain, model = two_layer_model(), two_layer_model().to(memory_format=torch.channels_last)
    for m in (plain, model):
        decompose_(m, DecomposeConfig("tucker", rank=16), (x,))
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(weights) > 2 and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-4)
