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


def test_no_example_is_commented_out():
    """An example is run or it is a plain usage block: `>>> #` hides an example from doctest, so it rots."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hidden = [f"{path.relative_to(root)}:{number}" for folder in ("arm", "flows", "bentos")
              for path in sorted((root / folder).rglob("*.py"))
              for number, line in enumerate(path.read_text().splitlines(), 1) if line.lstrip().startswith(">>> #")]
    assert not hidden, f"commented-out docstring examples: {hidden}"


def test_every_package_has_running_examples():
    """Each subpackage of arm (the world, the model, the tokenizer, RL, evaluation, data) runs some."""
    packages = {name.rsplit(".", 1)[0] for name in MODULES if name.startswith("arm.") and name.count(".") == 2}
    for package in sorted(packages):
        attempted = sum(doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).attempted
                        for name in MODULES if name.startswith(package + "."))
        assert attempted > 0, f"no docstring example of {package} runs"
