"""INT8 quantization as one recipe: fold BN -> (QAT) -> simulate and report per layer -> build the engine ->
measure accuracy on the real engine -> keep the most sensitive layers in float while over the budget.

The simulation (transforms/quant_sim.py) uses the engine's scheme, so its per-layer SQNR explains the
engine's error and its sensitivity ranking orders mixed precision; every accuracy figure in the report is
measured on the deployed engine itself. The simulation quantizes conv/linear layers only; the other ops the
engine runs in int8 (a block's residual add, pooling, ...) are probed on the engine, one at a time, and
ranked with the layers, so mixed precision can keep an add in float too. The least sensitive conv/linear
layer always stays in int8: a model with every layer in float is no INT8 model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from convopt.errors import CalibrationError, ConfigError
from convopt.transforms.config import Compose
from convopt.transforms.fold_bn import FoldBatchNormConfig
from convopt.testing import sqnr_db
from convopt.transforms.int8_engine import (
    Int8Build, Int8Module, Int8Prepared, build_prepared, calibration_batches, fold_for_int8, prepare_int8,
)  # fmt: skip
from convopt.transforms.onnx_names import OP_SEPARATOR
from convopt.transforms.qdq_onnx import DATA_MOVEMENT, MAC_OPS
from convopt.transforms.pipeline import as_inputs
from convopt.transforms.quantize import Int8Config
from convopt.verify.accuracy import top1_percent

SCHEME = {
    "weights": "int8, per output channel, symmetric (-127..127, zero point 0)",
    "activations": "uint8, per tensor, asymmetric (calibrated range)",
    "bias": "int32 at scale input_scale x weight_scale",
}
REPORT_SAMPLES = 64  # inputs the per-layer error table is measured on


@dataclass
class QuantizeResult:
    """The INT8 model, the report (the `quantization` section of report.json) and the recipe that replays it."""

    model: Int8Module
    report: dict[str, Any]
    recipe: Compose = field(default_factory=Compose)
    build: Int8Build | None = None


def calibration_split(spec: str, input_shape: Any, samples: int) -> tuple[torch.Tensor, Any, Any]:
    """(calibration inputs, held-out (x, y), training (x, y)) for a --data SPEC; calibration never overlaps
    the held-out data.

    mnist / digits: calibration (the first `samples`, class-balanced) and training come from the train split,
    evaluation from the split SPEC names (test by default). imagefolder: the first `samples` images calibrate
    (and train, for QAT), the rest are held out.
    """
    from convopt.data import load_data

    name, _, split = spec.partition(":")
    if samples < 1:
        raise CalibrationError(f"--calibration {samples}: use at least one sample")
    if name in ("mnist", "digits"):
        if split in ("train", "all"):
            raise ConfigError(f"--data {spec}: INT8 calibration draws from the train split, so the accuracy must be "
                              f"measured on held-out digits: use --data {name} (or {name}:test)")  # fmt: skip
        train = load_data(f"{name}:train", input_shape=input_shape)
        return train[0][:samples], load_data(spec, input_shape=input_shape), train
    x, y = load_data(spec, input_shape=input_shape)
    if len(x) <= samples:
        raise CalibrationError(f"--data {spec} has {len(x)} images: --calibration {samples} would leave none to "
                               "measure accuracy on; use fewer calibration samples or more images")  # fmt: skip
    return x[:samples], (x[samples:], y[samples:]), (x[:samples], y[:samples])


def qat_checkpoint_dir(model: nn.Module, **facts: Any) -> Path:
    """A folder under convopt's cache for one QAT run: keyed by the model's weights and the run's settings,
    so a killed run resumes and a different one starts afresh."""
    from convopt.io import cache_dir

    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return cache_dir() / "qat" / digest.hexdigest()[:16]


accuracy = top1_percent  # top-1 % on labelled (x, y), None without data


def _qat(model: nn.Module, batches: list[torch.Tensor], train_data: Any, epochs: int, observer: str,
         checkpoint_dir: str | Path | None, say: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune through the simulation (convopt.transforms.qat); returns the float model and the report entry."""
    from convopt.transforms.qat import qat_config, quantization_aware_training

    if train_data is None:
        raise ConfigError(f"qat_epochs={epochs} needs train_data=(x, y): labelled inputs to fine-tune on")
    checkpoint = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        checkpoint = str(Path(checkpoint_dir) / "qat.ckpt")
    # SGD at 1e-4 (qat.FINE_TUNE): Adam at that rate cost ~0.6 points on held-out MNIST in 100 steps.
    config = qat_config(epochs, checkpoint=checkpoint)
    resumed = checkpoint is not None and Path(checkpoint).is_file()
    say(f"quantization-aware training, {epochs} epoch(s){' (resuming from its checkpoint)' if resumed else ''}")
    def step(epoch: str, done: int, total: int) -> None:
        say(f"QAT {epoch}, step {done}/{total}")

    tuned, history = quantization_aware_training(model, train_data, config, calibration=torch.cat(batches),
                                                 observer=observer, progress=step)  # fmt: skip
    return tuned, {"epochs": epochs, "config": config.to_dict(), "resumed": resumed, "history": history.to_dict()}


