"""convopt's INT8 engine vs eager fp32 and the other INT8 paths on this CPU, side by side.

    .venv/bin/python benchmarks/bench_int8.py [--models mnist resnet18 mobilenet_v2] [--threads 2]
        [--repeats 10] [--real-mobilenet | --only-real-mobilenet] [--json benchmarks/results/int8.json]

Models: the embedded MNIST CNN at batch 32 (1x28x28, trained weights, calibrated on 256 training digits,
accuracy on the 1000 held-out digits), torchvision resnet18 and mobilenet_v2 at batch 8 (3x224x224,
random weights, calibrated on random inputs; output SQNR vs fp32). Candidates, timed in interleaved
rounds (median after warm-up) with the same threads and inputs:
  eager fp32; convopt INT8 on OpenVINO and on ONNX Runtime (the same QDQ graph); ONNX Runtime's own
  quantize_static flow (when it yields the same int8 graph as convopt's, it is said so and not timed
  twice); PyTorch's x86 INT8 path (torchao PT2E, X86InductorQuantizer, torch.compile); OpenVINO fp32;
  and, on the conv layers alone, convopt's own int8 conv kernel (kernels/int8.py) vs F.conv2d fp32.
The physical limit is the model's MACs at the measured int8 GEMM peak (convopt.analysis.hardware).
--real-mobilenet: also bench_int8_real.py (torchvision's ImageNet MobileNetV2 weights calibrated on crops of
some real photos, agreement with fp32 on crops of other photos, per-layer SQNR, mixed precision when PTQ
falls short of --max-drop); --only-real-mobilenet: that alone (accuracy only, no timing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from convopt.analysis.hardware import load_or_measure
from convopt.api import analyze
from convopt.io import atomic_write_text
from convopt.kernels.int8 import int8_conv, quantize_conv_weight
from convopt.kernels.quantize import QuantScheme, choose_qparams, quantize
from convopt.spec import ConvSpec
from convopt.testing import sqnr_db
from convopt.timing import interleaved_times
from convopt.transforms.backend import export_onnx
from convopt.transforms.int8_engine import ENGINES, Int8Module, build_int8_model

from bench_int8_real import bench_real_mobilenet, layer_sqnr  # noqa: E402  (a sibling script: benchmarks/ is on sys.path)

GOALS = {"mnist": 2.0, "resnet18": 4.0, "mobilenet_v2": 4.0}  # speedup vs eager fp32 (issue 5)


def setup(name: str) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor], Any]:
    """(model, timed input, calibration batches, held-out data or None)."""
    torch.manual_seed(0)
    if name == "mnist":
        from convopt.data import load_mnist
        from convopt.models import default_model

        train, test = load_mnist("train"), load_mnist("test")
        return default_model(), test[0][:32], list(train[0][:256].split(32)), test
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    return model, torch.randn(8, 3, 224, 224), [torch.randn(8, 3, 224, 224) for _ in range(4)], None


def ort_own_flow(model: nn.Module, x: torch.Tensor, calibration: list[torch.Tensor], folder: Path) -> bytes:
    """ONNX Runtime's documented static quantization: quant_pre_process, then quantize_static (MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input_0": b.numpy()} for b in calibration])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    export_onnx(model, (x,), folder / "fp32.onnx")
    quant_pre_process(str(folder / "fp32.onnx"), str(folder / "pre.onnx"))
    quantize_static(str(folder / "pre.onnx"), str(folder / "ort.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    return (folder / "ort.onnx").read_bytes()


def int8_nodes(onnx_bytes: bytes) -> dict[str, int]:
    """How many nodes of each op type run in int8 (names differ between exports: BN folded or not)."""
    import onnx

    from convopt.transforms.qdq_onnx import node_precisions, quantizable_op_types

    counts: dict[str, int] = {}
    for row in node_precisions(onnx.load_from_string(onnx_bytes), {}, quantizable_op_types()):
        counts[f"{row['op_type']} {row['precision']}"] = counts.get(f"{row['op_type']} {row['precision']}", 0) + 1
    return counts


def pt2e_x86(model: nn.Module, x: torch.Tensor, calibration: list[torch.Tensor]) -> Callable[[torch.Tensor], Any]:
    """PyTorch's x86 INT8 path: torch.export -> torchao PT2E (X86InductorQuantizer) -> torch.compile (freezing)."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config,
    )  # fmt: skip

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    # strict export: the non-strict default groups every call of a reused module (resnet's one ReLU per block,
    # called twice) into one partition, which the quantizer's conv+add+relu fusion rejects (pytorch/ao#4478)
    prepared = prepare_pt2e(torch.export.export(model, (x,), strict=True).module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True
    compiled = torch.compile(converted)
    with torch.no_grad():
        compiled(x)
    return compiled


def openvino_fp32(model: nn.Module, x: torch.Tensor, folder: Path, threads: int) -> Callable[[], Any]:
    import openvino as ov

    export_onnx(model, (x,), folder / "ov32.onnx")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(folder / "ov32.onnx")), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
    request, inputs = compiled.create_infer_request(), {0: x.numpy()}
    return lambda: request.infer(inputs)


def own_int8_convs(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """convopt's int8 conv kernel vs F.conv2d fp32, on every 2-D conv layer's real input (sums over layers)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, a[0].detach()))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    act = QuantScheme(symmetric=False)
    total, skipped = {"fp32": 0.0, "int8": 0.0}, {}
    for name, inp in seen.items():
        conv = model.get_submodule(name)
        spec = ConvSpec.from_module(conv)
        weight = quantize_conv_weight(conv.weight, spec)
        scale, zero = choose_qparams(inp.min(), inp.max(), act)
        x_q = quantize(inp, scale, zero, act)
        args = (x_q, float(scale), int(zero), weight, conv.bias, spec, 0.05, 0, act)
        try:
            times = interleaved_times({"fp32": lambda: conv(inp), "int8": lambda: int8_conv(*args)}, repeats=repeats)
        except RuntimeError as exc:  # e.g. a GEMM shape torch._int_mm rejects: counted, not hidden
            skipped[name] = str(exc).splitlines()[0][:120]
            continue
        for key in total:
            total[key] += times[key].median_s * 1e3
    return {"layers": len(seen) - len(skipped), "skipped": skipped, "fp32_ms": total["fp32"],
            "int8_ms": total["int8"], "ratio": total["fp32"] / total["int8"] if total["int8"] else None}  # fmt: skip


