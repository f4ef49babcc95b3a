#!/usr/bin/env bash
# Every benchmark behind the issue figures, one after the other (never concurrently: they share the cores).
# Usage: benchmarks/run_all.sh [results-folder]   (default benchmarks/results); drop --skip-break-even /
# --skip-sweep for the long versions. `make bench` installs the benchmark-only packages first.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=.venv/bin/python
mkdir -p "$OUT"
run() { echo "=== $*"; "$PY" "$@" || echo "!!! failed: $*"; }
run benchmarks/hardware_profile.py --json "$OUT/hardware.json"
run benchmarks/bench_fft.py --skip-sweep --rounds 3 --json "$OUT/fft.json"
OMP_WAIT_POLICY=PASSIVE run benchmarks/bench_fft.py --skip-sweep --rounds 3 --json "$OUT/fft_passive.json"
run benchmarks/bench_prune.py --threads 2 --skip-break-even --json "$OUT/prune.json"
run benchmarks/bench_decompose.py --threads 2 --skip-mnist --json "$OUT/decompose.json"
run benchmarks/bench_compress_mnist.py --threads 2 --epochs 5 --json "$OUT/compress_mnist.json"
run benchmarks/bench_int8.py --threads 2 --json "$OUT/int8.json"
run benchmarks/bench_int8_real.py --threads 2 --json "$OUT/int8_real_mobilenet.json"
