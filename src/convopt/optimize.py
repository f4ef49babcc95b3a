"""`convopt optimize`: tune, transform, verify and compare one model, then save it with its report.

Pipeline: measure the original (eager) -> fold BatchNorm -> tune every conv's algorithm on its real
activations (cached) -> fuse conv + add + activation -> choose the memory layout by measurement ->
check the result against the original (relative error budget, accuracy on labelled data) -> time the
original, convopt's result, torch.compile and ONNX Runtime side by side -> save.
"""

from __future__ import annotations

import copy
import fnmatch
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from convopt.analysis.trace import trace_forward
from convopt.errors import BudgetExceededError, UntraceableModelError
from convopt.search.autotune import TuneReport, tune_model
from convopt.search.backends import comparison_backends
from convopt.search.cache import TuningCache
from convopt.spec import ConvSpec
from convopt.timing import fixed_threads, interleaved_times
from convopt.transforms import AlgorithmConfig, BackendConfig, Compose, FoldBatchNormConfig, FuseConfig, LayoutConfig
from convopt.transforms.config import relative_error
from convopt.transforms.pipeline import apply, as_inputs, first_tensor, flatten_steps
from convopt.verify.accuracy import top1_percent
from convopt.verify.numerics import compare_numerics


@dataclass
class OptimizeReport:
    model: str
    input_shape: list[int]
    threads: int
    accuracy: dict[str, float | None]
    latency_ms: dict[str, Any]
    max_rel_error: float
    size_bytes: dict[str, int]
    layers: list[dict[str, Any]]
    passes: list[dict[str, Any]]
    backends: dict[str, dict[str, Any]]
    fastest: str
    chosen_backend: str
    tuning: dict[str, Any]
    numerics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    quantization: dict[str, Any] = field(default_factory=dict)  # --quantize int8: see convopt.quantize_flow
    compression: dict[str, Any] = field(default_factory=dict)  # --prune/--decompose/--distill: convopt.compress_flow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OptimizeResult:
    model: nn.Module
    recipe: Compose
    report: OptimizeReport
    tune: TuneReport | None


def state_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what model.safetensors holds, less its small header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


evaluate = top1_percent  # kept under its old name: callers and tests use convopt.optimize.evaluate


def build_recipe(model: nn.Module, inputs: tuple[Any, ...], *, budget_error: float, repeats: int,
                 cache: TuningCache | None, notes: list[str], graph_passes: bool, max_rel_error: float,
                 progress: Callable[[str], None] | None) -> tuple[Compose, TuneReport | None]:  # fmt: skip
    """Decide every step by measurement; the returned recipe replays without measuring."""
    steps: list[Any] = [FoldBatchNormConfig()] if graph_passes else []
    if graph_passes:
        try:
            folded, _ = apply(model, Compose(steps), example_inputs=inputs, max_rel_error=max_rel_error)
        except UntraceableModelError as exc:
            raise UntraceableModelError(f"{exc} (or pass --no-graph-passes to tune its layers only)") from exc
    else:
        notes.append("graph passes (BatchNorm folding, fusion) were not run: --no-graph-passes")
        folded = copy.deepcopy(model)
    tune = tune_model(folded, inputs, budget_error=budget_error, repeats=repeats, cache=cache, progress=progress)
    steps += [AlgorithmConfig(algorithm, modules=_escape(name)) for name, algorithm in tune.plan().items()
              if algorithm != "direct"]  # fmt: skip
    if steps and isinstance(steps[0], FoldBatchNormConfig):
        steps.append(FuseConfig())
    candidate, _ = apply(model, Compose(steps), example_inputs=inputs, max_rel_error=max_rel_error)
    layout_step = LayoutConfig("auto", repeats=repeats)
    _, layout = apply(candidate, layout_step, example_inputs=inputs, max_rel_error=max_rel_error)
    steps.append(LayoutConfig(layout.steps[0].changed["*"]))
    notes.extend(layout.steps[0].notes)
    return Compose(steps), tune