def accuracy(fn: Callable[[torch.Tensor], Any], data: Any, batch: int = 32) -> float:
    x, y = data
    n = len(x) // batch * batch  # whole batches only: compiled candidates keep one shape
    with torch.no_grad():
        hits = sum(int((fn(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, n, batch))
    return 100.0 * hits / n


def bench_model(name: str, args: argparse.Namespace, hardware: Any) -> dict[str, Any]:
    model, x, calibration, held_out = setup(name)
    macs = analyze(model, x, hardware=None).macs
    print(f"\n== {name}: input {list(x.shape)}, {macs / 1e9:.2f} GMACs, {args.threads} threads ==")
    result: dict[str, Any] = {"model": name, "input_shape": list(x.shape), "macs": macs, "notes": []}
    start = time.perf_counter()
    build = build_int8_model(model, calibration)
    result["convopt_build_seconds"] = time.perf_counter() - start
    result["convopt_engine"], result["excluded"] = build.engine, build.excluded
    modules = {e: Int8Module(build.module.float_model, build.onnx_bytes, e).eval() for e in ENGINES}
    fns: dict[str, Callable[[torch.Tensor], Any]] = {"eager fp32": model}
    fns.update({f"convopt INT8 ({e})": m for e, m in modules.items()})
    unavailable: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            ort_bytes = ort_own_flow(model, x, calibration, folder)
            if int8_nodes(ort_bytes) == int8_nodes(build.onnx_bytes):
                result["notes"].append("ORT quantize_static yields the same int8 graph as convopt INT8 (onnxruntime): "
                                       "convopt's engine is that graph (with convopt's calibration, and float logits); "
                                       "not timed twice")  # fmt: skip
            else:
                fns["ORT quantize_static"] = Int8Module(model, ort_bytes, "onnxruntime").eval()
        except Exception as exc:  # reported, never hidden
            unavailable["ORT quantize_static"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        try:
            start = time.perf_counter()
            fns["PyTorch x86 INT8 (PT2E+compile)"] = pt2e_x86(model, x, calibration)
            result["pt2e_build_seconds"] = time.perf_counter() - start
        except Exception as exc:
            unavailable["PyTorch x86 INT8 (PT2E+compile)"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        try:
            ov32 = openvino_fp32(model, x, folder, args.threads)
        except Exception as exc:
            ov32, unavailable["OpenVINO fp32"] = None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        runs = {key: (lambda fn=fn: fn(x)) for key, fn in fns.items()}
        if ov32 is not None:
            runs["OpenVINO fp32"] = ov32
        load = os.getloadavg()[0]
        times = {k: v.median_s * 1e3 for k, v in interleaved_times(runs, warmup=3, repeats=args.repeats).items()}
    with torch.no_grad():
        reference = model(x)
        quality = {k: sqnr_db(reference, fn(x)) for k, fn in fns.items() if k != "eager fp32"}
    rows = {}
    for key, ms in times.items():
        rows[key] = {"ms": ms, "speedup_vs_eager": times["eager fp32"] / ms, "output_sqnr_db": quality.get(key)}
        if held_out is not None and key in fns:
            rows[key]["accuracy"] = accuracy(fns[key], held_out)
    peak = hardware.peak_gflops.get("int8")
    limit_ms = 2 * macs / (peak * 1e9) * 1e3 if peak else None
    result.update(rows=rows, unavailable=unavailable, load_average=load, int8_peak_gops=peak, limit_ms=limit_ms)
    print(f"  {'candidate':34s} {'ms':>9s} {'vs eager':>9s} {'SQNR dB':>8s} {'acc %':>7s}")
    for key, row in rows.items():
        sq = "-" if row["output_sqnr_db"] is None else f"{row['output_sqnr_db']:.1f}"
        acc = f"{row['accuracy']:.2f}" if "accuracy" in row else "-"
        print(f"  {key:34s} {row['ms']:9.2f} {row['speedup_vs_eager']:8.2f}x {sq:>8s} {acc:>7s}")
    for key, why in unavailable.items():
        print(f"  {key:34s} unavailable: {why}")
    if limit_ms:
        print(f"  physical limit: {limit_ms:.2f} ms ({times['eager fp32'] / limit_ms:.0f}x eager) = {macs / 1e9:.2f} GMACs"
              f" at the measured int8 GEMM peak {peak:.0f} GOP/s")  # fmt: skip
    result["own_int8_conv"] = own = own_int8_convs(model, x, repeats=5)
    skipped = f"; {len(own['skipped'])} layer(s) skipped" if own["skipped"] else ""
    print(f"  convopt's own int8 conv kernel, {own['layers']} conv layers alone: {own['int8_ms']:.1f} ms vs F.conv2d "
          f"fp32 {own['fp32_ms']:.1f} ms ({own['ratio'] or 0:.2f}x){skipped}")  # fmt: skip
    result["layers"] = layers = layer_sqnr(model, calibration)
    print(f"  per-layer SQNR (simulation, calibrated): weights min {min(r['weight_sqnr_db'] for r in layers):.1f} dB, "
          f"outputs min {min(r['output_sqnr_db'] for r in layers):.1f} dB over {len(layers)} layers")  # fmt: skip
    result["goal"] = goal(name, rows, result)
    for note in result["notes"] + [result["goal"]["verdict"]]:
        print(f"  note: {note}")
    return result


def goal(name: str, rows: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    ours = {k: r for k, r in rows.items() if k.startswith("convopt INT8")}
    best_key = max(ours, key=lambda k: ours[k]["speedup_vs_eager"])
    speedup = ours[best_key]["speedup_vs_eager"]
    others = {k: r["speedup_vs_eager"] for k, r in rows.items() if k not in ours and k != "eager fp32"}
    best_other = max(others, key=others.get) if others else None
    met = speedup >= GOALS[name] and (best_other is None or speedup >= others[best_other])
    verdict = f"goal {GOALS[name]:.0f}x: convopt {speedup:.2f}x ({best_key})"
    if best_other:
        verdict += f"; best competitor {best_other} {others[best_other]:.2f}x"
    if name == "mnist" and "accuracy" in rows["eager fp32"]:
        loss = rows["eager fp32"]["accuracy"] - ours[best_key]["accuracy"]
        met = met and loss <= 0.5
        verdict += f"; accuracy loss {loss:.2f} points (goal <= 0.5)"
    chosen = f"convopt INT8 ({result['convopt_engine']})"
    if chosen != best_key:
        verdict += f"; convopt's build chose {chosen} on its calibration batch, {best_key} was faster here"
    return {"met": met, "speedup": speedup, "best_competitor": best_other, "verdict": verdict + (" -> MET" if met else " -> NOT MET")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(GOALS), choices=list(GOALS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--real-mobilenet", action="store_true", help="also the ImageNet-weights MobileNetV2 check")
    parser.add_argument("--only-real-mobilenet", action="store_true",
                        help="only the ImageNet-weights MobileNetV2 check (accuracy only: no timing, no hardware profile)")  # fmt: skip
    parser.add_argument("--max-drop", type=float, default=5.0,
                        help="top-1 agreement budget (points) for --real-mobilenet's mixed precision")  # fmt: skip
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer are too noisy)")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.only_real_mobilenet:
        results = {"threads": args.threads, "torch": torch.__version__, "real_mobilenet": bench_real_mobilenet(args)}
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=2, default=str))
            print(f"\nwrote {args.json}")
        return
    hardware = load_or_measure(args.threads)
    print(f"machine: {hardware.fingerprint.get('cpu_model', '?')}, {args.threads} threads, torch {torch.__version__}; "
          f"measured int8 GEMM peak {hardware.peak_gflops.get('int8', float('nan')):.0f} GOP/s, fp32 "
          f"{hardware.peak_gflops['fp32']:.0f} GFLOP/s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    results: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__, "models": []}
    for name in args.models:
        results["models"].append(bench_model(name, args, hardware))
    if args.real_mobilenet:
        results["real_mobilenet"] = bench_real_mobilenet(args)
    results["load_average_after"] = os.getloadavg()[0]
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
