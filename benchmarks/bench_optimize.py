"""convopt's optimized model vs eager PyTorch, torch.compile and ONNX Runtime, side by side.

    .venv/bin/python benchmarks/bench_optimize.py [--model torchvision:resnet18] [--batch 8] [--threads 2]
                                                  [--repeats 15] [--json benchmarks/results/optimize.json]

Same inputs and threads for every backend, timed in interleaved rounds (median). Prints each backend's
latency and ratio to eager, the chosen algorithm per layer, the tuning time, and the machine's roofline.
The tuning cache is bypassed (a fresh temporary cache) unless --use-cache is given.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from convopt.analysis.hardware import load_or_measure
from convopt.api import example_input
from convopt.io import atomic_write_text
from convopt.loading import load_model
from convopt.optimize import optimize
from convopt.search.cache import TuningCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--use-cache", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    shape = [args.batch, *loaded.input_shape[1:]]
    hardware = load_or_measure(args.threads)
    cache = None if args.use_cache else TuningCache(args.threads, Path(tempfile.mkdtemp()) / "tuning.json")
    result = optimize(loaded.model, example_input(shape), name=loaded.name, threads=args.threads,
                      repeats=args.repeats, cache=cache, progress=print)  # fmt: skip
    report = result.report
    print(f"\n{loaded.name}, input {shape}, fp32, {report.threads} threads; machine: measured fp32 GEMM peak "
          f"{hardware.peak_gflops['fp32']:.0f} GFLOP/s, bandwidth {hardware.bandwidth_gbs:.1f} GB/s")  # fmt: skip
    for name, entry in report.backends.items():
        if entry["ms"] is None:
            print(f"  {name:14s} unavailable: {entry.get('unavailable')}")
            continue
        print(f"  {name:14s} {entry['ms']:9.2f} ms  {entry['speedup_vs_eager']:5.2f}x vs eager"
              + (f"  (built in {entry['build_seconds']:.1f} s)" if entry.get("build_seconds") else ""))  # fmt: skip
    print(f"  fastest: {report.fastest}; convopt max relative error {report.max_rel_error:.1e}")
    chosen: dict[str, int] = {}
    for layer in report.layers:
        chosen[layer["algorithm"]] = chosen.get(layer["algorithm"], 0) + 1
    print(f"  layers: {chosen}; recipe: {[step.to_dict()['type'] for step in result.recipe.steps]}")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"  optimize took {report.seconds:.1f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps({"report": report.to_dict(), "hardware": hardware.to_dict()}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
