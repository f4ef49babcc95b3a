"""Random convolution cases for property tests, biased so each algorithm's support region is hit often.

`draw_case(rng, region)` is a plain function of a random.Random, so the same sampler feeds hypothesis
(through st.randoms) and the test that measures how often a region is hit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

# Per algorithm: the part of the space it claims. Anything not listed draws from the whole space.
REGIONS: dict[str, dict[str, Any]] = {
    "winograd_f2": {"dims": [2], "kernel": 3, "stride": 1, "dilation": 1},
    "winograd_f4": {"dims": [2], "kernel": 3, "stride": 1, "dilation": 1},
    "winograd_f6": {"dims": [2], "kernel": 3, "stride": 1, "dilation": 1},
    "fft": {"stride": 1},
}


@dataclass
class ConvCase:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    kwargs: dict[str, Any]

    def describe(self) -> str:
        return f"x{tuple(self.x.shape)} w{tuple(self.weight.shape)} bias={self.bias is not None} {self.kwargs}"


def draw_case(rng: random.Random, algorithm: str = "", dtype: torch.dtype = torch.float64) -> ConvCase:
    region = REGIONS.get(algorithm, {}) if rng.random() < 0.6 else {}
    dims = rng.choice(region.get("dims", [1, 2, 3]))
    groups = rng.choice([1, 1, 2, 3])
    depthwise = rng.random() < 0.15
    c_in = groups * rng.randint(1, 3)
    c_out = groups * rng.randint(1, 3)
    if depthwise:
        groups = c_in = c_out = rng.randint(1, 4)
    kernel = tuple(region.get("kernel") or rng.randint(1, 4) for _ in range(dims))
    stride = tuple(region.get("stride") or rng.choice([1, 1, 2, 3]) for _ in range(dims))
    dilation = tuple(region.get("dilation") or rng.choice([1, 1, 2]) for _ in range(dims))
    choice = rng.random()
    if choice < 0.15 and all(s == 1 for s in stride):
        padding: Any = "same"
    elif choice < 0.25:
        padding = "valid"
    elif choice < 0.4:
        padding = tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(dims))
    else:
        padding = tuple(rng.randint(0, 2) for _ in range(dims))
    # Spatial sizes large enough for at least one output (3-D kept small for speed).
    low = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    spatial = tuple(lo + rng.randint(0, 9 if dims < 3 else 3) for lo in low)
    batch = rng.randint(1, 3)
    generator = torch.Generator().manual_seed(rng.randint(0, 2**31))
    x = torch.randn((batch, c_in, *spatial), generator=generator, dtype=dtype)
    weight = torch.randn((c_out, c_in // groups, *kernel), generator=generator, dtype=dtype)
    bias = torch.randn(c_out, generator=generator, dtype=dtype) if rng.random() < 0.5 else None
    return ConvCase(x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def conv_cases(algorithm: str, dtype: torch.dtype = torch.float64) -> st.SearchStrategy[ConvCase]:
    return st.randoms(use_true_random=False).map(lambda rng: draw_case(rng, algorithm, dtype))
