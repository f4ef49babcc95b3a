"""HardwareProfile: what this machine can do, measured, cached per machine fingerprint.

Peak GEMM rates come from square `torch.mm` calls (and `torch._int_mm` for int8) at the thread count
in use; memory bandwidth from a large tensor copy, counting bytes read plus bytes written (STREAM's
"copy" convention). Each figure is the median of repeated runs after warm-up. Together they are the
roofline: a layer of arithmetic intensity I (MACs/byte) can reach at most min(peak, I x bandwidth).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import torch

from convopt.errors import HardwareProfileError
from convopt.io import atomic_write_text, cache_dir
from convopt.timing import median_time

_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8",
                      "amx_tile", "asimd", "sve", "neon")  # fmt: skip
PROFILE_VERSION = 1


def cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.processor(), platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: the model string from platform is all we have
        pass
    return model, sorted(f for f in flags if f in _FLAGS_OF_INTEREST)


def machine_fingerprint(threads: int) -> dict[str, Any]:
    """The facts a measured profile depends on; any change means re-measuring."""
    model, flags = cpu_model_and_flags()
    facts = {
        "cpu_model": model,
        "cpu_flags": flags,
        "threads": int(threads),
        "torch_version": torch.__version__,
        "arch": platform.machine(),
        "profile_version": PROFILE_VERSION,
    }
    facts["id"] = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return facts


@dataclass
class HardwareProfile:
    """Measured peaks of this machine. peak_gflops: fp32/bf16 in GFLOP/s, int8 in GOP/s (2 ops per MAC)."""

    fingerprint: dict[str, Any]
    peak_gflops: dict[str, float]
    bandwidth_gbs: float
    threads: int
    measured_at: str
    method: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def peak_macs_per_s(self, dtype: str = "float32") -> float:
        """Peak multiply-accumulates per second for a tensor dtype (falls back to fp32 for other floats)."""
        key = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8", "uint8": "int8"}.get(dtype, "fp32")
        return self.peak_gflops.get(key, self.peak_gflops["fp32"]) * 1e9 / 2

    def ridge_point(self, dtype: str = "float32") -> float:
        """Arithmetic intensity (MACs/byte) above which a layer is compute-bound."""
        return self.peak_macs_per_s(dtype) / (self.bandwidth_gbs * 1e9)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ridge_point_macs_per_byte"] = {k: self.ridge_point(d) for k, d in
                                             (("fp32", "float32"), ("bf16", "bfloat16"))}  # fmt: skip
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardwareProfile":
        fields = {k: data[k] for k in ("fingerprint", "peak_gflops", "bandwidth_gbs", "threads", "measured_at")}
        return cls(**fields, method=data.get("method", {}), unavailable=data.get("unavailable", {}))


def _gemm_rate(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Median rate of an n x n x n GEMM, in G(FL)OP/s with 2 ops per MAC."""
    if dtype == torch.int8:
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        seconds = median_time(lambda: torch._int_mm(a, b), repeats=repeats).median_s
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        seconds = median_time(lambda: torch.mm(a, b), repeats=repeats).median_s
    return 2 * n**3 / seconds / 1e9


def _copy_bandwidth(megabytes: int, repeats: int) -> float:
    """Median bandwidth of dst.copy_(src) in GB/s, counting the bytes read and the bytes written."""
    numel = megabytes * 2**20 // 4
    src, dst = torch.randn(numel), torch.empty(numel)
    seconds = median_time(lambda: dst.copy_(src), repeats=repeats).median_s
    return 2 * numel * 4 / seconds / 1e9


def measure_profile(threads: int | None = None, *, quick: bool = False, log: Callable[[str], None] | None = None
                    ) -> HardwareProfile:  # fmt: skip
    """Run the microbenchmarks now (a few seconds; `quick` uses smaller sizes, for tests)."""
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    gemm_n, copy_mb, repeats = (512, 32, 3) if quick else (2048, 256, 7)
    peaks: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    say = log or (lambda message: None)
    try:
        for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
            say(f"measuring peak {key} GEMM ({gemm_n}^3, {threads} threads)")
            try:
                peaks[key] = _gemm_rate(dtype, gemm_n, repeats)
            except RuntimeError as exc:  # e.g. no int8 GEMM kernel on this CPU: recorded, not hidden
                unavailable[key] = str(exc).splitlines()[0]
        say(f"measuring memory bandwidth ({copy_mb} MB copy)")
        bandwidth = _copy_bandwidth(copy_mb, repeats)
    finally:
        torch.set_num_threads(previous)
    if "fp32" not in peaks or bandwidth <= 0:
        raise HardwareProfileError(f"fp32 GEMM microbenchmark failed: {unavailable.get('fp32', 'no figure')}")
    return HardwareProfile(
        fingerprint=machine_fingerprint(threads),
        peak_gflops=peaks,
        bandwidth_gbs=bandwidth,
        threads=threads,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        method={"gemm_n": gemm_n, "copy_megabytes": copy_mb, "repeats": repeats, "statistic": "median",
                "quick": quick, "python": sys.version.split()[0]},  # fmt: skip
        unavailable=unavailable,
    )


def load_or_measure(threads: int | None = None, *, reprofile: bool = False, quick: bool = False,
                    log: Callable[[str], None] | None = None) -> HardwareProfile:  # fmt: skip
    """The cached profile for this machine fingerprint, measured (and cached atomically) when missing."""
    threads = threads or torch.get_num_threads()
    fingerprint = machine_fingerprint(threads)
    path = cache_dir() / "hardware" / f"{fingerprint['id']}{'-quick' if quick else ''}.json"
    if path.exists() and not reprofile:
        try:
            profile = HardwareProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if profile.fingerprint == fingerprint:
                return profile
        except (ValueError, KeyError, TypeError) as exc:  # corrupt cache: say so, then re-measure
            (log or print)(f"hardware profile cache {path} is unreadable ({exc}); re-measuring")
    profile = measure_profile(threads, quick=quick, log=log)
    atomic_write_text(path, json.dumps(profile.to_dict(), indent=2))
    return profile