Labelled = tuple[torch.Tensor, torch.Tensor]


def engine_accuracies(build: Int8Build, data: Labelled | None) -> dict[str, float | None]:
    """Top-1 accuracy of the same QDQ graph on every engine that runs it: their integer kernels and fusions
    differ (rounding of requantization, which ops stay in int8), so their accuracies can differ too."""
    return {engine: accuracy(Int8Module(build.module.float_model, build.onnx_bytes, engine).eval(), data)
            for engine in build.engine_times_ms}  # fmt: skip


def pick_engine(build: Int8Build, accuracies: dict[str, float | None], baseline: float | None, max_drop: float,
                notes: list[str]) -> float | None:  # fmt: skip
    """Switch `build` (in place) to the fastest engine within the budget (the most accurate if none is);
    returns that engine's accuracy."""
    if baseline is None:
        return accuracies[build.engine]
    within = [e for e, a in accuracies.items() if baseline - a <= max_drop]
    engine = min(within, key=build.engine_times_ms.get) if within else max(accuracies, key=accuracies.get)
    if engine != build.engine:
        times = build.engine_times_ms
        notes.append(f"{engine} runs the INT8 graph: {build.engine} was faster ({times[build.engine]:.2f} vs "
                     f"{times[engine]:.2f} ms) but reached {accuracies[build.engine]:.2f}% against "
                     f"{accuracies[engine]:.2f}% (same graph, different integer kernels)")  # fmt: skip
        build.engine, build.module = engine, Int8Module(build.module.float_model, build.onnx_bytes, engine).eval()
    return accuracies[engine]


def op_points(build: Int8Build) -> list[str]:
    """The "MODULE:OpType" names of the ops other than conv/GEMM that `build` runs in int8 (adds, pools, ...)."""
    return list(dict.fromkeys(f"{row['module']}{OP_SEPARATOR}{row['op_type']}" for row in build.nodes
                              if row["precision"] == "int8" and row["module"] is not None
                              and row["op_type"] not in MAC_OPS and row["op_type"] not in DATA_MOVEMENT))  # fmt: skip


def op_sensitivity(prepared: Int8Prepared, points: list[str], data: Labelled, baseline: float, engine: str,
                   inputs: torch.Tensor) -> list[dict[str, Any]]:  # fmt: skip
    """Rows like quant_sim.sensitivity's, measured on the engine: each op point alone quantized (every other
    node in float); the output SQNR is the final output's against the float model on `inputs`."""
    with torch.no_grad():
        reference = prepared.float_model(inputs)
    rows = []
    for name in points:
        probe = build_prepared(prepared, engine=engine, only=[name], repeats=0).module
        metric = accuracy(probe, data)
        with torch.no_grad():
            output = probe(inputs)
        rows.append({"name": name, "metric": metric, "baseline": baseline, "drop": baseline - metric,
                     "output_sqnr_db": sqnr_db(reference, output), "kind": "op", "measured_on": engine})  # fmt: skip
    return rows


