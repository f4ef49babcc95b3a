"""Measure this machine's roofline and place ResNet-18's layers on it, side by side with REFERENCES.md s.5.

    .venv/bin/python benchmarks/hardware_profile.py [--threads 2] [--batch 1] [--json benchmarks/results/hw.json]

Prints the measured peaks and bandwidth next to the reference figures, then per-layer time and % of the
attainable rate for every conv of ResNet-18 (median of repeated timed passes after warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torchvision

import convopt
from convopt.analysis.hardware import measure_profile
from convopt.io import atomic_write_text

REFERENCE = {"fp32": 170.0, "bf16": 400.0, "int8": 800.0, "bandwidth_gbs": (28.0, 32.0)}  # REFERENCES.md s.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = measure_profile(args.threads, log=print)
    print(f"\nmachine: {profile.fingerprint['cpu_model']} ({args.threads} threads, torch {torch.__version__})")
    for key, value in profile.peak_gflops.items():
        print(f"  peak {key:5s} {value:8.1f} G{'OP' if key == 'int8' else 'FLOP'}/s   reference ~{REFERENCE[key]:.0f}"
              f"   ratio {value / REFERENCE[key]:.2f}")  # fmt: skip
    low, high = REFERENCE["bandwidth_gbs"]
    print(f"  bandwidth  {profile.bandwidth_gbs:8.1f} GB/s      reference {low:.0f}-{high:.0f}")
    print(f"  fp32 ridge point {profile.ridge_point():.2f} MACs/byte")

    model = torchvision.models.resnet18().eval()
    x = torch.rand(args.batch, 3, 224, 224)
    report = convopt.analyze(model, x, name="resnet18", hardware=profile, measure=True, repeats=args.repeats)
    convs = [layer for layer in report.layers if layer.kind == "Conv2d"]
    print(f"\nresnet18 batch {args.batch}: {report.latency_seconds * 1e3:.2f} ms, "
          f"{report.macs / report.latency_seconds / 1e9:.1f} GMAC/s overall")  # fmt: skip
    print(f"{'layer':24s} {'MAC/B':>7s} {'bound':>8s} {'ms':>8s} {'GMAC/s':>8s} {'% roof':>7s}")
    for layer in convs:
        print(f"{layer.name:24s} {layer.arithmetic_intensity:7.1f} {layer.bound:>8s} {layer.seconds * 1e3:8.3f} "
              f"{layer.measured_gmacs_per_s:8.1f} {100 * layer.roofline_fraction:6.0f}%")  # fmt: skip
    fractions = [layer.roofline_fraction for layer in convs]
    print(f"conv layers: median {100 * statistics.median(fractions):.0f}% of the attainable rate, "
          f"best {100 * max(fractions):.0f}%, worst {100 * min(fractions):.0f}%")  # fmt: skip
    if args.json:
        atomic_write_text(args.json, json.dumps({"hardware": profile.to_dict(), "reference": REFERENCE,
                                                 "resnet18": report.to_dict()}, indent=2))  # fmt: skip
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
