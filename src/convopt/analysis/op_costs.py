"""Pure per-op cost formulas, keyed by aten op, kept apart from the code that reads a model.

Two kinds of work are counted, never mixed:

* MACs (multiply-accumulates) of conv, linear, matmul/bmm/einsum and attention: exact, the convention
  torchvision publishes as `_ops` and `torch.utils.flop_counter` counts (FLOPs = 2 x MACs).
* other ops (element-wise, normalization, pooling, softmax, resampling): one op is one arithmetic
  operation on one element. These are estimates with the per-element counts written below.

Users extend the tables with `register_mac_formula` / `register_other_formula`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from convopt.spec import ConvSpec

aten = torch.ops.aten
Formula = Callable[[tuple[Any, ...], dict[str, Any], Any], int]

MAC_FORMULAS: dict[Any, Formula] = {}
OTHER_FORMULAS: dict[Any, Formula] = {}


def register_mac_formula(*packets: Any) -> Callable[[Formula], Formula]:
    """Register `formula(args, kwargs, out) -> MACs` for aten op packets (e.g. `torch.ops.aten.mm`)."""

    def wrap(formula: Formula) -> Formula:
        for packet in packets:
            MAC_FORMULAS[packet] = formula
        return formula

    return wrap


def register_other_formula(*packets: Any) -> Callable[[Formula], Formula]:
    """Register `formula(args, kwargs, out) -> other ops` for aten op packets."""

    def wrap(formula: Formula) -> Formula:
        for packet in packets:
            OTHER_FORMULAS[packet] = formula
        return formula

    return wrap


def conv_spec_from_call(args: tuple[Any, ...]) -> ConvSpec:
    """ConvSpec of an `aten.convolution`-style call: (input, weight, bias, stride, padding, dilation,
    transposed, output_padding, groups)."""
    _, weight, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    return ConvSpec.from_weight(
        weight, bias=bias is not None, stride=list(stride), padding=list(padding), dilation=list(dilation),
        groups=int(groups), transposed=bool(transposed), output_padding=list(output_padding),
    )  # fmt: skip


@register_mac_formula(aten.convolution, aten._convolution, aten.mkldnn_convolution, aten.convolution_overrideable)
def _conv_macs(args, kwargs, out) -> int:
    if len(args) < 9:  # mkldnn_convolution: (input, weight, bias, padding, stride, dilation, groups)
        x, w, b, padding, stride, dilation, groups = args
        spec = ConvSpec.from_weight(w, bias=b is not None, stride=list(stride), padding=list(padding),
                                    dilation=list(dilation), groups=int(groups))  # fmt: skip
        return spec.macs(x.shape)
    return conv_spec_from_call(args).macs(args[0].shape)


@register_mac_formula(aten.mm, aten._int_mm)
def _mm_macs(args, kwargs, out) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


@register_mac_formula(aten.addmm)
def _addmm_macs(args, kwargs, out) -> int:
    return _mm_macs(args[1:], kwargs, out)


@register_mac_formula(aten.bmm)
def _bmm_macs(args, kwargs, out) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


@register_mac_formula(aten.baddbmm)
def _baddbmm_macs(args, kwargs, out) -> int:
    return _bmm_macs(args[1:], kwargs, out)


@register_mac_formula(aten.mv, aten.addmv)
def _mv_macs(args, kwargs, out) -> int:
    matrix = args[0] if args[0].dim() == 2 else args[1]
    return matrix.shape[0] * matrix.shape[1]


@register_mac_formula(aten.dot, aten.vdot)
def _dot_macs(args, kwargs, out) -> int:
    return args[0].numel()


@register_mac_formula(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
)
def _sdpa_macs(args, kwargs, out) -> int:
    # q (..., L, E), k (..., S, E), v (..., S, Ev): Q K^T then softmax(QK^T) V.
    q, k, v = args[0], args[1], args[2]
    batch = math.prod(q.shape[:-2])
    length, emb, source, emb_v = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    return batch * length * source * (emb + emb_v)


# ---- other ops ---------------------------------------------------------------------------------------
def _numel_of(out: Any) -> int:
    first = out[0] if isinstance(out, (tuple, list)) else out
    return first.numel() if isinstance(first, torch.Tensor) else 0


def pointwise_ops(args, kwargs, out) -> int:
    """Element-wise op (activation, add, mul, ...): one op per output element."""
    return _numel_of(out)


@register_other_formula(aten._native_batch_norm_legit_no_training, aten._batch_norm_no_update)
def _bn_inference_ops(args, kwargs, out) -> int:
    # Inference batch norm is a per-channel scale and shift: 2 ops per element.
    return 2 * args[0].numel()


@register_other_formula(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional)
def _batch_norm_ops(args, kwargs, out) -> int:
    # (input, weight, bias, running_mean, running_var, training, ...): stats only when training.
    training = args[5] if len(args) > 5 and isinstance(args[5], bool) else kwargs.get("training", True)
    return _normalization_ops(args, kwargs, out) if training else _bn_inference_ops(args, kwargs, out)


@register_other_formula(aten.native_layer_norm, aten.native_group_norm, aten._batch_norm_with_update)
def _normalization_ops(args, kwargs, out) -> int:
    # Statistics computed on the fly: mean, variance, subtract, scale, shift ~ 5 ops per element.
    return 5 * args[0].numel()


@register_other_formula(
    aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices, aten.max_pool3d_with_indices,
    aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
)  # fmt: skip
def _window_pool_ops(args, kwargs, out) -> int:
    # One compare (max) or add (avg) per window tap per output element.
    kernel = args[1]
    dims = args[0].dim() - 2 if args[0].dim() > 2 else 1
    kernel = list(kernel) * dims if len(kernel) == 1 else list(kernel)
    return _numel_of(out) * math.prod(kernel)


@register_other_formula(
    aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d,
    aten.adaptive_avg_pool1d, aten.mean, aten.sum, aten.amax, aten.amin, aten.max, aten.min, aten.var, aten.std,
)  # fmt: skip
def _reduction_ops(args, kwargs, out) -> int:
    # Each input element is folded in once.
    return args[0].numel()


@register_other_formula(aten._softmax, aten._log_softmax)
def _softmax_ops(args, kwargs, out) -> int:
    # max, exp(x - max), sum, divide (or log): ~ 4 ops per element.
    return 4 * args[0].numel()


_UPSAMPLE_TAPS = {
    aten.upsample_nearest1d: 1, aten.upsample_nearest2d: 1, aten.upsample_nearest3d: 1,
    aten._upsample_nearest_exact2d: 1, aten.upsample_linear1d: 2, aten.upsample_bilinear2d: 4,
    aten.upsample_trilinear3d: 8, aten.upsample_bicubic2d: 16,
}  # fmt: skip


def _upsample_formula(taps: int) -> Formula:
    def formula(args, kwargs, out) -> int:
        return taps * _numel_of(out)  # one weighted tap per source pixel per output element

    return formula


for _packet, _taps in _UPSAMPLE_TAPS.items():
    OTHER_FORMULAS[_packet] = _upsample_formula(_taps)
