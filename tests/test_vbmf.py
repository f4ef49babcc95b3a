"""EVBMF rank estimation (transforms/vbmf.py) and rank='vbmf' in DecomposeConfig."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convopt.compress_flow import parse_decompose_spec
from convopt.errors import ConfigError
from convopt.transforms.decompose import DecomposeConfig, decompose_
from convopt.transforms.vbmf import evbmf


def low_rank_plus_noise(rows: int, columns: int, rank: int, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(columns, rank, generator=g, dtype=torch.float64))
    signal = u @ torch.diag(torch.linspace(20, 10, rank, dtype=torch.float64)) @ v.T
    return signal + noise * torch.randn(rows, columns, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("rows, columns, rank, noise", [(100, 200, 5, 0.1), (200, 100, 8, 0.3), (64, 576, 10, 0.05),
                                                        (50, 50, 3, 0.2)])  # fmt: skip
def test_evbmf_finds_the_true_rank_and_the_noise_level(rows, columns, rank, noise):
    y = low_rank_plus_noise(rows, columns, rank, noise)
    estimate = evbmf(torch.linalg.svdvals(y), (rows, columns))
    assert estimate.rank == rank
    assert estimate.noise_variance == pytest.approx(noise**2, rel=0.1)
    pure = evbmf(torch.linalg.svdvals(y - low_rank_plus_noise(rows, columns, rank, 0.0)), (rows, columns))
    assert pure.rank == 0  # noise alone: nothing stands out


def test_evbmf_rejects_mismatched_input():
    with pytest.raises(ValueError, match="expected all 4 singular values"):
        evbmf(torch.ones(3), (4, 6))
    with pytest.raises(ValueError, match="zero"):
        evbmf(torch.zeros(4), (4, 6))


def test_tucker_vbmf_recovers_the_ranks_of_a_noisy_low_rank_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=1, bias=False)
    u_out, u_in = torch.linalg.qr(torch.randn(48, 6))[0], torch.linalg.qr(torch.randn(32, 4))[0]
    core = torch.randn(6, 4, 3, 3) * 5
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,rskl,is->oikl", u_out, core, u_in) + 0.01 * torch.randn(48, 32, 3, 3))
    model = nn.Sequential(conv)
    result = decompose_(model, DecomposeConfig("tucker", rank="vbmf"), (torch.randn(1, 32, 8, 8),))
    assert result.layers[0].ranks == (6, 4)
    assert result.layers[0].rel_error < 0.05


def test_vbmf_on_pure_noise_leaves_the_layer_with_a_reason():
    model = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False))  # default init: no structure
    result = decompose_(model, DecomposeConfig("svd", rank="vbmf"), (torch.randn(1, 16, 4, 4),))
    assert not result.layers and "VBMF finds no component" in result.skipped["0"]


def test_vbmf_config_and_cli():
    with pytest.raises(ConfigError, match="VBMF estimates"):
        DecomposeConfig("cp", rank="vbmf")
    with pytest.raises(ConfigError, match="or 'vbmf'"):
        DecomposeConfig("tucker", rank="auto")
    assert parse_decompose_spec("tucker:vbmf") == DecomposeConfig("tucker", rank="vbmf")
    assert parse_decompose_spec("svd:vbmf") == DecomposeConfig("svd", rank="vbmf")
    with pytest.raises(ConfigError, match="--decompose"):
        parse_decompose_spec("cp:vbmf")
