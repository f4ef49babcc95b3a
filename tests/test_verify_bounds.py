"""Interval bound propagation: exact on a hand-computed case, sound on sampled boxes, typed errors otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convopt.errors import ConvoptError, UnsupportedLayerError
from convopt.models import default_model
from convopt.verify import ibp_certify, interval_bounds


pytestmark = pytest.mark.usefixtures("one_thread")


def box_points(x: torch.Tensor, eps: float, n: int, corners: int, seed: int = 0) -> torch.Tensor:
    """n points of one box in x's dtype, exactly inside |p - x| <= eps; the first `corners` are box corners."""
    generator = torch.Generator().manual_seed(seed)
    centre = x.double()
    hi = (centre + eps).to(x.dtype)
    hi = torch.where(hi.double() > centre + eps, torch.nextafter(hi, torch.full_like(hi, -1e9)), hi)
    lo = (centre - eps).to(x.dtype)
    lo = torch.where(lo.double() < centre - eps, torch.nextafter(lo, torch.full_like(lo, 1e9)), lo)
    shape = (n, *x.shape[1:])
    points = lo + torch.rand(shape, generator=generator, dtype=x.dtype) * (hi - lo)
    pick = torch.rand((corners, *x.shape[1:]), generator=generator) < 0.5
    points[:corners] = torch.where(pick, hi, lo)
    return torch.maximum(torch.minimum(points, hi), lo)


def worst_violation(model: nn.Module, x: torch.Tensor, eps: float, n: int, corners: int) -> tuple[float, int]:
    lower, upper = interval_bounds(model, x, eps)
    assert bool((lower <= upper).all())
    points = box_points(x, eps, n, corners)
    with torch.no_grad():
        outputs = torch.cat([model(points[i : i + 1000]) for i in range(0, n, 1000)])
    violation = torch.maximum(lower - outputs, outputs - upper).clamp(min=0)
    return float(violation.max()), len(outputs)


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) * 2 - 0.5)  # some negative scales
            module.bias.data.copy_(torch.rand(c, generator=generator) - 0.5)
    return model.eval()


