"""The deployed INT8 engine: a QDQ ONNX model run by OpenVINO or ONNX Runtime, whichever measures faster.

`build_int8_model` folds BatchNorm, exports the float model (torch.onnx, dynamo), calibrates every
activation with convopt's observers, lets ONNX Runtime's quantizer place the QDQ pairs (qdq_onnx.py),
then times both runtimes on the same calibration batch, interleaved, and keeps the faster. Layers kept
in float (mixed precision, or op types no int8 kernel pattern covers) are listed with the reason.
`prepare_int8` does the export and calibration once; `build_prepared` quantizes the prepared graph with a
given set of layers kept in float, so a mixed-precision search pays for the export only once.
Both runtimes fuse DequantizeLinear -> Conv -> QuantizeLinear into integer convolutions (u8 x s8 with
int32 accumulation, VNNI on x86); the result matches convopt's integer oracle (kernels/int8.py) within
1 LSB of each quantized tensor.
"""

from __future__ import annotations

import copy
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from convopt.errors import CalibrationError, ConfigError, UntraceableModelError
from convopt.kernels.observers import OBSERVERS
from convopt.timing import interleaved_times
from convopt.transforms.backend import export_onnx
from convopt.transforms.fold_bn import FoldBatchNormConfig
from convopt.transforms.onnx_names import nodes_of_modules, split_op_point
from convopt.transforms.pipeline import apply
from convopt.transforms.qdq_onnx import (
    node_precisions, observe_ranges, quantizable_op_types, quantize_to_qdq, quiet_onnxruntime,
)  # fmt: skip

ENGINES = ("openvino", "onnxruntime")
CALIBRATION_BATCH = 32  # a calibration tensor is cut into batches of this many samples


def make_runner(onnx_bytes: bytes, engine: str, threads: int) -> Callable[[list[Any]], list[Any]]:
    """A function numpy inputs -> numpy outputs running the ONNX model on `engine` with `threads` threads."""
    if engine == "openvino":
        import openvino as ov

        core = ov.Core()
        # f32 precision hint: ops left in float stay fp32 (no silent bf16 on CPUs that have it).
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = core.compile_model(core.read_model(io.BytesIO(onnx_bytes)), "CPU", config)
        request = compiled.create_infer_request()

        def run_openvino(inputs: list[Any]) -> list[Any]:
            request.infer(dict(enumerate(inputs)))
            # the request reuses its output buffers on the next call: copy
            return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

        return run_openvino
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to others
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda inputs: session.run(None, dict(zip(names, inputs)))
    raise ConfigError(f"engine={engine!r}: use one of {ENGINES} (or 'auto' to pick the faster by measurement)")


class Int8Module(nn.Module):
    """A QDQ ONNX model (bytes kept in the module, so it pickles and saves) run by `engine`.

    Inference (eval mode, inputs not requiring grad) runs the INT8 engine with torch's current thread
    count. In training mode, or when an input requires grad, the float model `.float_model` (BN folded,
    the weights the engine was built from) runs instead: the engine has no gradients.
    """

    def __init__(self, float_model: nn.Module, onnx_bytes: bytes, engine: str):
        super().__init__()
        if engine not in ENGINES:
            raise ConfigError(f"engine={engine!r}: use one of {ENGINES}")
        self.float_model = float_model
        self.onnx_bytes = bytes(onnx_bytes)
        self.engine = engine
        self._runner: Callable[[list[Any]], list[Any]] | None = None
        self._threads: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_runner"], state["_threads"] = None, None  # compiled engines are rebuilt, never pickled
        return state

    def forward(self, *args: torch.Tensor) -> Any:
        if self.training or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.float_model(*args)
        threads = torch.get_num_threads()
        if self._runner is None or threads != self._threads:
            self._runner, self._threads = make_runner(self.onnx_bytes, self.engine, threads), threads
        outputs = [torch.from_numpy(o) for o in self._runner([a.detach().cpu().float().contiguous().numpy()
                                                              for a in args])]  # fmt: skip
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def extra_repr(self) -> str:
        return f"engine={self.engine!r}, onnx={len(self.onnx_bytes) / 1e6:.2f} MB"


