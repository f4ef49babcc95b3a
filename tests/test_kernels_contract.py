"""Every registered convolution algorithm, held to one contract (new algorithms are tested automatically):

* on every sample of PyTorch's OpInfo conv1d/2d/3d entries, fp32 and fp64: match F.convNd within the
  tolerance table, or raise UnsupportedConvError -- never a silent mismatch;
* every OpInfo error_inputs case raises;
* hypothesis cases (biased into the algorithm's support region at least a third of the time) match the
  float64 reference or raise UnsupportedConvError;
* gradients pass torch.autograd.gradcheck on small shapes.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import convopt
from convopt.kernels import list_algorithms
from convopt.kernels.dispatch import check_call
from convopt.kernels.reference import reference_conv
from convopt.kernels.registry import get_algorithm
from convopt.testing import assert_conv_close
from strategies import REGIONS, draw_case

pytest.importorskip("expecttest")  # needed by PyTorch's internal OpInfo database
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

CONV_OPS = [op for op in op_db if op.name in ("nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv3d")]
ALGORITHMS = [name for name in list_algorithms() if name != "reference"]


def run_or_unsupported(name, x, weight, bias, kwargs):
    """The algorithm's output, or None when it raised UnsupportedConvError (the allowed refusal)."""
    try:
        return convopt.conv(x, weight, bias, **kwargs, algorithm=name)
    except convopt.UnsupportedConvError:
        return None


def check_against(name, x, weight, bias, kwargs, expected):
    y = run_or_unsupported(name, x, weight, bias, kwargs)
    if y is None:
        return False
    assert y.shape == expected.shape and y.dtype == x.dtype
    batched = x if x.dim() == weight.dim() else x.unsqueeze(0)
    spec = check_call(x, weight, bias, kwargs.get("stride", 1), kwargs.get("padding", 0), kwargs.get("dilation", 1),
                      kwargs.get("groups", 1))  # fmt: skip
    yb, eb = (y, expected) if x.dim() == weight.dim() else (y.unsqueeze(0), expected.unsqueeze(0))
    assert_conv_close(name, get_algorithm(name).error_kind, yb, eb, batched, weight, spec)
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("op", CONV_OPS, ids=lambda op: op.name.split(".")[-1])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_opinfo_samples_match_pytorch_or_are_refused(name, op, dtype):
    supported = 0
    samples = list(op.sample_inputs("cpu", dtype))
    for sample in samples:
        weight, bias = sample.args[0], (sample.args[1] if len(sample.args) > 1 else None)
        expected = op(sample.input, *sample.args, **sample.kwargs)
        supported += check_against(name, sample.input, weight, bias, dict(sample.kwargs), expected)
    if name in ("direct", "im2col"):
        assert supported == len(samples)  # these two claim every case


@pytest.mark.parametrize("op", CONV_OPS, ids=lambda op: op.name.split(".")[-1])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_opinfo_error_inputs_raise(name, op):
    for error in op.error_inputs("cpu"):
        sample = error.sample_input
        with pytest.raises((RuntimeError, ValueError, convopt.ConvoptError)):
            convopt.conv(sample.input, *sample.args, **sample.kwargs, algorithm=name)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_hypothesis_cases_match_the_float64_reference(name):
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st_cases(name))
    def check(case):
        expected = reference_conv_call(case)
        check_against(name, case.x, case.weight, case.bias, case.kwargs, expected)

    check()


def st_cases(name):
    from strategies import conv_cases

    return conv_cases(name, torch.float64)


def reference_conv_call(case):
    spec = check_call(case.x, case.weight, case.bias, **case.kwargs)
    return reference_conv(case.x, case.weight, case.bias, spec)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_generated_cases_land_in_the_support_region_a_third_of_the_time(name):
    rng = random.Random(1234)
    algorithm, hits, total = get_algorithm(name), 0, 300
    for _ in range(total):
        case = draw_case(rng, name)
        spec = check_call(case.x, case.weight, case.bias, **case.kwargs)
        hits += algorithm.supports(spec, case.x.dtype) is None
    assert hits / total >= 1 / 3, f"{name}: only {hits}/{total} generated cases are supported; widen REGIONS"


GRAD_CASES = {
    "default": dict(x=(2, 4, 6, 6), w=(4, 2, 3, 3), kwargs=dict(padding=1, groups=2)),
    "fft": dict(x=(1, 2, 7, 6), w=(3, 2, 4, 3), kwargs=dict(padding=(1, 2), dilation=(1, 2))),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_gradcheck(name):
    case = GRAD_CASES.get(name, GRAD_CASES["default"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case["x"], dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(case["w"], dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(case["w"][0], dtype=torch.float64, generator=generator, requires_grad=True)
    spec = check_call(x, w, b, 1, case["kwargs"].get("padding", 0), case["kwargs"].get("dilation", 1),
                      case["kwargs"].get("groups", 1))  # fmt: skip
    assert get_algorithm(name).supports(spec, torch.float64) is None, f"pick a gradcheck case {name} supports"
    assert torch.autograd.gradcheck(lambda *t: convopt.conv(*t, **case["kwargs"], algorithm=name), (x, w, b))


def test_unsupported_request_names_reason_and_alternatives():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 2, 3, 3)
    with pytest.raises(convopt.UnsupportedConvError, match="unknown algorithm 'nope'"):
        convopt.conv(x, w, algorithm="nope")
    with pytest.raises(convopt.UnsupportedConvError, match=r"direct cannot compute.*transposed|use one of"):
        from convopt.kernels.dispatch import resolve_algorithm
        from convopt.spec import ConvSpec

        resolve_algorithm("direct", ConvSpec.create(2, 2, (3, 3), transposed=True), torch.float32)


def test_reference_is_the_definition_written_as_loops():
    from convopt.kernels.reference import naive_conv

    rng = random.Random(7)
    for _ in range(12):
        case = draw_case(rng)
        spec = check_call(case.x, case.weight, case.bias, **case.kwargs)
        if case.x.numel() * case.weight.numel() > 40_000:
            continue  # loops are slow; tiny shapes suffice
        torch.testing.assert_close(reference_conv(case.x, case.weight, case.bias, spec),
                                   naive_conv(case.x, case.weight, case.bias, spec))  # fmt: skip
