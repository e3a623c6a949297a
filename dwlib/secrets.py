"""Secret references: parameters name where a secret lives, never the secret itself.

A reference is one of `env:NAME` (an environment variable), `keyring:service/user` (the OS
keyring via `keyring`) or `file:PATH` (a file, typically 0600; surrounding whitespace is dropped).
The value is read only when it is used (`SecretRef.reveal()`); every revealed value is remembered
so `scrub()` can blank it out of journals, logs and error messages. `SecretRef` itself only ever
shows the reference.

Example:
    >>> import os
    >>> os.environ["DW_DEMO_SECRET"] = "s3cr3t-value"
    >>> ref = SecretRef.parse("env:DW_DEMO_SECRET")
    >>> ref
    SecretRef('env:DW_DEMO_SECRET')
    >>> ref.reveal()
    's3cr3t-value'
    >>> scrub("login failed for s3cr3t-value")
    'login failed for ***'
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dwlib.errors import DwError

Scheme = Literal["env", "keyring", "file"]
SCHEMES: tuple[Scheme, ...] = ("env", "keyring", "file")
REFERENCE_FORMS = "env:NAME, keyring:service/user or file:PATH"
MASK = "***"

# Shorter values would blank out ordinary words; real secrets and tokens are far longer.
_MIN_SCRUB_LEN = 6
# Bearer tokens and JWTs can reach text without passing through reveal() (e.g. echoed by a server).
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"),
)

_known: set[str] = set()
_lock = threading.Lock()


class SecretError(DwError):
    """A secret reference is malformed or points at nothing.

    >>> str(SecretError("env:X: the environment variable X is not set"))
    'env:X: the environment variable X is not set'
    """


def remember(value: str) -> None:
    """Register a secret value (a revealed secret, an access token) so `scrub()` hides it.

    >>> remember("another-secret-1")
    >>> scrub("x another-secret-1 y")
    'x *** y'
    """
    if len(value) >= _MIN_SCRUB_LEN:
        with _lock:
            _known.add(value)
            # A PEM or multi-line secret may surface one line at a time.
            _known.update(line for line in value.splitlines() if len(line) >= _MIN_SCRUB_LEN * 4)


def known_secrets() -> list[str]:
    """Every secret value and token registered so far (`remember`), e.g. to scan written bytes for.

    >>> remember("yet-another-secret-2"); "yet-another-secret-2" in known_secrets()
    True
    """
    with _lock:
        return sorted(_known)


def scrub(text: str) -> str:
    """`text` with every remembered secret, bearer token and JWT replaced by `***`.

    >>> scrub("Authorization: Bearer abc.def-ghi")
    'Authorization: Bearer ***'
    """
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


def scrub_kernel_tracebacks() -> bool:
    """In an IPython kernel, scrub every error shown from now on: its message and traceback go
    through `scrub()` before they reach the notebook, papermill's error and the execute reply.
    Returns whether a kernel was found (false in plain Python). Calling it again changes nothing.

    >>> scrub_kernel_tracebacks()  # not in a kernel
    False
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "_showtraceback"):
        return False
    show = shell._showtraceback
    if getattr(show, "dw_scrubbed", False):
        return True

    def scrubbed(etype: type, evalue: BaseException, stb: list[str]) -> None:
        # ipykernel sends str(evalue) and the formatted lines as they are: hand it scrubbed text.
        show(etype, scrub(str(evalue)), [scrub(line) for line in stb])

    scrubbed.dw_scrubbed = True  # type: ignore[attr-defined]
    shell._showtraceback = scrubbed
    return True


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives (`env:`, `keyring:` or `file:`); `reveal()` reads it at use.

    >>> SecretRef.parse("keyring:dwlib/app-secret").target
    'dwlib/app-secret'
    """

    scheme: Scheme
    target: str

    @classmethod
    def parse(cls, text: str) -> SecretRef:
        """Parse a reference; the error never repeats `text`, which may be a pasted secret.

        >>> SecretRef.parse("file:/run/secrets/dw").scheme
        'file'
        """
        scheme, sep, target = text.partition(":")
        if not sep or scheme not in SCHEMES or not target.strip():
            raise SecretError(f"must be a secret reference ({REFERENCE_FORMS}), not the secret itself")
        if scheme == "keyring" and "/" not in target:
            raise SecretError("keyring references take the form keyring:service/user")
        return cls(scheme, target.strip())

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"

    def __repr__(self) -> str:
        return f"SecretRef({str(self)!r})"

    def reveal(self) -> str:
        """Read the secret now; remembered for scrubbing. Raises SecretError with the fix.

        >>> SecretRef.parse("env:DW_SURELY_UNSET").reveal()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dwlib.secrets.SecretError: env:DW_SURELY_UNSET: the environment variable ... is not set; ...
        """
        value = _READERS[self.scheme](self)
        remember(value)
        return value


def _read_env(ref: SecretRef) -> str:
    value = os.environ.get(ref.target)
    if not value:
        raise SecretError(
            f"{ref}: the environment variable {ref.target} is not set; "
            "export it before starting Python (or Jupyter)"
        )
    return value


def _read_keyring(ref: SecretRef) -> str:
    import keyring  # imported on use: backends probe the desktop session when loaded

    service, _, user = ref.target.partition("/")
    try:
        value = keyring.get_password(service, user)
    except keyring.errors.KeyringError as exc:
        raise SecretError(f"{ref}: the keyring could not be read ({type(exc).__name__}); "
                          "check that a keyring backend is available, or use env:/file:") from None
    if not value:
        raise SecretError(
            f"{ref}: no keyring entry for service {service!r}, user {user!r}; "
            f"store it with `keyring set {service} {user}`"
        )
    return value


def _read_file(ref: SecretRef) -> str:
    path = Path(ref.target).expanduser()
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SecretError(f"{ref}: cannot read {path} ({exc.strerror}); check the path and its permissions") \
            from None
    if not value:
        raise SecretError(f"{ref}: {path} is empty; put the secret in it")
    if path.stat().st_mode & 0o077:
        logging.getLogger(__name__).warning("%s is readable by other users; chmod 600 it", path)
    return value


_READERS = {"env": _read_env, "keyring": _read_keyring, "file": _read_file}