@dataclass
class Int8Build:
    """What build_int8_model made: the module, the engine it chose, the timings that chose it, every layer
    kept in float with the reason ({name: reason}), the QDQ ONNX bytes and each compute node's precision."""

    module: Int8Module
    engine: str
    engine_times_ms: dict[str, float]
    excluded: dict[str, str]
    onnx_bytes: bytes
    nodes: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    calibration_samples: int = 0


def calibration_batches(calibration: torch.Tensor | Iterable[Any], input_shape: Sequence[int] | None = None,
                        batch: int = CALIBRATION_BATCH) -> list[torch.Tensor]:  # fmt: skip
    """The calibration data as a list of (N, ...) float tensors, checked.

    Accepts one tensor (cut into batches of `batch` samples) or an iterable of tensors or (x, y) pairs.

    Raises:
        CalibrationError: no samples, a non-tensor, or a batch whose per-sample shape differs from
            `input_shape[1:]` (or from the first batch's), naming expected and received shapes.
    """
    if isinstance(calibration, torch.Tensor):
        items: list[Any] = list(calibration.split(batch)) if calibration.dim() and len(calibration) else []
    else:
        items = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration]
    if not items:
        raise CalibrationError("the calibration set is empty: pass at least one batch of representative inputs "
                               "(a few hundred samples is typical)")  # fmt: skip
    expected = tuple(input_shape[1:]) if input_shape is not None else None
    batches = []
    for index, item in enumerate(items):
        if not isinstance(item, torch.Tensor) or not item.is_floating_point() or item.dim() < 1:
            got = f"{item.dtype} {list(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
            raise CalibrationError(f"calibration batch {index} is {got}; expected float tensors of shape (N, ...)")
        if expected is None:
            expected = tuple(item.shape[1:])
        if tuple(item.shape[1:]) != expected:
            raise CalibrationError(f"calibration batch {index}: got shape {list(item.shape)}, expected (N, "
                                   f"{', '.join(map(str, expected))}) (the model's input shape)")  # fmt: skip
        if len(item):
            batches.append(item.detach().float())
    if not batches:
        raise CalibrationError("the calibration set is empty: every batch has 0 samples")
    return batches


def fold_for_int8(model: nn.Module, example: torch.Tensor, notes: list[str]) -> nn.Module:
    """A BN-folded deep copy in eval mode (the float model the engine is built from)."""
    try:
        folded, _ = apply(model.eval(), FoldBatchNormConfig(), example_inputs=example, max_rel_error=1e-3)
    except UntraceableModelError as exc:
        # The ONNX pre-processing folds Conv + BatchNormalization too; only .float_model keeps its BN.
        notes.append(f"BatchNorm not folded in PyTorch ({exc}); ONNX pre-processing folds it in the engine")
        folded = copy.deepcopy(model).eval()
    return folded


