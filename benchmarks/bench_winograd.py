"""Winograd F(2,3) / F(4,3) / F(6,3) against F.conv2d on ResNet-18's 3x3 stride-1 layers, side by side.

    .venv/bin/python benchmarks/bench_winograd.py [--threads 2] [--batch 8] [--repeats 9]
        [--layouts nchw,channels_last] [--variants winograd_f2,winograd_f4,winograd_f6] [--json PATH]

fp32. For every shape and input layout, F.conv2d and each Winograd variant are timed round-robin in the same
run (warm-up, then the median of the repeats); the Winograd-domain filters are prepared once outside the
timing, as the nn wrapper caches them. Printed per candidate: median time, speed-up over F.conv2d in the
same layout, effective GFLOP/s (direct-equivalent FLOPs = 2 x MACs of the direct conv / time), and a stage
breakdown (gather + input transform, batched GEMM, output transform) with the GEMM stage's rate as a % of
this machine's fp32 GEMM peak, measured in the same run by `convopt.analysis.hardware.measure_profile`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from convopt.analysis.hardware import measure_profile
from convopt.io import atomic_write_text
from convopt.kernels import get_algorithm
from convopt.kernels.winograd import channel_reduction, input_transform, output_transform, tiling
from convopt.spec import ConvSpec

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # ResNet-18 3x3 stride-1 layers: C_in = C_out, H = W


def round_robin(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call for each candidate, interleaved so drifting machine load hits all alike; the order
    rotates every round so no candidate always runs right after another's cache footprint."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for i in range(len(names)):
            name = names[(i + round_) % len(names)]
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def stage_times(x: torch.Tensor, prepared: torch.Tensor, spec: ConvSpec, m: int, warmup: int, repeats: int
                ) -> dict[str, float]:  # fmt: skip
    """Median seconds of the three stages of one Winograd call, each run on its real input."""
    t = tiling(x.shape, spec, m)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    v = input_transform(x, spec, t)
    mm = channel_reduction(v, prepared)
    stages = {
        "input": lambda: input_transform(x, spec, t),
        "gemm": lambda: channel_reduction(v, prepared),
        "output": lambda: output_transform(mm, None, t, channels_last),
    }
    return {name: statistics.median(ts) for name, ts in round_robin(stages, warmup, repeats).items()}


def bench_shape(c: int, hw: int, layout: str, variants: list[str], args: argparse.Namespace, peak: float
                ) -> list[dict[str, Any]]:  # fmt: skip
    x = torch.randn(args.batch, c, hw, hw)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3) / (3 * c**0.5)
    spec = ConvSpec.from_weight(weight, padding=1)
    flops = 2 * spec.macs(x.shape)
    fns: dict[str, Callable[[], Any]] = {"F.conv2d": lambda: F.conv2d(x, weight, None, 1, 1)}
    prepared = {}
    for name in variants:
        algorithm = get_algorithm(name)
        prepared[name] = algorithm.prepare(weight, spec)
        fns[name] = lambda algorithm=algorithm, u=prepared[name]: algorithm.run(x, u, None, spec)
    with torch.inference_mode():
        times = round_robin(fns, args.warmup, args.repeats)
        base = statistics.median(times["F.conv2d"])
        rows = []
        for name, ts in times.items():
            seconds = statistics.median(ts)
            row = {"shape": f"{c}x{hw}x{hw}", "layout": layout, "batch": args.batch, "candidate": name,
                   "ms": seconds * 1e3, "speedup": base / seconds, "gflops": flops / seconds / 1e9}  # fmt: skip
            if name != "F.conv2d":
                m = int(name.rsplit("f", 1)[1])
                t = tiling(x.shape, spec, m)
                stages = stage_times(x, prepared[name], spec, m, args.warmup, args.repeats)
                gemm_flops = 2 * t.a**2 * t.tiles * c * c
                row.update({f"{k}_ms": v * 1e3 for k, v in stages.items()})
                row["gemm_gflops"] = gemm_flops / stages["gemm"] / 1e9
                row["gemm_pct_peak"] = 100 * row["gemm_gflops"] / peak
                row["gemm_share"] = stages["gemm"] / sum(stages.values())
            rows.append(row)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'shape':12s} {'layout':13s} {'candidate':12s} {'ms':>8s} {'vs conv':>8s} {'GF/s':>7s} "
          f"{'in ms':>7s} {'gemm ms':>8s} {'out ms':>7s} {'gemm GF/s':>10s} {'% peak':>7s}")  # fmt: skip
    for r in rows:
        line = (f"{r['shape']:12s} {r['layout']:13s} {r['candidate']:12s} {r['ms']:8.2f} {r['speedup']:7.2f}x "
                f"{r['gflops']:7.1f}")  # fmt: skip
        if "gemm_ms" in r:
            line += (f" {r['input_ms']:7.2f} {r['gemm_ms']:8.2f} {r['output_ms']:7.2f} {r['gemm_gflops']:10.1f} "
                     f"{r['gemm_pct_peak']:6.0f}%")  # fmt: skip
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per candidate (median; >= 7)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--variants", default="winograd_f2,winograd_f4,winograd_f6")
    parser.add_argument("--shapes", default="all", help="comma-separated channel counts, e.g. 128,256")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.repeats < 7:
        parser.error("--repeats must be at least 7")
    torch.set_num_threads(args.threads)
    profile = measure_profile(args.threads)
    peak = profile.peak_gflops["fp32"]
    print(f"fp32 GEMM peak (torch.mm 2048^3, {args.threads} threads): {peak:.1f} GFLOP/s; "
          f"torch {torch.__version__}, batch {args.batch}")  # fmt: skip
    variants = args.variants.split(",")
    shapes = SHAPES if args.shapes == "all" else [s for s in SHAPES if str(s[0]) in args.shapes.split(",")]
    rows: list[dict[str, Any]] = []
    for c, hw in shapes:
        for layout in args.layouts.split(","):
            new = bench_shape(c, hw, layout, variants, args, peak)
            print_rows(new)
            rows += new
    print("\nbest Winograd variant per shape and layout (speed-up over F.conv2d in the same layout):")
    for c, hw in shapes:
        for layout in args.layouts.split(","):
            cands = [r for r in rows if r["shape"] == f"{c}x{hw}x{hw}" and r["layout"] == layout
                     and r["candidate"] != "F.conv2d"]  # fmt: skip
            best = max(cands, key=lambda r: r["speedup"])
            print(f"  {best['shape']:12s} {layout:13s} {best['candidate']:12s} {best['speedup']:.2f}x"
                  f"{'  (>= 1.5x)' if best['speedup'] >= 1.5 else ''}")  # fmt: skip
    if args.json:
        atomic_write_text(args.json, json.dumps({"hardware": profile.to_dict(), "threads": args.threads,
                                                 "batch": args.batch, "repeats": args.repeats, "rows": rows},
                                                indent=2))  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
