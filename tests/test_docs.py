"""The runnable examples in public docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["convopt.api", "convopt.transforms.pipeline", "convopt.kernels.dispatch", "convopt.nn.conv"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_example_runs():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["report"].macs > 0 and namespace["transform_report"].max_rel_error < 1e-4
    assert namespace["check"] is not None


def test_convopt_verify_stays_callable_after_its_submodules_are_imported():
    import convopt
    import convopt.verify.bounds  # noqa: F401  (this import used to shadow the function)

    assert callable(convopt.verify) and callable(convopt.verify.interval_bounds)
