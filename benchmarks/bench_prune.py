"""Pruned ResNet-18 against the original, side by side; sparsity of unstructured/2:4 and the sparse break-even.

    .venv/bin/python benchmarks/bench_prune.py [--threads 2] [--batch 8] [--size 224] [--repeats 7] [--json PATH]

1. Structured: ResNet-18 (random weights, eval, fp32) pruned to 50% of its MACs (counted by
   convopt.analyze at 1x3xSIZExSIZE) with the default config and with channel counts rounded to multiples
   of 8 and 16 (do oneDNN's blocked kernels like them?), uniform per-layer ratios, and the measured-latency
   target. All candidates and the original are timed in interleaved rounds on the same batch (median);
   ratio = original / pruned time, goal >= 1.6x at batch 8.
2. Unstructured 80% and 2:4 on ResNet-18: the sparsity reached (exact counts), and the whole pruned model
   run with AlgorithmConfig("sparse") against dense F.conv2d on the same zeros.
3. The break-even sparsity of the `sparse` algorithm against dense on two ResNet-18 layers, measured by
   benchmarks/bench_sparse.py's own routine (imported, not copied).

Timings on a shared machine drift: only the ratios inside one interleaved run are meaningful.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
import torchvision

import convopt
from convopt.io import atomic_write_text
from convopt.timing import fixed_threads, interleaved_times
from convopt.transforms import AlgorithmConfig, PruneConfig, prune_

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sparse import LAYERS, bench_case  # noqa: E402  (the break-even routine of the sparse benchmark)

STRUCTURED = {
    "default": PruneConfig(kind="structured", ratio=0.5),
    "round_to=8": PruneConfig(kind="structured", ratio=0.5, round_to=8),
    "round_to=16": PruneConfig(kind="structured", ratio=0.5, round_to=16),
    "scope=layer": PruneConfig(kind="structured", ratio=0.5, scope="layer"),
    "target=latency": PruneConfig(kind="structured", ratio=0.5, target="latency"),
}
UNSTRUCTURED = {"unstructured 80%": PruneConfig(kind="unstructured", ratio=0.8), "2:4": PruneConfig(kind="n:m")}


def widths(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def structured(base: torch.nn.Module, size: int, batch: int, repeats: int) -> dict:
    x1, xb = torch.rand(1, 3, size, size), torch.rand(batch, 3, size, size)
    macs0 = convopt.analyze(base, x1, hardware=None).macs
    models, rows = {"original": base}, {}
    for label, config in STRUCTURED.items():
        model = copy.deepcopy(base)
        record = prune_(model, config, example_inputs=x1)
        macs = convopt.analyze(model, x1, hardware=None).macs
        models[label] = model
        rows[label] = {"config": config.to_dict(), "mac_ratio": macs / macs0, "params": record.params_after,
                       "widths": widths(model)}  # fmt: skip
        params = record.params_after / record.params_before
        print(f"  {label:15s} MACs {macs / macs0:.3f} of the original, params {params:.3f}")
    with torch.inference_mode():
        times = interleaved_times({k: (lambda m=m: m(xb)) for k, m in models.items()}, warmup=2, repeats=repeats)
    t0 = times["original"].median_s
    print(f"\n  batch {batch}, {size}x{size}, fp32 (median of {repeats}, interleaved); goal >= 1.6x")
    print(f"  {'model':15s} {'ms':>9s} {'speedup':>8s} {'spread':>7s}")
    for label, t in times.items():
        print(f"  {label:15s} {t.median_s * 1e3:9.1f} {t0 / t.median_s:7.2f}x {t.spread:7.2f}")
        if label in rows:
            rows[label].update(ms=t.median_s * 1e3, speedup=t0 / t.median_s)
    base_speed = rows["default"]["speedup"]
    for label in ("round_to=8", "round_to=16"):
        gain = rows[label]["speedup"] / base_speed
        print(f"  {label}: {gain:.2f}x the default's speed ({'helps' if gain > 1.03 else 'no clear gain'})")
    return {"original_ms": t0 * 1e3, "original_macs": macs0, "candidates": rows}


def unstructured(base: torch.nn.Module, size: int, batch: int, repeats: int) -> dict:
    xb = torch.rand(batch, 3, size, size)
    out = {}
    for label, config in UNSTRUCTURED.items():
        model = copy.deepcopy(base)
        record = prune_(model, config)
        sparse_model, _ = convopt.apply(model, AlgorithmConfig("sparse"))
        with torch.inference_mode():
            error = float((sparse_model(xb) - model(xb)).abs().max() / model(xb).abs().max())
            t = interleaved_times({"dense": lambda: model(xb), "sparse": lambda: sparse_model(xb)}, warmup=1,
                                  repeats=max(5, repeats // 2))  # fmt: skip
        ratio = t["dense"].median_s / t["sparse"].median_s
        out[label] = {"sparsity": record.sparsity, "layers_skipped": record.skipped,
                      "dense_ms": t["dense"].median_s * 1e3, "sparse_ms": t["sparse"].median_s * 1e3,
                      "sparse_speedup": ratio, "max_rel_diff": error}  # fmt: skip
        counts = f"{len(record.layers)} layers, {len(record.skipped)} skipped"
        print(f"  {label:17s} sparsity {record.sparsity:.4f} ({counts});"
              f" whole model with `sparse`: {ratio:.2f}x of dense speed (rel. diff {error:.1e})")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-break-even", action="store_true", help="omit part 3 (the layer sweep)")
    parser.add_argument("--json", help="write the results to this JSON file (e.g. benchmarks/results/prune.json)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer are too noisy)")
    torch.manual_seed(0)
    base = torchvision.models.resnet18().eval()
    load_before = os.getloadavg()[0]
    print(f"resnet18, {args.threads} threads, torch {torch.__version__}; "
          f"load average {load_before:.2f} on {os.cpu_count()} cores")
    result = {"threads": args.threads, "batch": args.batch, "size": args.size, "repeats": args.repeats}
    with fixed_threads(args.threads):
        print("\n1. structured pruning to 50% of the MACs")
        result["structured"] = structured(base, args.size, args.batch, args.repeats)
        print("\n2. unstructured 80% and 2:4")
        result["unstructured"] = unstructured(base, args.size, args.batch, args.repeats)
        if not args.skip_break_even:
            print("\n3. break-even sparsity of `sparse` vs dense (benchmarks/bench_sparse.py's sweep)")
            result["break_even"] = []
            with torch.inference_mode():
                for name, (channels, size) in LAYERS.items():
                    print(f"\n{name} 3x3, batch {args.batch} (ratio = direct / sparse time; GMAC/s* on non-zeros)")
                    print(f"  {'target':>5s} {'actual':>7s} {'direct ms':>9s} {'sparse ms':>9s} {'ratio':>8s}"
                          f" {'GMAC/s*':>8s} {'max|diff|':>9s}")  # fmt: skip
                    result["break_even"].append(bench_case(name, channels, size, args.batch, args.repeats))
    result["load_average"] = [load_before, os.getloadavg()[0]]
    print(f"\nload average after: {result['load_average'][1]:.2f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