def _exclusion_reasons(graph: Any, exclude: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """({node name: reason}, {module: reason}) for the modules (or op points) the caller keeps in float."""
    nodes = nodes_of_modules(graph, exclude)
    by_node = {node: f"kept in float: {exclude[module]}" for module, names in nodes.items() for node in names}
    return by_node, {module: exclude[module] for module in exclude}


@dataclass
class Int8Prepared:
    """What every INT8 build of one model shares (prepare_int8): the BN-folded float model, its exported and
    pre-processed fp32 ONNX graph, and every activation's calibrated range. Builds that differ only in the
    layers kept in float (mixed precision) reuse it instead of exporting and calibrating again."""

    float_model: nn.Module
    pre_onnx: bytes
    ranges: dict[str, tuple[float, float]]
    example: torch.Tensor
    calibrate_method: str
    calibration_samples: int
    notes: list[str] = field(default_factory=list)


def _check_names(model: nn.Module, names: Iterable[str]) -> None:
    """ConfigError for a name that is neither a module of `model` nor "MODULE:OpType" of one."""
    known = dict(model.named_modules())

    def module_of(name: str) -> str:
        point = split_op_point(name)
        return name if point is None else point[0]

    unknown = sorted(n for n in names if module_of(n) not in known)
    if unknown:
        layers = [n for n, m in known.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
        raise ConfigError(f"exclude names {unknown} are not modules of the model; its conv/linear layers: "
                          f"{', '.join(layers[:20])}{' ...' if len(layers) > 20 else ''} (an op a module runs "
                          "itself is named MODULE:OpType, e.g. 'layer1.0:Add')")  # fmt: skip


def prepare_int8(model: nn.Module, calibration: torch.Tensor | Iterable[Any], *, calibrate_method: str = "minmax",
                 progress: Callable[[int, int], None] | None = None,
                 input_shape: Sequence[int] | None = None) -> Int8Prepared:  # fmt: skip
    """Check the calibration data, fold BN, export to ONNX and calibrate every activation (no quantization
    yet); arguments as build_int8_model's. Raises CalibrationError / ConfigError as build_int8_model does."""
    if calibrate_method not in OBSERVERS:
        raise ConfigError(f"calibrate_method={calibrate_method!r}: use one of {sorted(OBSERVERS)}")
    batches = calibration_batches(calibration, input_shape)
    notes: list[str] = []
    example = batches[0]
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:  # the model's own error, re-raised naming the calibration shape
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CalibrationError(f"the model rejects calibration batches of shape {list(example.shape)}: "
                               f"{type(exc).__name__}: {first_line}") from exc  # fmt: skip
    float_model = fold_for_int8(model, example, notes)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="convopt-int8-") as folder:
        fp32, pre = Path(folder) / "model.onnx", Path(folder) / "pre.onnx"
        export_onnx(float_model, (example,), fp32)
        with quiet_onnxruntime():
            quant_pre_process(str(fp32), str(pre))
        ranges = observe_ranges(pre, batches, calibrate_method, progress)
        pre_onnx = pre.read_bytes()
    return Int8Prepared(float_model, pre_onnx, ranges, example, calibrate_method, sum(len(b) for b in batches), notes)


def build_prepared(prepared: Int8Prepared, *, exclude: frozenset[str] | Mapping[str, str] = frozenset(),
                   engine: str = "auto", float_output: bool = True, repeats: int = 5,
                   only: Iterable[str] | None = None) -> Int8Build:  # fmt: skip
    """Quantize a prepared model (see build_int8_model for the arguments).

    Args:
        only: quantize just the nodes these names select (module names or "MODULE:OpType") and keep every
            other node in float: a probe of one layer's or one op's quantization error.
        repeats: timed runs per engine; 0 skips timing (allowed only with one named engine).
    """
    if engine not in (*ENGINES, "auto"):
        raise ConfigError(f"engine={engine!r}: use one of {ENGINES} or 'auto'")
    if repeats < (1 if engine == "auto" else 0):
        raise ConfigError(f"repeats={repeats}: engine='auto' times the engines, use repeats >= 1")
    reasons = dict(exclude) if isinstance(exclude, Mapping) else {n: "excluded by the caller" for n in exclude}
    only = None if only is None else list(only)
    _check_names(prepared.float_model, [*reasons, *(only or [])])
    import onnx

    notes = list(prepared.notes)
    with tempfile.TemporaryDirectory(prefix="convopt-int8-") as folder:
        pre, qdq = Path(folder) / "pre.onnx", Path(folder) / "qdq.onnx"
        pre.write_bytes(prepared.pre_onnx)
        graph = onnx.load(str(pre)).graph
        node_reasons, excluded = _exclusion_reasons(graph, reasons)
        if only is not None:
            probed = {n for names in nodes_of_modules(graph, only).values() for n in names}
            reason, keep = "kept in float: only " + ", ".join(only) + " quantized (probe)", probed | set(node_reasons)
            node_reasons.update({n.name: reason for n in graph.node if n.name not in keep})
        quantized = quantize_to_qdq(pre, qdq, prepared.ranges, sorted(node_reasons), float_output)
    onnx_bytes = quantized.SerializeToString()
    nodes = node_precisions(quantized, node_reasons, quantizable_op_types())
    for index, row in enumerate(nodes):
        if row["precision"] == "float" and row["node"] not in node_reasons:
            key = row["module"] or row["node"] or f"{row['op_type']} (node {index})"
            excluded[key] = "; ".join(filter(None, [excluded.get(key), row["reason"]]))
    unavailable: dict[str, str] = {}
    candidates = ENGINES if engine == "auto" else (engine,)
    modules = {}
    example = prepared.example
    for name in candidates:
        module = Int8Module(prepared.float_model, onnx_bytes, name).eval()
        try:
            with torch.no_grad():
                module(example)
            modules[name] = module
        except Exception as exc:  # a runtime that cannot load or run the graph is reported, not hidden
            unavailable[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    if not modules:
        raise ConfigError(f"no INT8 engine could run the quantized model: {unavailable}")
    if repeats:
        timed = interleaved_times({n: (lambda m=m: m(example)) for n, m in modules.items()}, repeats=repeats)
        times = {n: t.median_s * 1e3 for n, t in timed.items()}
    else:
        times = {n: float("nan") for n in modules}
    chosen = min(times, key=times.get)
    for name, reason in unavailable.items():
        notes.append(f"INT8 engine {name} unavailable: {reason}")
    return Int8Build(modules[chosen], chosen, times, excluded, onnx_bytes, nodes, unavailable, notes,
                     prepared.calibration_samples)  # fmt: skip


def build_int8_model(model: nn.Module, calibration: torch.Tensor | Iterable[Any], *,
                     exclude: frozenset[str] | Mapping[str, str] = frozenset(), engine: str = "auto",
                     calibrate_method: str = "minmax", progress: Callable[[int, int], None] | None = None,
                     input_shape: Sequence[int] | None = None, float_output: bool = True,
                     repeats: int = 5) -> Int8Build:  # fmt: skip
    """Quantize `model` to the INT8 engine (see module docstring); the original model is switched to eval
    mode and otherwise not modified. prepare_int8 then build_prepared.

    Args:
        model: a float model taking one (N, ...) tensor.
        calibration: representative inputs: a tensor (N, ...) or an iterable of batches / (x, y) pairs.
        exclude: names to keep in float, or {name: reason}: modules (qualified, e.g. "layer1.conv1") or ops
            a module runs itself, "MODULE:OpType" (e.g. "layer1.0:Add", a block's residual add).
        engine: "openvino", "onnxruntime" or "auto" (time both on the first calibration batch, keep the faster).
        calibrate_method: observer for activation ranges: minmax, moving_average, percentile, mse, entropy.
        progress: called as progress(batches_done, batches_total) during calibration.
        input_shape: the model's input shape (N, ...) to check the calibration batches against.
        float_output: keep the model's output in float (False: quantize it too, as every other tensor).
        repeats: timed runs per engine (median, interleaved, after warm-up).

    Raises:
        CalibrationError: empty calibration set, or batches of the wrong shape (expected vs got).
        ConfigError: unknown engine or observer, or an excluded name that is no module of the graph.
    """
    if engine not in (*ENGINES, "auto"):
        raise ConfigError(f"engine={engine!r}: use one of {ENGINES} or 'auto'")
    reasons = dict(exclude) if isinstance(exclude, Mapping) else {n: "excluded by the caller" for n in exclude}
    _check_names(model, reasons)  # before the export: a misspelt name fails fast
    prepared = prepare_int8(model, calibration, calibrate_method=calibrate_method, progress=progress,
                            input_shape=input_shape)  # fmt: skip
    return build_prepared(prepared, exclude=reasons, engine=engine, float_output=float_output, repeats=repeats)


__all__ = [
    "ENGINES", "Int8Build", "Int8Module", "Int8Prepared", "build_int8_model", "build_prepared", "calibration_batches",
    "make_runner", "prepare_int8",
]  # fmt: skip
