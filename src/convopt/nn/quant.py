"""FakeQuantConv: a conv or linear layer run on int8-simulated input and weight, in float.

The scheme is the deployed engine's (ONNX Runtime QDQ, see transforms/int8_engine.py):
- weights: per-output-channel symmetric int8 on -127..127 (narrow range), scale = max|w_c| / 127,
  taken from the current weight at every call (so QAT sees its own updated weights);
- input activations: per-tensor affine uint8 (0..255), scale and zero point fixed by calibration
  through an observer (convopt.kernels.observers), or learned as in LSQ (Esser et al. 2020).
Gradients use the straight-through estimator (Bengio et al. 2013): 1 inside the clamp range, 0 outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import CalibrationError, ConfigError
from convopt.kernels.observers import OBSERVERS, Observer
from convopt.kernels.quantize import MIN_SCALE, QuantScheme, choose_qparams, fake_quantize

WEIGHT_SCHEME = QuantScheme(bits=8, signed=True, symmetric=True, per_channel=True, axis=0, narrow_range=True)
ACT_SCHEME = QuantScheme(bits=8, signed=False, symmetric=False)
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Exactly x in the forward pass (y - y.detach() is exactly 0); gradient multiplied by g."""
    scaled = x * g
    return x.detach() + (scaled - scaled.detach())


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QuantScheme,
                      grad_scale: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Per-tensor fake quantization with a learnable step size (LSQ, Esser et al. 2020, eq. 3).

    Forward: x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s, exactly as kernels.quantize.fake_quantize,
    with the zero point z fixed. Backward, with v = x / s + z and "inside" meaning qmin < v < qmax (strict,
    as in the paper): d x_hat / d x = 1 inside, 0 outside (STE); d x_hat / d s = round(x/s) - x/s inside,
    qmin - z where v <= qmin and qmax - z where v >= qmax, multiplied by `grad_scale` (the paper's
    g = 1/sqrt(N * Q_P)).

    Args:
        x: any shape. scale: () float, requires grad. zero_point: () integer.
    Returns:
        Tensor of x's shape.
    """
    if scheme.per_channel:
        raise ConfigError("lsq_fake_quantize is per-tensor: pass a per_channel=False scheme")
    s = _grad_scale(scale.clamp_min(MIN_SCALE), grad_scale)
    z = zero_point.to(x.dtype)
    v = (x / s).detach()
    # round() has zero gradient, so `exact` alone gives d/ds = (clamped code - z): right outside the range
    exact = ((torch.round(v) + z).clamp(scheme.qmin, scheme.qmax) - z) * s
    inside = (v + z > scheme.qmin) & (v + z < scheme.qmax)
    # inside, add d/dx = 1 and d/ds = -x/s through terms that are exactly 0 in the forward pass
    correction = (x - x.detach()) - v * (s - s.detach())
    return exact + torch.where(inside, correction, torch.zeros_like(correction))


def weight_qparams(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (scale, zero point) of a weight (out, ...), from its detached extremes."""
    flat = weight.detach().reshape(weight.shape[0], -1)  # (out, in * k...)
    return choose_qparams(flat.amin(dim=1), flat.amax(dim=1), WEIGHT_SCHEME)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight as the engine stores it (per-channel int8 codes times scale), with STE gradient."""
    scale, zero_point = weight_qparams(weight)
    return fake_quantize(weight, scale, zero_point, WEIGHT_SCHEME)


class FakeQuantConv(nn.Module):
    """Wraps `inner` (nn.Conv1d/2d/3d or nn.Linear) so that it computes inner(fq(x)) with fq(weight).

    Modes: `observe=True` feeds each input to the observer and runs `inner` in float (calibration);
    `enabled=False` runs `inner` in float (used to quantize some layers only); otherwise both input and
    weight are fake-quantized. Buffers (or, with `learnable_scale`, a parameter) `act_scale` () float32
    and `act_zero_point` () int32 hold the input's quantization; act_scale 0 means not calibrated yet.

    Args:
        inner: the float layer; its parameters stay under `inner.` in the state dict.
        observer: a name from convopt.kernels.observers.OBSERVERS for the input activations.
        learnable_scale: make act_scale an nn.Parameter trained with the LSQ gradient.
    Shapes: as `inner` (N, C_in, *spatial) -> (N, C_out, *spatial') or (N, *, in) -> (N, *, out).
    """

    def __init__(self, inner: nn.Module, *, observer: str = "minmax", learnable_scale: bool = False):
        super().__init__()
        if type(inner) not in QUANTIZABLE:
            raise ConfigError(
                f"FakeQuantConv wraps {', '.join(t.__name__ for t in QUANTIZABLE)}; got {type(inner).__name__}"
            )
        if observer not in OBSERVERS:
            raise ConfigError(f"observer={observer!r}: use one of {', '.join(OBSERVERS)}")
        self.inner = inner
        self.observer_name = observer
        self.observer: Observer | None = None
        self.observe = False
        self.enabled = True
        self.register_buffer("act_scale", torch.zeros((), dtype=torch.float32))
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int32))
        self._learnable = False
        self.learnable_scale = learnable_scale

    @property
    def learnable_scale(self) -> bool:
        return self._learnable

    @learnable_scale.setter
    def learnable_scale(self, value: bool) -> None:
        """Switch act_scale between a buffer and a parameter, keeping its value and its state-dict key."""
        if bool(value) == self._learnable:
            return
        current = self.act_scale.detach().clone()
        if value:
            del self._buffers["act_scale"]
            self.act_scale = nn.Parameter(current)
        else:
            del self._parameters["act_scale"]
            self.register_buffer("act_scale", current)
        self._learnable = bool(value)

    @property
    def calibrated(self) -> bool:
        return float(self.act_scale.detach()) > 0

    def start_observing(self) -> None:
        """A fresh observer; inputs are recorded (and the layer runs in float) until `finish_observing`."""
        self.observer = OBSERVERS[self.observer_name]()
        self.observe = True

    def finish_observing(self, name: str = "") -> None:
        """Set act_scale / act_zero_point from what the observer saw."""
        self.observe = False
        if self.observer is None or self.observer.batches == 0:
            raise CalibrationError(
                f"layer {name or self.inner!r} saw no calibration data: it is not called by the model's forward; "
                "exclude it from quantization"
            )
        scale, zero_point = self.observer.qparams(ACT_SCHEME)
        with torch.no_grad():
            self.act_scale.copy_(scale.reshape(()))
            self.act_zero_point.copy_(zero_point.reshape(()).to(torch.int32))

    def act_range(self) -> tuple[float, float]:
        """The real interval the input is clamped to: [(qmin - z) s, (qmax - z) s]."""
        s, z = float(self.act_scale.detach()), int(self.act_zero_point)
        return (ACT_SCHEME.qmin - z) * s, (ACT_SCHEME.qmax - z) * s

    def fake_quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.calibrated:
            raise CalibrationError(
                f"{type(self.inner).__name__} input has act_scale {float(self.act_scale.detach()):g}: not calibrated "
                "(or a learned scale collapsed); run convopt.transforms.quant_sim.calibrate(sim, batches) first"
            )
        if self._learnable:
            features = x[0].numel() if x.dim() > 1 else x.numel()
            g = 1.0 / math.sqrt(max(1, features) * (ACT_SCHEME.qmax - ACT_SCHEME.qmin))
            return lsq_fake_quantize(x, self.act_scale, self.act_zero_point, ACT_SCHEME, g)
        return fake_quantize(x, self.act_scale, self.act_zero_point, ACT_SCHEME)

    def run_inner(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`inner`'s op with a substitute weight (same bias, padding mode, stride, ...)."""
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, weight, self.inner.bias)
        return self.inner._conv_forward(x, weight, self.inner.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            if self.observer is None:  # observe was switched on directly rather than by start_observing()
                self.observer = OBSERVERS[self.observer_name]()
            self.observer.update(x)
            return self.inner(x)
        if not self.enabled:
            return self.inner(x)
        return self.run_inner(self.fake_quantize_input(x), fake_quantize_weight(self.inner.weight))

    def extra_repr(self) -> str:
        state = "observing" if self.observe else ("float" if not self.enabled else "int8")
        return (f"{state}, observer={self.observer_name}, act_scale={float(self.act_scale.detach()):.4g}, "
                f"act_zero_point={int(self.act_zero_point)}, learnable_scale={self._learnable}")  # fmt: skip


__all__ = [
    "ACT_SCHEME", "QUANTIZABLE", "WEIGHT_SCHEME", "FakeQuantConv", "fake_quantize_weight", "lsq_fake_quantize",
    "weight_qparams",
]  # fmt: skip
