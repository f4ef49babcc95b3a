"""`convopt bench`: side-by-side timing records, skip reasons, JSON, and CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from convopt.cli import main
from convopt.search import candidates
from convopt.search.bench import LayerCase, bench_case, magnitude_prune
from convopt.timing import interleaved_times
from convopt.spec import ConvSpec

SMALL = LayerCase("3x3 8 @12", ConvSpec.create(8, 8, (3, 3), padding=1, bias=False), (12, 12))


def test_bench_case_records_time_ratio_and_error_for_each_candidate():
    result = bench_case(SMALL, batch=2, repeats=2, sparsity=0.0, peak_gflops=100.0, algorithms=["direct", "im2col"])
    assert result.macs == SMALL.spec.macs((2, 8, 12, 12)) and result.pytorch_seconds > 0
    for candidate in result.candidates:
        assert candidate.skipped is None and candidate.seconds > 0
        assert candidate.speedup_vs_pytorch == pytest.approx(result.pytorch_seconds / candidate.seconds)
        assert candidate.gflops == pytest.approx(2 * result.macs / candidate.seconds / 1e9)
        assert candidate.normwise_error < 1e-6


def test_candidates_over_the_workspace_limit_are_skipped_with_a_reason(monkeypatch):
    monkeypatch.setattr(candidates, "MAX_WORKSPACE_BYTES", 16)
    result = bench_case(SMALL, batch=1, repeats=1, sparsity=0.0, peak_gflops=100.0, algorithms=["im2col"])
    assert result.candidates[0].seconds is None and "scratch memory" in result.candidates[0].skipped


def test_unsupported_candidates_are_skipped_with_the_algorithms_reason():
    case = LayerCase("bf", ConvSpec.create(2, 2, (3, 3), bias=False), (6, 6))
    result = bench_case(case, batch=1, repeats=1, sparsity=0.0, peak_gflops=1.0, algorithms=["reference"])
    assert result.candidates[0].skipped is None  # reference supports fp32: timed like the rest


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_magnitude_prune_hits_the_requested_sparsity(sparsity):
    w = magnitude_prune(torch.randn(64, 32, 3, 3), sparsity)
    assert float((w == 0).float().mean()) == pytest.approx(sparsity, abs=1e-3)


def test_interleaved_times_gives_one_median_per_candidate():
    times = interleaved_times({"a": lambda: torch.ones(10).sum(), "b": lambda: torch.ones(1000).sum()}, repeats=3)
    assert set(times) == {"a", "b"} and all(len(t.samples_s) == 3 and t.median_s > 0 for t in times.values())


def test_cli_bench_json(capsys):
    code = main(["bench", "--suite", "depthwise", "--repeats", "1", "--algorithms", "direct", "--threads", "1",
                 "--json", "-"])  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["suite"] == "depthwise" and data["threads"] == 1 and len(data["cases"]) == 5
    assert all(case["candidates"][0]["algorithm"] == "direct" for case in data["cases"])
    assert "peak_gflops" in data["hardware"]


@pytest.mark.parametrize("argv,message", [
    (["bench", "--algorithms", "nope"], "unknown algorithm 'nope'"),
    (["bench", "--sparsity", "1.5"], "--sparsity"),
])  # fmt: skip
def test_cli_bench_bad_input(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