def optimize(model: nn.Module, example_inputs: Any, *, name: str = "model", data: Any = None,
             budget_error: float = 1e-5, max_rel_error: float = 1e-4, threads: int | None = None,
             repeats: int = 7, cache: TuningCache | None = None, compare_backends: bool = True,
             graph_passes: bool = True, progress: Callable[[str], None] | None = None,
             on_batch: Callable[[int, int], None] | None = None,
             quantize: dict[str, Any] | None = None, compression: Any = None, train_data: Any = None,
             checkpoint_dir: Any = None, baseline: nn.Module | None = None) -> OptimizeResult:  # fmt: skip
    """Optimize `model` for `example_inputs` on this machine (see module docstring).

    The original keeps its parameters (every transform works on a copy); it is switched to eval mode.
    With `compression` (a convopt.compress_flow.CompressionPlan: prune, decompose, distill on
    `train_data`), a compressed copy is made first and everything else works on it; the original stays
    the baseline for accuracy and latency. With `quantize` (keyword arguments of
    convopt.quantize_flow.quantize_model, e.g. {"calibration": x, "max_accuracy_drop": 0.5}) the INT8
    flow runs instead of the fp32 one (convopt.optimize_int8).
    """
    if compression is not None:
        return _optimize_compressed(model, example_inputs, compression, train_data=train_data, data=data,
                                    checkpoint_dir=checkpoint_dir, progress=progress, threads=threads,
                                    options=dict(name=name, budget_error=budget_error, max_rel_error=max_rel_error,
                                                 repeats=repeats, cache=cache, compare_backends=compare_backends,
                                                 graph_passes=graph_passes, on_batch=on_batch, quantize=quantize))  # fmt: skip
    if quantize is not None:
        from convopt.optimize_int8 import optimize_int8

        return optimize_int8(model, example_inputs, name=name, data=data, threads=threads, repeats=repeats,
                             compare_backends=compare_backends, progress=progress, **quantize)  # fmt: skip
    start = time.perf_counter()
    inputs = as_inputs(example_inputs)
    say = progress or (lambda message: None)
    notes: list[str] = []
    with fixed_threads(threads):
        threads = torch.get_num_threads()
        model = model.eval()
        trace_forward(model, inputs)  # a model that rejects the inputs fails here, naming the layer
        say("measuring accuracy of the original")
        accuracy_before = evaluate(model, data, progress=on_batch)
        recipe, tune = build_recipe(model, inputs, budget_error=budget_error, repeats=repeats, cache=cache,
                                    notes=notes, graph_passes=graph_passes, max_rel_error=max_rel_error,
                                    progress=lambda layer: say(f"tuning {layer}"))  # fmt: skip
        say("applying the recipe")
        optimized, transform = apply(model, recipe, example_inputs=inputs, max_rel_error=max_rel_error)
        check_inputs = data[0][: max(len(inputs[0]), 64)] if data is not None else inputs[0]
        with torch.no_grad():
            error = relative_error(first_tensor(model(check_inputs)), first_tensor(optimized(check_inputs)))
        if not error <= max_rel_error:  # NaN fails too
            raise BudgetExceededError(f"optimized outputs differ by {error:.2e} (relative) > {max_rel_error:.0e}")
        say("comparing every layer with the original")
        numerics = compare_numerics(model, optimized, check_inputs[:32])
        say("measuring accuracy of the result")
        accuracy_after = evaluate(optimized, data, progress=on_batch)
        backends = comparison_backends(model, inputs, say) if compare_backends else []
        runs = {"eager": lambda: model(*inputs), "convopt": lambda: optimized(*inputs)}
        if baseline is not None:  # the uncompressed original, timed in the same rounds
            runs["original"] = lambda: baseline(*inputs)
        runs.update({b.name: b.run for b in backends if b.run is not None})
        say("timing eager, convopt and the other backends side by side")
        times = {k: v.median_s * 1e3 for k, v in interleaved_times(runs, repeats=repeats).items()}
    with torch.no_grad():
        reference = model(*inputs)
    table = {
        key: {"ms": times.get(key), "speedup_vs_eager": times["eager"] / times[key] if key in times else None}
        for key in runs
    }
    for backend in backends:
        entry = table.setdefault(backend.name, {"ms": None, "speedup_vs_eager": None})
        entry["build_seconds"] = backend.build_seconds
        entry["unavailable"] = backend.unavailable
        if backend.run is not None:
            entry["max_rel_error"] = relative_error(first_tensor(reference), first_tensor(backend.run()))
    fastest = min(times, key=times.get)
    chosen = "convopt"
    winner = next((b for b in backends if b.name == fastest and b.module is not None), None)
    if winner is not None and table[fastest]["max_rel_error"] <= max_rel_error:  # False for NaN
        # A whole-graph backend beat convopt's eager kernels here: deploy through it, and say so.
        chosen, optimized = fastest, winner.module
        backend = "inductor" if fastest == "torch.compile" else "onnxruntime"
        recipe = Compose(([LayoutConfig("channels_last")] if backend == "inductor" else []) + [BackendConfig(backend)])
        notes.append(f"{fastest} was fastest here ({times[fastest]:.2f} ms vs {times['convopt']:.2f} ms for convopt's "
                     "eager kernels): the saved model runs through it")  # fmt: skip
        error = table[fastest]["max_rel_error"]
        accuracy_after = evaluate(optimized, data, batch=int(inputs[0].shape[0]))
    elif winner is not None:
        notes.append(f"{fastest} was fastest but its outputs differ by {table[fastest]['max_rel_error']:.1e}, over the "
                     f"budget {max_rel_error:.0e}: it was not used")  # fmt: skip
    if chosen == "convopt" and times["convopt"] > times["eager"]:
        # Every layer choice was measured faster than direct, yet the whole was not (per-call overheads of
        # small layers add up): never hand back something slower than the original.
        chosen, optimized, recipe, error, accuracy_after = "eager", model, Compose([]), 0.0, accuracy_before
        notes.append(f"convopt's kernels were slower than eager PyTorch on this model ({times['convopt']:.2f} ms vs "
                     f"{times['eager']:.2f} ms): the saved model is the original")  # fmt: skip
    layers = []
    for layer in tune.layers if tune else []:
        spec = ConvSpec.from_module(model.get_submodule(layer.name))
        read, written = spec.bytes_moved(layer.input_shape)
        fused = next((s.changed[n] for s in transform.steps for n in s.changed if fnmatch.fnmatch(layer.name, n)
                      and s.config["type"] == "FuseConfig"), None)  # fmt: skip
        layers.append({"name": layer.name, "algorithm": layer.chosen, "candidates": layer.candidates,
                       "errors": layer.errors, "skipped": layer.skipped, "from_cache": layer.from_cache,
                       "fused": fused, "macs": spec.macs(layer.input_shape), "bytes": read + written})  # fmt: skip
    report = OptimizeReport(
        model=name,
        input_shape=list(inputs[0].shape),
        threads=threads,
        accuracy={"before": accuracy_before, "after": accuracy_after},
        latency_ms={"batch": int(inputs[0].shape[0]), "before": times["eager"], "after": times[chosen]},
        max_rel_error=error,
        size_bytes={"before": state_bytes(model), "after": state_bytes(optimized)},
        layers=layers,
        passes=[asdict(step) for step in transform.steps],
        backends=table,
        fastest=fastest,
        chosen_backend=chosen,
        tuning=tune.to_dict() if tune else {},
        numerics=numerics.to_dict(),
        notes=notes,
        seconds=time.perf_counter() - start,
    )
    return OptimizeResult(optimized, recipe, report, tune)


