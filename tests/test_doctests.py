"""Every docstring example in dwlib runs (house rule: examples are doctests, or there are none)."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import dwlib

MODULES = sorted(m.name for m in pkgutil.walk_packages(dwlib.__path__, "dwlib.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (above)"


def test_the_modules_are_found() -> None:
    assert {"dwlib.vocab", "dwlib.steps.base", "dwlib.sandbox.server"} <= set(MODULES)



def test_no_example_is_only_a_comment() -> None:
    """`>>> # call(ctx) → result` runs nothing and proves nothing (doctest skips it): say it as text,
    or make it run."""
    comment = re.compile(r"^\s*>>>\s*#", re.M)
    empty = []
    for path in sorted(Path(dwlib.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False) or ""
                empty += [f"{path.name}: {line.strip()}" for line in doc.splitlines() if comment.match(line)]
    assert empty == []
