"""Layers kept in float read float inputs: undo ORT's shared activation quantization on their input paths.

ONNX Runtime quantizes a tensor once for all of its consumers (the producing conv's output Q/DQ pair),
and folds a ReLU or Clip that follows a conv into that pair's range. A layer excluded from quantization
would therefore still read int8-rounded values, unlike in convopt's simulation, where a float layer's
input is float. This pass gives each excluded node an unquantized copy of its input path: it skips the
Q/DQ pairs, re-applies any activation ORT folded into them, and clones pass-through ops (pooling,
reshapes) on the way; other consumers keep their quantized path unchanged.
"""

from __future__ import annotations

from typing import Any

from convopt.errors import ConfigError

PASS_THROUGH = frozenset({"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Relu",
                          "Clip", "LeakyRelu"})  # fmt: skip
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})  # the ones ORT folds into a quantizer's range
SUFFIX = "_float"


class _Rewriter:
    def __init__(self, model: Any, pre_model: Any):
        self.model = model
        self.producers = {out: n for n in model.graph.node for out in n.output}
        self.pre_producers = {out: n for n in pre_model.graph.node for out in n.output}
        self.present = {n.name for n in model.graph.node}
        self.initializers = {i.name for i in model.graph.initializer}
        self.pre_initializers = {i.name: i for i in pre_model.graph.initializer}

    def float_source(self, name: str, new: list[Any]) -> str:
        """A tensor with `name`'s values computed without int8 rounding (nodes to add go to `new`)."""
        source = self.producers.get(name)
        if source is None:
            return name
        if source.op_type == "DequantizeLinear":
            quantize = self.producers.get(source.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                return name  # a constant's DequantizeLinear (weights, biases)
            raw = quantize.input[0]
            value = self.float_source(raw, new)
            folded = self.pre_producers.get(raw)
            if folded is not None and folded.op_type in FOLDED_ACTIVATIONS and folded.name not in self.present:
                value = self.clone(folded, value, new)  # ORT folded it into the quantizer's [0, max] range
            return value
        if source.op_type in PASS_THROUGH:
            value = self.float_source(source.input[0], new)
            return name if value == source.input[0] else self.clone(source, value, new)
        return name

    def clone(self, template: Any, data_input: str, new: list[Any]) -> str:
        import onnx

        output = template.output[0] + SUFFIX
        if output in self.producers:  # already made for another excluded node
            return output
        for extra in template.input[1:]:
            if extra and extra not in self.initializers and extra not in self.producers:
                if extra not in self.pre_initializers:
                    raise ConfigError(f"cannot keep the input of {template.name} in float: its operand {extra!r} "
                                      "is missing from the quantized graph")  # fmt: skip
                self.model.graph.initializer.append(self.pre_initializers[extra])
                self.initializers.add(extra)
        node = onnx.NodeProto()
        node.CopyFrom(template)
        node.name = template.name + SUFFIX
        del node.input[:]
        node.input.extend([data_input, *template.input[1:]])
        del node.output[:]
        node.output.append(output)  # MaxPool's optional indices output is not needed
        new.append(node)
        self.producers[output] = node
        return output


def keep_inputs_float(model: Any, pre_model: Any, nodes: set[str]) -> None:
    """Rewire every node named in `nodes` of the QDQ `model` to unquantized inputs (in place).

    Args:
        model: the QDQ onnx.ModelProto from ORT's quantize_static.
        pre_model: the float model it was quantized from (to recover the activations ORT folded away).
        nodes: names of the nodes kept in float.
    """
    rewriter = _Rewriter(model, pre_model)
    for node in [n for n in model.graph.node if n.name in nodes]:
        new: list[Any] = []
        for index, name in enumerate(node.input):
            if name and name not in rewriter.initializers:
                node.input[index] = rewriter.float_source(name, new)
        position = list(model.graph.node).index(node)
        for offset, added in enumerate(new):  # upstream first: keeps the graph topologically sorted
            model.graph.node.insert(position + offset, added)
    drop_unused_qdq(model)


def drop_unused_qdq(model: Any) -> None:
    """Remove QuantizeLinear / DequantizeLinear nodes nobody reads, then initializers nobody uses."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for node in model.graph.node for name in node.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]  # fmt: skip
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    for orphan in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(orphan)


__all__ = ["drop_unused_qdq", "keep_inputs_float"]