def quantize_model(model: nn.Module, *, calibration: Any, data_eval: Labelled | None, example_inputs: Any,
                   qat_epochs: int = 0, train_data: Labelled | None = None, max_accuracy_drop: float = 1.0,
                   observer: str = "minmax", checkpoint_dir: str | Path | None = None,
                   progress: Callable[[str], None] | None = None, engine: str = "auto") -> QuantizeResult:  # fmt: skip
    """Quantize `model` to the INT8 engine within an accuracy budget (see the module docstring).

    Args:
        model: float model taking one input like `example_inputs` (not modified; switched to eval mode).
        calibration: representative inputs: a tensor (N, ...) or an iterable of batches.
        data_eval: held-out labelled (x, y) for the accuracy budget (None: no accuracy, no mixed precision).
        example_inputs: the model's input (its per-sample shape checks the calibration data).
        qat_epochs: > 0 fine-tunes through the INT8 simulation on `train_data` first (checkpointed in
            `checkpoint_dir`, so an interrupted run resumes).
        max_accuracy_drop: allowed top-1 loss in points; above it the most sensitive layers stay float.
        observer: activation range observer (minmax, moving_average, percentile, mse, entropy).
        progress: called with a short message at each stage.
        engine: "auto", "openvino" or "onnxruntime".

    Raises:
        CalibrationError: empty calibration set, or batches of the wrong shape.
        BudgetExceededError: even the best precision assignment tried misses the budget (the message and
            the error's `.best_accuracy`, `.best_excluded` give the best achievable figure).
    """
    from convopt.transforms.mixed_precision import budget_breakers, choose_precision
    from convopt.transforms.quant_sim import (
        calibrate, layer_report, prepare_quant_sim, sensitivity, single_layer_factory,
    )  # fmt: skip

    say = progress or (lambda message: None)
    start = time.perf_counter()
    example = as_inputs(example_inputs)[0]
    if not max_accuracy_drop >= 0:
        raise ConfigError(f"max_accuracy_drop={max_accuracy_drop}: use a number of points >= 0")
    batches = calibration_batches(calibration, tuple(example.shape))
    notes: list[str] = []
    model = model.eval()
    say("measuring fp32 accuracy")
    baseline = accuracy(model, data_eval)
    float_model = fold_for_int8(model, example, notes)
    qat = None
    if qat_epochs:
        float_model, qat = _qat(float_model, batches, train_data, qat_epochs, observer, checkpoint_dir, say)
    say("simulating INT8 layer by layer")
    sim = prepare_quant_sim(float_model, observer=observer)
    calibrate(sim, batches)
    layers = layer_report(float_model, sim, torch.cat(batches)[:REPORT_SAMPLES])
    say("building the INT8 engine (all layers)")
    prepared = prepare_int8(float_model, batches, calibrate_method=observer, input_shape=example.shape)
    build = build_prepared(prepared, engine=engine)
    say("measuring INT8 accuracy")
    accuracies = {frozenset(): engine_accuracies(build, data_eval)}  # per set of layers kept in float
    all_int8 = final = pick_engine(build, accuracies[frozenset()], baseline, max_accuracy_drop, notes)
    ranking, mixed, breakers, always_int8 = [], None, [], None
    if baseline is not None and baseline - all_int8 > max_accuracy_drop:
        say("ranking layer sensitivity (simulation)")
        probe = torch.cat(batches)[:REPORT_SAMPLES]
        ranking = sensitivity(float_model, single_layer_factory(sim), lambda m: accuracy(m, data_eval),
                              [row["name"] for row in layers], inputs=probe)  # fmt: skip
        for row in ranking:
            row.update(kind="layer", measured_on="simulation")
        if points := op_points(build):
            say(f"ranking the sensitivity of {len(points)} other int8 op(s) on the engine")
            reference = ranking[0]["baseline"] if ranking else baseline
            ranking += op_sensitivity(prepared, points, data_eval, reference, build.engine, probe)
            ranking.sort(key=lambda r: (-r["drop"], r["output_sqnr_db"]))
        order = [row["name"] for row in ranking]
        always_int8 = next((row["name"] for row in reversed(ranking) if row["kind"] == "layer"), None)
        if always_int8 is not None:
            order.remove(always_int8)
            notes.append(f"{always_int8}, the least sensitive layer, always stays in int8: a model with every layer "
                         "in float is no INT8 model")  # fmt: skip
        builds = {frozenset(): build}

        def build_and_evaluate(excluded: frozenset[str]) -> float:
            say(f"mixed precision: {len(excluded)} layer(s)/op(s) in float")
            reasons = {n: f"kept in float by mixed precision (sensitivity rank {order.index(n) + 1})" for n in excluded}
            if excluded not in builds:
                builds[excluded] = build_prepared(prepared, exclude=reasons, engine=engine)
                accuracies[excluded] = engine_accuracies(builds[excluded], data_eval)
            return max(accuracies[excluded].values())

        mixed = choose_precision(order, build_and_evaluate, baseline, max_accuracy_drop)
        build = builds[mixed.excluded]
        final = pick_engine(build, accuracies[mixed.excluded], baseline, max_accuracy_drop, notes)
        breakers = budget_breakers(ranking, mixed.excluded, max_accuracy_drop)
    elif baseline is None:
        notes.append("no labelled data: accuracy was not measured and every layer runs in INT8")
    for row in layers:
        row["precision"] = "float" if row["name"] in build.excluded else "int8"
        row["reason"] = build.excluded.get(row["name"], "")
    drop = None if baseline is None else baseline - final
    report = {
        "scheme": SCHEME, "observer": observer, "engine": build.engine, "engine_times_ms": build.engine_times_ms,
        "engine_accuracy": accuracies[mixed.excluded if mixed else frozenset()],
        "engines_unavailable": build.unavailable, "calibration_samples": build.calibration_samples,
        "calibration_batches": len(batches), "layers": layers, "nodes": build.nodes, "excluded": build.excluded,
        "accuracy": {"fp32": baseline, "int8_all_layers": all_int8, "int8": final, "drop": drop},
        "max_accuracy_drop": max_accuracy_drop, "sensitivity": ranking, "broke_budget_first": breakers,
        "mixed_precision": mixed.to_dict() if mixed else None,
        "trajectory": mixed.trajectory if mixed else [],
        "always_int8": always_int8, "qat": qat, "notes": notes + build.notes, "seconds": time.perf_counter() - start,
    }  # fmt: skip
    searchable = {row["name"] for row in layers} | {row["name"] for row in ranking}
    excluded = tuple(n for n in build.excluded if n in searchable)
    recipe = Compose([FoldBatchNormConfig(), Int8Config(engine=build.engine, observer=observer, exclude=excluded)])
    return QuantizeResult(build.module, report, recipe, build)


__all__ = [
    "QuantizeResult", "accuracy", "calibration_split", "engine_accuracies", "pick_engine", "qat_checkpoint_dir",
    "quantize_model",
]  # fmt: skip
