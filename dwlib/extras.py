"""Optional dependencies (pyproject.toml's extras): import one, or fail saying how to install it.

The core installs what a headless run against real environments needs; the rest comes with an
extra: `lab` (JupyterLab and ipywidgets), `sandbox` (the local emulator), `review` (the HTML
report, charts), `dask` (`dw batch --executor dask`), `all`. Every feature that needs one imports
it through `require`, so a missing package is one message with the exact command to run. (The
runbooks' panels are the exception that degrades instead: without ipywidgets a headless run draws
them as plain HTML, `dwlib.ui.view`.)

Example:
    >>> require("json", "review", "reading JSON").__name__
    'json'
    >>> print(missing_text("review", "the HTML report", "nbconvert"))
    the HTML report needs nbconvert (not installed): pip install 'dwlib[review]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dwlib.errors import DwError


class MissingExtra(DwError):
    """A feature's optional dependency is not installed; the message has the `pip install` to run."""


def missing_text(extra: str, feature: str, package: str) -> str:
    """What to say when `feature` lacks `package` of `extra`."""
    return f"{feature} needs {package} (not installed): pip install 'dwlib[{extra}]'"


def require(module: str, extra: str, feature: str, package: str | None = None) -> ModuleType:
    """The module `module`, or `MissingExtra` naming `pip install 'dwlib[extra]'`. `package`: the
    distribution's name when it is not the module's."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        # The module or a package it needs is absent: installing the extra brings both.
        raise MissingExtra(missing_text(extra, feature, package or module.split(".")[0])) from None
