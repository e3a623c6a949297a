"""Dual-write runbooks: the public API of parameters and clients, importable from `dwlib`.

Everything here lives in a module of its own (`dwlib.params`, `dwlib.clients`, `dwlib.runbook`, …);
this package only re-exports the names a runbook, a notebook or a script needs. The params and
clients names are imported on first use, so importing any part of `dwlib` (the sandbox process,
say) does not load the HTTP stack it does not use.

Example:
    >>> import dwlib

    params = dwlib.load_params("params/sandbox-existing-existing.yaml")
    with dwlib.connect(params) as session:
        session.dataverse.whoami()["UserId"]
    with dwlib.Runbook.open("params/sandbox-new-new.yaml") as rb: rb.run("preflight")
    >>> dwlib.SCENARIOS["new-new"].id, issubclass(dwlib.HttpError, dwlib.DwError)
    ('new-new', True)
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DwError as DwError
from .errors import SandboxError as SandboxError

_EXPORTS = {
    "dwlib.params": ("Params", "ParamsError", "load_params"),
    "dwlib.scenarios": ("SCENARIOS",),
    "dwlib.clients": (
        "AuthError", "ClientError", "ConnectionLostError", "DataverseClient", "DmfClient", "FinOpsClient",
        "HttpConfig", "HttpError", "Journal", "NotFoundError", "Session", "ThrottledError", "TokenProvider",
        "connect", "make_client", "scope_for",
    ),
    "dwlib.runbook": ("Runbook", "RunbookError", "RunStopped"),
    "dwlib.record": ("load_record",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(["DwError", "SandboxError", *_MODULE_OF])


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dwlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
