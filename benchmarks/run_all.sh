#!/usr/bin/env bash
# Every benchmark of the issue figures, one after the other (never concurrently: they share the cores).
# Usage: benchmarks/run_all.sh [results-folder]   (default benchmarks/results)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=.venv/bin/python
mkdir -p "$OUT"
run() { echo "=== $*"; "$PY" "$@" || echo "!!! failed: $*"; }
run benchmarks/hardware_profile.py --json "$OUT/hardware.json"
run benchmarks/bench_fft.py --skip-sweep --rounds 3 --json "$OUT/fft.json"
run benchmarks/bench_prune.py --threads 2 --json "$OUT/prune.json"
run benchmarks/bench_decompose.py --threads 2 --skip-mnist --json "$OUT/decompose.json"
run benchmarks/bench_compress_mnist.py --threads 2 --json "$OUT/compress_mnist.json"
run benchmarks/bench_int8.py --threads 2 --real-mobilenet --json "$OUT/int8.json"
