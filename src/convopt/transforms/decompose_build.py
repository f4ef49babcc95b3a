"""The layers that replace a decomposed conv or linear: their structure (one definition, used both to build
and to time them) and their weights from the factors (decompose_factors.py).

- tucker: reduce 1x1 (C_in->R_in) -> core KxK (R_in->R_out, the original stride/padding/dilation) ->
  expand 1x1 (R_out->C_out); a factor at full rank is dropped (the core absorbs it).
- cp: 1x1 (C_in->R) -> depthwise Kh x 1 -> depthwise 1 x Kw -> 1x1 (R->C_out).
- svd: two thin layers C_in->R->C_out (a conv's stride and padding go to the first).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from convopt.transforms import decompose_factors as factors


def _conv(like: _ConvNd, c_in: int, c_out: int, bias: bool = False, **kw: object) -> _ConvNd:
    """A default-initialised conv of like's type, dtype and device (1x1 unless kernel_size is given)."""
    kernel = kw.pop("kernel_size", (1,) * (like.weight.dim() - 2))
    return type(like)(c_in, c_out, kernel, bias=bias, device=like.weight.device, dtype=like.weight.dtype, **kw)


def skeleton(module: nn.Module, method: str, ranks: tuple[int, ...]) -> nn.Sequential:
    """The replacement's layers, default-initialised, in the module's memory layout: the one definition of its
    structure, used to build it and to time it (its speed does not depend on the values). The last layer
    carries the original bias."""
    layers = _layers(module, method, ranks)
    w = module.weight
    if w.dim() in (4, 5) and not w.is_contiguous():
        layout = torch.channels_last if w.dim() == 4 else torch.channels_last_3d
        if w.is_contiguous(memory_format=layout):  # a channels_last model stays channels_last throughout
            layers.to(memory_format=layout)
    return layers


def _layers(module: nn.Module, method: str, ranks: tuple[int, ...]) -> nn.Sequential:
    c_out, c_in = module.weight.shape[:2]
    bias = module.bias is not None
    if method == "svd":
        (rank,) = ranks
        if isinstance(module, nn.Linear):
            on = dict(device=module.weight.device, dtype=module.weight.dtype)
            layers = [nn.Linear(c_in, rank, bias=False, **on), nn.Linear(rank, c_out, bias=bias, **on)]
        else:  # stride and padding go to the first 1x1 (no bias: padded zeros stay zero through it)
            layers = [_conv(module, c_in, rank, stride=module.stride, padding=module.padding,
                            padding_mode=module.padding_mode), _conv(module, rank, c_out, bias)]  # fmt: skip
        return nn.Sequential(OrderedDict(zip(("reduce", "expand"), layers)))
    geometry = dict(padding_mode=module.padding_mode)
    if method == "tucker":
        r_out, r_in = ranks
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if r_in < c_in:
            parts["reduce"] = _conv(module, c_in, r_in)
        parts["core"] = _conv(module, r_in, r_out, bias and r_out == c_out, kernel_size=module.kernel_size,
                              stride=module.stride, padding=module.padding, dilation=module.dilation, **geometry)  # fmt: skip
        if r_out < c_out:
            parts["expand"] = _conv(module, r_out, c_out, bias)
        return nn.Sequential(parts)
    (rank,) = ranks
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    pad = module.padding
    pad_v, pad_h = (pad, pad) if isinstance(pad, str) else ((pad[0], 0), (0, pad[1]))
    return nn.Sequential(OrderedDict(
        reduce=_conv(module, c_in, rank),
        vertical=_conv(module, rank, rank, kernel_size=(kh, 1), stride=(sh, 1), padding=pad_v, dilation=(dh, 1),
                       groups=rank, **geometry),
        horizontal=_conv(module, rank, rank, kernel_size=(1, kw), stride=(1, sw), padding=pad_h, dilation=(1, dw),
                         groups=rank, **geometry),
        expand=_conv(module, rank, c_out, bias),
    ))  # fmt: skip


def build(module: nn.Module, method: str, ranks: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
    """The replacement (nn.Sequential of smaller layers) holding the factors, and the float64 weight it computes."""
    w = module.weight.detach()
    if method == "svd":
        first, second = factors.svd(w.reshape(w.shape[0], w.shape[1]), ranks[0])  # (R, C_in), (C_out, R)
        values, approx = {"reduce": first, "expand": second}, second @ first
    elif method == "tucker":
        u_out, core, u_in = factors.tucker2(w, *ranks)  # (C_out, R_out), (R_out, R_in, *k), (C_in, R_in)
        values, approx = {"reduce": u_in.T, "core": core, "expand": u_out}, factors.tucker2_to_weight(u_out, core, u_in)
    else:
        a, b, v, h = factors.cp(w, ranks[0])  # (C_out, R), (C_in, R), (Kh, R), (Kw, R)
        values, approx = {"reduce": b.T, "vertical": v.T, "horizontal": h.T, "expand": a}, factors.cp_to_weight(a, b, v, h)
    replacement = skeleton(module, method, ranks)
    with torch.no_grad():
        for name, layer in replacement.named_children():
            layer.weight.copy_(values[name].reshape(layer.weight.shape))
        last = replacement[-1]
        if module.bias is not None:
            last.bias.copy_(module.bias.detach())
    return replacement, approx
