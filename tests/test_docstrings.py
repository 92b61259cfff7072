"""The runnable examples in docstrings stay runnable: doctest over every module of arm and the flow."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import arm

MODULES = sorted(m.name for m in pkgutil.walk_packages(arm.__path__, "arm.") if m.name != "arm.__main__")
MODULES.append("flows.lifecycle")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"


@pytest.mark.parametrize("name", ["tokenizer_failures", "generation_failures", "edit_failures"])
def test_benchmark_docstring_examples_run(name, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