def _optimize_compressed(model: nn.Module, example_inputs: Any, plan: Any, *, train_data: Any, data: Any,
                         checkpoint_dir: Any, progress: Callable[[str], None] | None, threads: int | None,
                         options: dict[str, Any]) -> OptimizeResult:  # fmt: skip
    """Compress a copy of `model` (convopt.compress_flow), optimize that, and report against the original."""
    from convopt.compress_flow import compress

    inputs = as_inputs(example_inputs)
    with fixed_threads(threads):
        model = model.eval()
        trace_forward(model, inputs)
        compressed = compress(model, inputs, plan, train_data=train_data, eval_data=data, checkpoint_dir=checkpoint_dir,
                              progress=progress)  # fmt: skip
    baseline = None if options.get("quantize") is not None else model
    result = optimize(compressed.model, example_inputs, data=data, threads=threads, progress=progress,
                      baseline=baseline, **options)  # fmt: skip
    report = result.report
    report.compression = compressed.report
    report.accuracy["before"] = compressed.report["accuracy"]["before"]
    report.size_bytes["before"] = state_bytes(model)
    if "original" in report.backends:
        original_ms = report.backends["original"]["ms"]
        report.latency_ms["before"] = original_ms
        for entry in report.backends.values():  # speed-ups against the uncompressed original
            entry["speedup_vs_original"] = original_ms / entry["ms"] if entry.get("ms") else None
    baseline_of = "accuracy and latency" if "original" in report.backends else "accuracy"
    report.notes.insert(0, "compressed first (" + ", ".join(f"{k}: {v}" for k, v in compressed.report["plan"].items()
                                                              if v) + f"); the original is the {baseline_of} baseline")  # fmt: skip
    recipe = Compose([compressed.structure, *flatten_steps(result.recipe)]) if compressed.structure.layers else result.recipe
    return OptimizeResult(result.model, recipe, report, result.tune)
