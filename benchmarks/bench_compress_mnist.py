"""The issue's MNIST goals through convopt's compress(): prune or Tucker-2 to 50% MACs, distil, within 1 point.

    .venv/bin/python benchmarks/bench_compress_mnist.py [--threads 2] [--cases prune,tucker] [--epochs N]
        [--repeats 20] [--json benchmarks/results/compress_mnist.json]

For each case, `convopt.compress_flow.compress` runs on the embedded default MNIST model with the plan
the CLI builds (CompressionPlan.from_cli: the plan's default learning rate, cosine schedule, temperature,
alpha and random shifts; PruneConfig's defaults: global L1 ranking, max_layer_ratio 0.7):
  (a) prune: `--prune structured:0.5 --distill 5` (structured channel pruning to 50% of the MACs);
  (b) tucker: `--decompose tucker:0.5 --distill 5` (Tucker-2 of every 3x3 conv at 50% of its MACs).
Training data: the 4000-digit `mnist:train` split; accuracy: top-1 on the 1000 held-out `mnist:test`
digits. Printed per case: accuracy before / after, the drop in points (goal <= 1.0), the MAC ratio
(after / before), the wall time of the whole compress() call (goal < 300 s; it includes measuring every
layer before and after and evaluating after each epoch) and the latency of original vs compressed model
at batch 32, timed in interleaved rounds after warm-up (convopt.timing.interleaved_times).

The accuracy budget is not enforced here (max_accuracy_drop=100) so a miss is measured, not raised.
On a shared machine other processes distort absolute times (and so the wall time); the interleaved
latency ratio stays meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from convopt.compress_flow import CompressionPlan, compress
from convopt.data import load_mnist
from convopt.io import atomic_write_text
from convopt.models import default_model, default_weights_available
from convopt.timing import fixed_threads, interleaved_times

CASES = {"prune": ("structured:0.5", None), "tucker": (None, "tucker:0.5")}
DROP_GOAL_POINTS, TIME_GOAL_S, LATENCY_BATCH = 1.0, 300.0, 32


def run_case(name: str, epochs: int, threads: int, repeats: int) -> dict:
    prune, decompose = CASES[name]
    plan = CompressionPlan.from_cli(prune, decompose, epochs, 100.0)
    train, test = load_mnist("train"), load_mnist("test")
    model = default_model()
    print(f"\n({name}) prune={prune} decompose={decompose}, distill {plan.distill_epochs} epochs, lr {plan.lr}, "
          f"T {plan.temperature}, alpha {plan.alpha}, shift {plan.shift}px", flush=True)  # fmt: skip

    def show(label: str, step: int, total: int) -> None:
        if step == total:
            print(f"  {label} done at {time.perf_counter() - start:.0f} s", flush=True)

    with fixed_threads(threads):
        start = time.perf_counter()
        result = compress(model, (test[0][:LATENCY_BATCH],), plan, train_data=train, eval_data=test, on_step=show)
        wall = time.perf_counter() - start
        x = test[0][:LATENCY_BATCH]
        compressed = result.model.eval()
        with torch.inference_mode():
            times = interleaved_times({"original": lambda: model(x), "compressed": lambda: compressed(x)},
                                      warmup=5, repeats=repeats)  # fmt: skip
    report = result.report
    acc, totals = report["accuracy"], report["totals"]
    drop = acc["before"] - acc["after"]
    macs_ratio = totals["after"]["macs"] / totals["before"]["macs"]
    speedup = times["original"].median_s / times["compressed"].median_s
    trajectory = ", ".join(f"{t['stage']} {t['accuracy']:.1f}" for t in report["trajectory"])
    ok = drop <= DROP_GOAL_POINTS and wall < TIME_GOAL_S
    print(f"  trajectory: {trajectory}")
    print(f"  accuracy {acc['before']:.2f}% -> {acc['after']:.2f}% (drop {drop:.2f} points); MACs x{macs_ratio:.3f}; "
          f"wall {wall:.0f} s; batch {LATENCY_BATCH} latency {times['original'].median_s * 1e3:.2f} -> "
          f"{times['compressed'].median_s * 1e3:.2f} ms ({speedup:.2f}x faster) -> "
          f"{'meets' if ok else 'MISSES'} the goal (drop <= {DROP_GOAL_POINTS}, < {TIME_GOAL_S:.0f} s)")  # fmt: skip
    return {"plan": report["plan"], "distill": {"epochs": plan.distill_epochs, "lr": plan.lr, "T": plan.temperature,
            "alpha": plan.alpha, "shift": plan.shift}, "accuracy_before": acc["before"], "accuracy_after": acc["after"],
            "drop_points": drop, "macs_before": totals["before"]["macs"], "macs_after": totals["after"]["macs"],
            "macs_ratio": macs_ratio, "wall_seconds": wall, "latency_batch": LATENCY_BATCH,
            "original_ms": times["original"].median_s * 1e3, "compressed_ms": times["compressed"].median_s * 1e3,
            "original_spread": times["original"].spread, "compressed_spread": times["compressed"].spread,
            "latency_speedup": speedup, "trajectory": report["trajectory"], "meets_goal": ok}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="prune,tucker", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--epochs", type=int, default=5, help="distillation epochs (--distill EPOCHS)")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved latency rounds at batch 32")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases {unknown}: use {', '.join(CASES)}")
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer are too noisy)")
    if not default_weights_available():
        parser.error("the embedded default model's trained weights are not in the package; nothing to compress")
    load_before = os.getloadavg()[0]
    print(f"{args.threads} threads, torch {torch.__version__}, load average before: {load_before:.2f} "
          f"on {os.cpu_count()} cores")  # fmt: skip
    payload: dict = {"threads": args.threads, "cases": {}}
    for case in cases:
        payload["cases"][case] = run_case(case, args.epochs, args.threads, args.repeats)
    payload["load_average"] = [load_before, os.getloadavg()[0]]
    print(f"\nload average after: {payload['load_average'][1]:.2f} (wall times are pessimistic on a loaded machine)")
    if args.json:
        atomic_write_text(args.json, json.dumps(payload, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
