"""Unstructured magnitude pruning and 2:4: exact sparsity, masked-dense reference, the sparse algorithm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import convopt
from convopt.data import load_mnist
from convopt.errors import ConfigError
from convopt.kernels.sparse import is_n_m_sparse, prepare
from convopt.models import default_model
from convopt.spec import ConvSpec
from convopt.transforms import AlgorithmConfig, PruneConfig, prune_
from convopt.transforms.prune_schedule import prune_iteratively

pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTED = (nn.Conv2d, nn.Linear)


def layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED)}


@torch.no_grad()
def masked_reference(model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the dense model with the given keep-masks multiplied in (the oracle)."""
    reference = copy.deepcopy(model)
    for name, m in layers(reference).items():
        if name in keep:
            m.weight.mul_(keep[name])
    return reference


def smallest_k_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """Independent oracle: drop the k smallest |w| by a full sort (random weights have no ties)."""
    order = w.abs().flatten().argsort()
    keep = torch.ones(w.numel(), dtype=w.dtype)
    keep[order[:k]] = 0
    return keep.view(w.shape)


def two_of_four_mask(w: torch.Tensor) -> torch.Tensor:
    """Independent oracle: per (out, tap), in each 4 consecutive input channels keep the 2 largest |w|."""
    g = w.movedim(1, -1)  # (out, *kernel, in)
    g = g.reshape(*g.shape[:-1], g.shape[-1] // 4, 4)
    ranks = g.abs().argsort(dim=-1).argsort(dim=-1)  # 0 = smallest in its group
    keep = (ranks >= 2).to(w.dtype).reshape(*g.shape[:-2], -1)
    return keep.movedim(-1, 1)


def test_unstructured_80_percent_per_layer_is_exact_and_matches_the_masked_reference():
    model, x = default_model(), torch.rand(4, 1, 28, 28)
    keep = {n: smallest_k_mask(m.weight.detach(), round(0.8 * m.weight.numel())) for n, m in layers(model).items()}
    reference = masked_reference(model, keep)
    record = prune_(model, PruneConfig(kind="unstructured", ratio=0.8, scope="layer"))
    for name, m in layers(model).items():
        assert int((m.weight == 0).sum()) == round(0.8 * m.weight.numel()) == record.layers[name]["zeros"]
        assert torch.equal(m.weight != 0, keep[name] != 0)
    total = sum(m.weight.numel() for m in layers(model).values())
    assert record.sparsity == sum(round(0.8 * m.weight.numel()) for m in layers(model).values()) / total
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_unstructured_global_scope_counts_exactly_and_varies_per_layer():
    model = default_model()
    weights = torch.cat([m.weight.detach().abs().flatten() for m in layers(model).values()])
    k = round(0.8 * weights.numel())
    record = prune_(model, PruneConfig(kind="unstructured", ratio=0.8, scope="global"))
    zeros = sum(int((m.weight == 0).sum()) for m in layers(model).values())
    assert zeros == k and record.sparsity == k / weights.numel()
    threshold = weights.sort().values[k - 1]
    for m in layers(model).values():  # one threshold for all: survivors are all above it
        assert bool((m.weight.abs()[m.weight != 0] >= threshold).all())
    sparsities = [v["sparsity"] for v in record.layers.values()]
    assert max(sparsities) - min(sparsities) > 0.1


def test_two_of_four_is_exact_and_matches_the_masked_reference():
    model, x = default_model(), torch.rand(4, 1, 28, 28)
    keep = {n: two_of_four_mask(m.weight.detach()) for n, m in layers(model).items() if m.weight.shape[1] % 4 == 0}
    reference = masked_reference(model, keep)
    record = prune_(model, PruneConfig(kind="n:m"))
    assert "stem.0" in record.skipped and "multiple of m=4" in record.skipped["stem.0"]  # 1 input channel
    for name, m in layers(model).items():
        if name in keep:
            assert record.layers[name]["sparsity"] == 0.5 and torch.equal(m.weight != 0, keep[name] != 0)
            assert is_n_m_sparse(m.weight.detach() if m.weight.dim() > 2 else m.weight.detach()[..., None], 2, 4)
    assert record.sparsity == 0.5
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("config", [PruneConfig(kind="unstructured", ratio=0.8), PruneConfig(kind="n:m", n=2, m=4)])
def test_the_sparse_algorithm_runs_the_pruned_model(config):
    model, x = default_model(), torch.rand(2, 1, 28, 28)
    prune_(model, config)
    with torch.no_grad():
        dense = model(x)
    sparse_model, report = convopt.apply(model, AlgorithmConfig("sparse"), example_inputs=x)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(report.steps[0].changed) == sorted(convs) and set(report.steps[0].changed.values()) == {"sparse"}
    with torch.no_grad():
        torch.testing.assert_close(sparse_model(x), dense, rtol=1e-4, atol=1e-4)
    conv = model.layer2.conv2
    y = convopt.conv(x.new_ones(1, 32, 14, 14), conv.weight, padding=1, algorithm="sparse")
    torch.testing.assert_close(y, conv(x.new_ones(1, 32, 14, 14)), rtol=1e-4, atol=1e-4)
    if config.kind == "n:m":  # the kernel keeps the compact 2:4 form it detects
        assert prepare(conv.weight.detach(), ConvSpec.from_module(conv)).n_m is not None


def test_taylor_unstructured_and_the_iterative_cubic_schedule():
    x, y = load_mnist("train")
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    model = default_model()
    config = PruneConfig(kind="unstructured", ratio=0.5, criterion="taylor", scope="layer")
    record = prune_(model, config, calibration=batches)
    assert all(v["sparsity"] == pytest.approx(0.5, abs=1e-3) for v in record.layers.values())

    def finetune(model, step):  # moves every weight, zeros included: the schedule must restore the zeros
        with torch.no_grad():
            for m in layers(model).values():
                m.weight.add_(1e-3)

    model = default_model()
    schedule = prune_iteratively(model, PruneConfig(kind="unstructured", ratio=0.8), steps=3, finetune=finetune)
    ratios = [t["ratio"] for t in schedule.trajectory]
    assert ratios[0] == 0 and ratios[1] > 0.8 * 19 / 27 - 0.01 and ratios[-1] == pytest.approx(0.8, abs=1e-4)
    zeros = sum(int((m.weight == 0).sum()) for m in layers(model).values())
    assert zeros == round(0.8 * sum(m.weight.numel() for m in layers(model).values()))
    with pytest.raises(ConfigError, match="steps=1"):
        prune_iteratively(default_model(), PruneConfig(kind="n:m"), steps=2)


def test_bad_unstructured_configs():
    with pytest.raises(ConfigError, match="contradicts"):
        PruneConfig(kind="n:m", ratio=0.8)
    with pytest.raises(ConfigError, match="0 < n < m"):
        PruneConfig(kind="n:m", n=4, m=4)
    with pytest.raises(ConfigError, match="structured"):
        PruneConfig(kind="unstructured", ratio=0.5, criterion="bn")
    with pytest.raises(ConfigError, match="matches no conv/linear layer"):
        prune_(default_model(), PruneConfig(kind="unstructured", ratio=0.5, modules="nothing*"))
    with pytest.raises(ConfigError, match="no selected layer can take"):
        prune_(default_model(), PruneConfig(kind="n:m", modules="stem.0"))
