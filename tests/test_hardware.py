"""Hardware profile: plausible figures, a cache keyed by the machine fingerprint, re-measuring on demand."""

from __future__ import annotations

import json

import torch

from convopt.analysis import hardware
from convopt.analysis.hardware import HardwareProfile, load_or_measure, machine_fingerprint


def test_quick_profile_is_physically_plausible(quick_profile):
    # Lower bounds any working CPU clears; upper bound: no 2020s CPU core does 1 TFLOP/s fp32.
    threads = quick_profile.threads
    assert 1.0 < quick_profile.peak_gflops["fp32"] < 1000.0 * threads
    assert 0.5 < quick_profile.bandwidth_gbs < 1000.0
    assert quick_profile.ridge_point("float32") == quick_profile.peak_macs_per_s() / (quick_profile.bandwidth_gbs * 1e9)
    for key in ("fp32", "bf16", "int8"):  # each either measured or explained
        assert key in quick_profile.peak_gflops or key in quick_profile.unavailable


def test_profile_round_trips_through_json(quick_profile):
    again = HardwareProfile.from_dict(json.loads(json.dumps(quick_profile.to_dict())))
    assert again == quick_profile


def test_fingerprint_depends_on_threads_and_torch():
    one, two = machine_fingerprint(1), machine_fingerprint(2)
    assert one["id"] != two["id"]
    assert one["torch_version"] == torch.__version__ and one["cpu_model"]


def test_cache_is_used_then_rebuilt_on_reprofile_or_corruption(tmp_path, monkeypatch, quick_profile):
    monkeypatch.setenv("CONVOPT_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(threads, quick=False, log=None):
        calls.append(threads)
        return quick_profile

    monkeypatch.setattr(hardware, "measure_profile", fake_measure)
    threads = quick_profile.threads
    load_or_measure(threads)
    load_or_measure(threads)
    assert len(calls) == 1  # second call came from the cache
    load_or_measure(threads, reprofile=True)
    assert len(calls) == 2
    (cached,) = (tmp_path / "hardware").glob("*.json")
    cached.write_text("{not json")
    messages = []
    load_or_measure(threads, log=messages.append)
    assert len(calls) == 3 and "unreadable" in messages[0]
    assert json.loads(cached.read_text())["peak_gflops"] == quick_profile.peak_gflops
