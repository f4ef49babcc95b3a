"""Per-layer cost of a model: group a trace's ops into layers and total them.

A layer is one call of a leaf module (a module with no children), holding every op it ran; an op run
directly in the forward of a module that has children (a functional `F.conv2d`, `x @ w`) is a layer of
its own, named after that module and the op.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from convopt.analysis.trace import OpRecord, Trace

_OP_KINDS = {"mm": "matmul", "addmm": "matmul", "bmm": "matmul", "baddbmm": "matmul", "_int_mm": "matmul",
             "mv": "matmul", "addmv": "matmul", "dot": "matmul"}  # fmt: skip


def op_kind(record: OpRecord) -> str:
    """A readable kind for a functional op: conv2d, conv_transpose3d, matmul, relu, ..."""
    if record.conv_spec is not None:
        spec = record.conv_spec
        return f"conv{'_transpose' if spec.transposed else ''}{spec.dims}d"
    if record.op in _OP_KINDS:
        return _OP_KINDS[record.op]
    name = record.op.lstrip("_")
    return name[len("native_"):] if name.startswith("native_") else name


@dataclass
class LayerCost:
    """Cost of one layer (see module docstring). MACs exact; other_ops estimated; bytes at ideal reuse."""

    name: str
    kind: str
    input_shape: list[int] | None
    output_shape: list[int] | None
    macs: int
    other_ops: int
    params: int
    bytes_read: int
    bytes_written: int
    dtype: str
    ops: list[str]
    conv: dict[str, Any] | None = None
    # Filled in by the roofline once a hardware profile is known:
    bound: str | None = None
    attainable_gmacs_per_s: float | None = None
    ideal_seconds: float | None = None
    # Filled in by measurement (--measure):
    seconds: float | None = None
    measured_gmacs_per_s: float | None = None
    measured_gb_per_s: float | None = None
    roofline_fraction: float | None = None

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """MACs per byte moved (0 for layers that do no multiply-accumulates)."""
        return self.macs / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes"] = self.bytes
        data["arithmetic_intensity"] = self.arithmetic_intensity
        return data


@dataclass
class CostReport:
    """Everything `convopt analyze` knows about one model at one input shape."""

    model: str
    input_shape: list[int]
    layers: list[LayerCost]
    params: int
    hardware: Any = None  # HardwareProfile
    energy: Any = None  # EnergyEstimate
    latency_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def other_ops(self) -> int:
        return sum(layer.other_ops for layer in self.layers)

    @property
    def activation_bytes(self) -> int:
        """Bytes of every tensor the forward pass produced (each layer's outputs)."""
        return sum(layer.bytes_written for layer in self.layers)

    def totals(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "flops": 2 * self.macs,
            "params": self.params,
            "activation_bytes": self.activation_bytes,
            "other_ops": self.other_ops,
            "bytes_moved": sum(layer.bytes for layer in self.layers),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "units": "1 MAC = 1 multiply-accumulate; FLOPs = 2 x MACs; other_ops are element operations",
            "totals": self.totals(),
            "layers": [layer.to_dict() for layer in self.layers],
            "hardware": self.hardware.to_dict() if self.hardware is not None else None,
            "latency_seconds": self.latency_seconds,
            "energy": self.energy.to_dict() if self.energy is not None else None,
            "notes": list(self.notes),
        }


def _layer_from_records(name: str, kind: str, records: list[OpRecord], params: int | None,
                        input_shape: Any, output_shape: Any) -> LayerCost:  # fmt: skip
    convs = [r.conv_spec for r in records if r.conv_spec is not None]
    conv = None
    if len(convs) == 1:
        conv = asdict(convs[0])
    return LayerCost(
        name=name,
        kind=kind,
        input_shape=list(input_shape) if input_shape is not None else None,
        output_shape=list(output_shape) if output_shape is not None else None,
        macs=sum(r.macs for r in records),
        other_ops=sum(r.other_ops for r in records),
        params=params if params is not None else sum(r.param_numel for r in records),
        bytes_read=sum(r.bytes_read for r in records),
        bytes_written=sum(r.bytes_written for r in records),
        dtype=records[0].dtype,
        ops=[r.op for r in records],
        conv=conv,
        seconds=sum(r.seconds for r in records) if all(r.seconds is not None for r in records) else None,
    )


def layers_from_trace(trace: Trace) -> list[LayerCost]:
    """Group recorded ops into layers, in execution order."""
    groups: dict[int, tuple[str, str, list[OpRecord], int | None, Any, Any]] = {}
    order: list[int] = []
    op_counts: dict[str, int] = {}
    for index, record in enumerate(trace.records):
        call = record.call
        if call is not None and not any(True for _ in call.module.children()):
            key = id(call)
            if key not in groups:
                suffix = f"#{call.index}" if call.index > 1 else ""
                params = sum(p.numel() for p in call.module.parameters(recurse=False))
                groups[key] = (call.name + suffix, call.kind or type(call.module).__name__, [], params,
                               call.input_shape, call.output_shape)  # fmt: skip
                order.append(key)
            groups[key][2].append(record)
            continue
        kind = op_kind(record)
        base = f"{call.name}.{kind}" if call is not None and call.name else kind
        op_counts[base] = op_counts.get(base, 0) + 1
        suffix = f"#{op_counts[base]}" if op_counts[base] > 1 else ""
        key = -(index + 1)
        groups[key] = (base + suffix, kind, [record], None, record.input_shape, record.output_shape)
        order.append(key)
    layers = []
    for key in order:
        name, kind, records, params, in_shape, out_shape = groups[key]
        if key >= 0:  # module calls know their output only after they return
            call = records[0].call
            in_shape = call.input_shape or records[0].input_shape
            out_shape = call.output_shape or records[-1].output_shape
        layers.append(_layer_from_records(name, kind, records, params, in_shape, out_shape))
    return layers
