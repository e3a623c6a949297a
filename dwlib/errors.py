"""The package's exception hierarchy: everything `dwlib` raises on purpose is a `DwError`.

The message of a `DwError` is meant for the person at the keyboard: it says what is wrong and how
to fix it, and never contains a secret. The CLI prints it (without a traceback) and exits non-zero.
This module imports nothing of `dwlib`, so every layer (the sandbox included) may use it.

Example:
    >>> try:
    ...     raise SandboxError("port 8443 is in use: choose another --port, or 0 for a free one")
    ... except DwError as exc:
    ...     print(exc)
    port 8443 is in use: choose another --port, or 0 for a free one
"""

from __future__ import annotations


class DwError(Exception):
    """Root of every error `dwlib` raises deliberately (catch this to handle them all).

    >>> isinstance(SandboxError("x"), DwError)
    True
    """


class SandboxError(DwError):
    """Starting, stopping or configuring a local sandbox failed (bad option, dead process, …).

    >>> str(SandboxError("unknown profile 'x'"))
    "unknown profile 'x'"
    """
