"""Turn an exported fp32 ONNX model into the INT8 engine's QDQ model: calibrate, quantize, inspect.

Scheme (the same as convopt's fake-quant simulation): weights per-output-channel symmetric int8
(-127..127, zero point 0), activations per-tensor asymmetric uint8, biases int32 at scale
x_scale * w_scale. Activation ranges come from convopt's own observers (kernels/observers.py: min-max,
moving average, percentile, MSE, entropy) run on every float tensor of the graph; ONNX Runtime's
`quantize_static` then places QuantizeLinear/DequantizeLinear pairs where its QDQ patterns let
OpenVINO and ONNX Runtime fuse them into integer kernels (Conv, Gemm, MatMul, Add, pools, ...), reading
the ranges from a calibration cache file instead of calibrating again.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from convopt.kernels.observers import OBSERVERS, Observer
from convopt.transforms.onnx_names import node_module
from convopt.transforms.qdq_float import drop_unused_qdq, keep_inputs_float

MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that only move or reshape data: never "left in float" in any sense worth reporting.
DATA_MOVEMENT = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather", "Concat", "Constant", "Identity",
    "Slice", "Split", "Cast", "Expand", "Size", "ConstantOfShape", "Range",
})  # fmt: skip
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ORT's quantization tools log advice at WARNING level on every call; keep the terminal readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _float_tensors(model: Any) -> list[str]:
    """Names of the graph's float32 activations (inputs and node outputs; initializers excluded)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}  # fmt: skip
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    names += [out for node in model.graph.node if node.op_type != "Constant" for out in node.output if out]
    return [n for n in dict.fromkeys(names) if types.get(n) == onnx.TensorProto.FLOAT]


def observe_ranges(path: str | Path, batches: Sequence[torch.Tensor], observer: str,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, tuple[float, float]]:  # fmt: skip
    """{tensor name: (low, high)} for every float activation of the ONNX model at `path`, as `observer` sees
    them over the calibration batches (each batch: the model's single input, (N, ...) float32)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    names = _float_tensors(model)
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    observers: dict[str, Observer] = {name: OBSERVERS[observer]() for name in names}
    for done, batch in enumerate(batches, 1):
        values = session.run(names, {input_name: batch.detach().float().contiguous().numpy()})
        for name, value in zip(names, values):
            if value.size:
                observers[name].update(torch.from_numpy(value))
        if progress:
            progress(done, len(batches))
    ranges = {}
    for name, obs in observers.items():
        if obs.batches:
            low, high = obs.range()
            ranges[name] = (float(low), float(high))
    return ranges


def quantize_to_qdq(pre_path: str | Path, out_path: str | Path, ranges: dict[str, tuple[float, float]],
                    nodes_to_exclude: Sequence[str], float_output: bool = True) -> Any:  # fmt: skip
    """ORT's quantize_static on the pre-processed model, with `ranges` as its calibration; returns the
    QDQ onnx.ModelProto, with `float_output` its final output kept in float (no int8 rounding of the logits)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    cache = Path(out_path).with_suffix(".ranges.json")
    data = {name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    with quiet_onnxruntime():
        quantize_static(str(pre_path), str(out_path), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(nodes_to_exclude),
                        calibration_cache_path=str(cache),
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})  # fmt: skip
    model = onnx.load(str(out_path))
    keep_inputs_float(model, onnx.load(str(pre_path)), set(nodes_to_exclude))
    if float_output:
        strip_output_qdq(model)
    return model


def strip_output_qdq(model: Any) -> None:
    """Graph outputs produced by DequantizeLinear(QuantizeLinear(y)) become y: the logits stay float."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for output in model.graph.output:
        dq = producers.get(output.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1:
            continue
        source = producers.get(q.input[0])
        if source is None or consumers.get(q.input[0], 0) != 1:
            continue
        model.graph.node.remove(dq)
        model.graph.node.remove(q)
        source.output[list(source.output).index(q.input[0])] = output.name
    drop_unused_qdq(model)  # the removed pair's scale and zero point


def node_precisions(model: Any, reasons: dict[str, str], quantizable: frozenset[str]) -> list[dict[str, Any]]:
    """Every compute node of a QDQ model: {node, op_type, module, precision: int8 | float, reason}.

    A conv/GEMM runs in int8 when its data and weight both come from DequantizeLinear (the engines fuse
    DQ -> op -> Q into an integer kernel); any other op when ORT's quantizer knows it (`quantizable`), all
    its non-constant inputs come from DequantizeLinear and all its outputs feed QuantizeLinear. `reasons`
    names nodes excluded on purpose.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    users: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def dequantized(name: str) -> bool:
        source = producers.get(name)
        return source is not None and source.op_type == "DequantizeLinear"

    rows = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS or node.op_type in DATA_MOVEMENT:
            continue
        if node.op_type in MAC_OPS:
            int8 = len(node.input) >= 2 and dequantized(node.input[0]) and dequantized(node.input[1])
        else:
            inputs = [n for n in node.input if n and n not in constants]
            outputs_quantized = all(u.op_type == "QuantizeLinear" for o in node.output for u in users.get(o, [])) \
                and all(users.get(o) for o in node.output)  # fmt: skip
            # a float op between a DequantizeLinear and a QuantizeLinear is still a float op
            int8 = node.op_type in quantizable and bool(inputs) and all(dequantized(n) for n in inputs) \
                and outputs_quantized  # fmt: skip
        reason = ""
        if not int8:
            if node.name in reasons:
                reason = reasons[node.name]
            elif node.op_type not in quantizable:
                reason = f"{node.op_type}: ONNX Runtime's QDQ quantizer has no int8 pattern for it; it runs in float"
            else:
                reason = f"{node.op_type}: its neighbours run in float, so its inputs or outputs are not quantized"
        rows.append({"node": node.name, "op_type": node.op_type, "module": node_module(node),
                     "precision": "int8" if int8 else "float", "reason": reason})  # fmt: skip
    return rows


def quantizable_op_types() -> frozenset[str]:
    """The op types ORT's quantize_static quantizes by default (its QLinear and QDQ registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


__all__ = ["node_precisions", "observe_ranges", "quantizable_op_types", "quantize_to_qdq", "strip_output_qdq"]