class ResidualNet(nn.Module):
    """Residual adds (operator.add and torch.add), functional relu/pooling, view, cat: what IBP must trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")
        self.short = nn.Conv2d(2, 6, 1)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6 * 4 * 4 + 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out) + self.short(x)
        out = torch.add(torch.sigmoid(out), self.act(out))
        out = self.pool(F.max_pool2d(out, 1)) - 0.5 * out[:, :, ::2, ::2]
        flat = torch.cat([out.view(out.size(0), -1), torch.flatten(self.gap(out), 1)], dim=1)
        return self.fc(torch.tanh(flat) * 2)


def test_hand_computed_case_is_exact():
    first, second = nn.Linear(2, 2), nn.Linear(2, 1)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        first.bias.copy_(torch.tensor([0.5, -1.0]))
        second.weight.copy_(torch.tensor([[1.0, -1.0]]))
        second.bias.copy_(torch.tensor([0.25]))
    model = nn.Sequential(first, nn.ReLU(), second)
    x = torch.tensor([[1.0, 2.0]])
    # Layer 1: centre (-2.5, 3), radius (1.5, 1.75) -> [-4, -1] x [1.25, 4.75]; ReLU -> [0, 0] x [1.25, 4.75];
    # layer 2: centre 0 - 3 + 0.25 = -2.75, radius 1.75 -> [-4.5, -1.0].
    lower, upper = interval_bounds(model, x, 0.5, rounding=False)
    assert torch.equal(lower, torch.tensor([[-4.5]])) and torch.equal(upper, torch.tensor([[-1.0]]))
    sound_lower, sound_upper = interval_bounds(model, x, 0.5)
    assert sound_lower <= lower and sound_upper >= upper and float(sound_upper - upper) < 1e-4
    # Every hidden corner: relu(first(x +- 0.5)) reaches both ends of [-4.5, -1.0].
    corners = torch.tensor([[a, b] for a in (0.5, 1.5) for b in (1.5, 2.5)])
    outputs = model(corners).detach()
    assert float(outputs.min()) == -4.5 and float(outputs.max()) == -1.0


def test_default_model_is_sound_on_10000_points_of_the_box():
    from convopt.data import load_data

    model = default_model()
    x, _ = load_data("mnist", limit=1)  # a real digit: most pixels sit at 0 or 1
    violation, count = worst_violation(model, x, 0.01, 10_000, corners=2_000)
    assert count == 10_000 and violation == 0.0


def test_residual_net_is_sound_and_zero_eps_is_tight():
    model = randomise_batchnorm(ResidualNet())
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    violation, _ = worst_violation(model, x, 0.05, 3_000, corners=1_000)
    assert violation == 0.0
    lower, upper = interval_bounds(model, x, 0.0)
    output = model(x).detach()
    assert bool((lower <= output).all() and (output <= upper).all()) and float((upper - lower).max()) < 5e-3


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_and_conv3d_nets_are_sound(dims):
    conv, bn, pool = {1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d), 3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)}[dims]
    model = randomise_batchnorm(nn.Sequential(conv(2, 4, 3, padding=1), bn(4), nn.ReLU(inplace=True), pool(2),
                                              nn.ELU(), nn.Flatten(), nn.LazyLinear(3)))  # fmt: skip
    x = torch.randn(1, 2, *([4] * dims))
    model(x)  # materialise the lazy layer
    assert worst_violation(model.eval(), x, 0.1, 2_000, corners=500)[0] == 0.0


@pytest.mark.parametrize("steps", ["fuse", "winograd_f4"])
def test_optimized_models_with_convopt_layers_are_sound(steps):
    import convopt
    from convopt.data import load_data

    x, _ = load_data("mnist", limit=1)
    second = convopt.FuseConfig() if steps == "fuse" else convopt.AlgorithmConfig("winograd_f4")
    optimized = convopt.apply(default_model(), convopt.Compose([convopt.FoldBatchNormConfig(), second]),
                              example_inputs=x)  # fmt: skip
    optimized = (optimized[0] if isinstance(optimized, tuple) else optimized).eval()
    kinds = {type(m).__name__ for m in optimized.modules()}
    assert ("FusedConv" if steps == "fuse" else "AlgoConv2d") in kinds
    assert worst_violation(optimized, x, 0.002, 1_000, corners=300)[0] == 0.0


def test_linear_bounds_are_reached_at_the_corners():
    model = nn.Linear(50, 4)
    x = torch.randn(1, 50)
    lower, upper = interval_bounds(model, x, 0.2)
    with torch.no_grad():
        top = model(x + 0.2 * torch.sign(model.weight))  # (4, 4): row j maximises output j
        bottom = model(x - 0.2 * torch.sign(model.weight))
    assert bool((upper[0] >= top.diagonal()).all() and (lower[0] <= bottom.diagonal()).all())
    assert float((upper[0] - top.diagonal()).max()) < 1e-4 and float((bottom.diagonal() - lower[0]).max()) < 1e-4


def test_input_range_clamps_the_box():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    free = interval_bounds(model, x, 0.3)
    clamped = interval_bounds(model, x, 0.3, input_range=(0.0, 1.0))
    assert bool((clamped[0] >= free[0]).all() and (clamped[1] <= free[1]).all())
    assert float((clamped[1] - clamped[0]).sum()) < float((free[1] - free[0]).sum())


def test_inplace_relu_aliasing_is_followed():
    class Aliasing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.relu(x)  # x itself now holds relu(x)
            return x + y

    lower, upper = interval_bounds(Aliasing(), torch.zeros(1, 3), 1.0)
    assert float(lower.min()) >= -1e-5 and float(upper.max()) == pytest.approx(2.0, abs=1e-5)


class Unsupported(nn.Module):
    def __init__(self, layer: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = layer or nn.Identity()

    def forward(self, x):
        return torch.sin(self.layer(x))


def test_unsupported_layers_raise_typed_errors_naming_the_node():
    with pytest.raises(UnsupportedLayerError, match=r"node 'sin'.*function sin"):
        interval_bounds(Unsupported(), torch.zeros(1, 3), 0.1)
    with pytest.raises(UnsupportedLayerError, match=r"module 'layer' \(GELU\).*not monotone"):
        interval_bounds(Unsupported(nn.GELU()), torch.zeros(1, 3), 0.1)
    with pytest.raises(UnsupportedLayerError, match="call model.eval"):
        interval_bounds(nn.Sequential(nn.BatchNorm1d(3)).train(), torch.zeros(2, 3), 0.1)

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedLayerError, match="cannot trace Branchy"):
        interval_bounds(Branchy(), torch.zeros(1, 3), 0.1)
    with pytest.raises(ConvoptError, match="non-negative"):
        interval_bounds(nn.Linear(3, 1), torch.zeros(1, 3), -0.1)


def test_certified_accuracy_never_exceeds_clean_and_falls_with_eps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(200, 6)
    y = model(x).argmax(1).detach()
    y[:20] = (y[:20] + 1) % 3  # some wrong labels: clean accuracy 0.9
    reports = [ibp_certify(model, x, y, eps, input_range=None) for eps in (0.0, 0.01, 0.05, 0.2)]
    assert reports[0].clean_accuracy == pytest.approx(0.9) and reports[0].certified_accuracy == pytest.approx(0.9)
    certified = [r.certified_accuracy for r in reports]
    assert certified == sorted(certified, reverse=True) and certified[-1] < certified[0]
    assert all(r.certified_accuracy <= r.clean_accuracy for r in reports)
    assert reports[1].to_dict()["eps"] == 0.01
