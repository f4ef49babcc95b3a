"""Time the `sparse` conv against F.conv2d on magnitude-pruned ResNet-18 layers, side by side; find the break-even.

    .venv/bin/python benchmarks/bench_sparse.py [--threads 2] [--batch 1 8] [--repeats 7] [--json PATH]

For each layer shape and batch size, the weight is magnitude-pruned (Han et al. 2015: keep the largest |w|)
to each sparsity, plus the 2:4 pattern. F.conv2d gets the dense weight, zeros included; `sparse` gets it
prepared once (prepare is not timed). The two are timed alternately in one loop (after warm-up) so load
from other processes hits both alike; the median of the repeats is reported. Ratio = direct / sparse time:
above 1 the sparse kernel is faster. The break-even is where the ratio curve crosses 1 (linear
interpolation between the measured sparsities). The load average is printed before and after: on a shared
2-core machine, other processes make multi-threaded timings erratic (a thread waiting for a core stalls
every parallel region, and the sparse path has one per tap and column block).
"""

from __future__ import annotations

import argparse
import json
import os

from typing import Any, Callable

import torch
import torch.nn.functional as F

from convopt.analysis.hardware import measure_profile
from convopt.io import atomic_write_text
from convopt.kernels.sparse import break_even_sparsity, n_m_mask, prepare, run, sparsity
from convopt.spec import ConvSpec
from convopt.timing import interleaved_times

LAYERS = {"layer2.conv 128@28": (128, 28), "layer3.conv 256@14": (256, 14)}  # ResNet-18 3x3, stride 1
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def magnitude_prune(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the `fraction` smallest-magnitude entries (one threshold for the whole layer)."""
    k = int(round(fraction * weight.numel()))
    if k == 0:
        return weight.clone()
    threshold = weight.abs().flatten().kthvalue(k).values
    return weight * (weight.abs() > threshold)


def side_by_side(fns: dict[str, Callable[[], Any]], warmup: int = 2, repeats: int = 7) -> dict[str, float]:
    """Median seconds per candidate, timed in alternating rounds (convopt.timing.interleaved_times)."""
    times = interleaved_times(fns, warmup=warmup, repeats=repeats)
    return {name: timing.median_s for name, timing in times.items()}


def crossing(points: list[tuple[float, float]]) -> float | None:
    """Lowest sparsity from which the ratio stays >= 1 (interpolated); None if it never does."""
    points = sorted(points)
    if not points or points[-1][1] < 1:
        return None
    i = len(points) - 1
    while i > 0 and points[i - 1][1] >= 1:
        i -= 1
    if i == 0:
        return points[0][0]
    (s0, r0), (s1, r1) = points[i - 1], points[i]
    return s0 + (1 - r0) * (s1 - s0) / (r1 - r0)


def bench_case(name: str, channels: int, size: int, batch: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator)
    dense = torch.randn(channels, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
    spec = ConvSpec.create(channels, channels, (3, 3), padding=1, bias=False)
    variants = [(f"{s:.2f}", magnitude_prune(dense, s)) for s in SPARSITIES]
    variants.append(("2:4", dense * n_m_mask(dense, 2, 4)))
    rows = []
    for label, weight in variants:
        prepared = prepare(weight, spec)
        fns = {"direct": lambda: F.conv2d(x, weight, padding=1), "sparse": lambda: run(x, prepared, None, spec)}
        error = float((fns["direct"]() - fns["sparse"]()).abs().max())
        t = side_by_side(fns, repeats=repeats)
        r = {"sparsity": label, "measured_sparsity": sparsity(weight), "nnz": prepared.nnz,
             "n_m_stored": prepared.n_m is not None, "direct_ms": t["direct"] * 1e3, "sparse_ms": t["sparse"] * 1e3,
             "ratio": t["direct"] / t["sparse"], "max_abs_diff": error,
             "direct_gmacs": spec.macs(x.shape) / t["direct"] / 1e9,
             "sparse_nonzero_gmacs": prepared.macs(spec, x.shape) / t["sparse"] / 1e9}  # fmt: skip
        rows.append(r)
        note = "  (2:4 form stored)" if r["n_m_stored"] else ""
        print(f"  {label:>5s} {r['measured_sparsity']:7.3f} {r['direct_ms']:9.3f} {r['sparse_ms']:9.3f}"
              f" {r['ratio']:7.2f}x {r['sparse_nonzero_gmacs']:8.2f} {r['max_abs_diff']:9.1e}{note}")  # fmt: skip
    curve = [(r["measured_sparsity"], r["ratio"]) for r in rows if r["sparsity"] != "2:4"]
    even = crossing(curve)
    # Rate model: the sparse kernel's non-zero MAC rate at 90% against direct's dense rate.
    at90 = next(r for r in rows if r["sparsity"] == "0.90")
    model = break_even_sparsity(at90["direct_gmacs"], at90["sparse_nonzero_gmacs"])
    print(f"  break-even: measured {'never' if even is None else f'{even:.3f}'}, rate model {model:.3f}")
    return {"layer": name, "channels": channels, "size": size, "batch": batch, "rows": rows, "break_even": even,
            "break_even_rate_model": model}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick-profile", action="store_true", help="smaller sizes for the machine profile")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer are too noisy)")
    torch.set_num_threads(args.threads)
    profile = measure_profile(args.threads, quick=args.quick_profile)
    print(f"machine: {profile.fingerprint.get('cpu_model', '?')}, {args.threads} threads, torch {torch.__version__}")
    print(f"  measured fp32 GEMM peak {profile.peak_gflops['fp32']:.1f} GFLOP/s,"
          f" copy bandwidth {profile.bandwidth_gbs:.1f} GB/s")  # fmt: skip
    load_before = os.getloadavg()
    print(f"  load average before: {load_before[0]:.2f} (1 min) on {os.cpu_count()} cores")
    results = []
    with torch.inference_mode():
        for name, (channels, size) in LAYERS.items():
            for batch in args.batch:
                print(f"\n{name} 3x3 pad 1, batch {batch} (fp32; ms = median of {args.repeats})")
                print(f"  {'target':>5s} {'actual':>7s} {'direct ms':>9s} {'sparse ms':>9s} {'ratio':>8s}"
                      f" {'GMAC/s*':>8s} {'max|diff|':>9s}")  # fmt: skip
                results.append(bench_case(name, channels, size, batch, args.repeats))
    print("\n* GMAC/s of the sparse kernel counts only non-zero multiplications (nnz x output positions).")
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} (1 min)")
    print("break-even sparsity (sparse faster above it):")
    for r in results:
        even = "never" if r["break_even"] is None else f"{r['break_even']:.3f}"
        print(f"  {r['layer']} batch {r['batch']}: {even} (rate model {r['break_even_rate_model']:.3f})")
    if args.json:
        payload = {"hardware": profile.to_dict(), "threads": args.threads, "repeats": args.repeats,
                   "load_average": [load_before[0], load_after[0]], "results": results}  # fmt: skip
        atomic_write_text(args.json, json.dumps(payload, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
