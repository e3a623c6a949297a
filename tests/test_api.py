"""The package's public API: `dwlib` re-exports parameters and clients, and loads them only on use."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import dwlib


def test_every_public_name_is_the_object_of_its_module() -> None:
    homes = {"DwError": "dwlib.errors", "SandboxError": "dwlib.errors", **dwlib._MODULE_OF}
    assert sorted(homes) == dwlib.__all__
    for name, module in homes.items():
        assert getattr(dwlib, name) is getattr(importlib.import_module(module), name), name
    assert set(dir(dwlib)) >= set(dwlib.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dwlib.nope  # noqa: B018


def test_importing_the_sandbox_does_not_load_the_clients() -> None:
    code = ("import sys, dwlib.sandbox.server; "
            "print(sorted(m for m in sys.modules if m.startswith(('dwlib.clients', 'dwlib.params'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
