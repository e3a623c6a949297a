"""Shared fixtures: sandbox processes for the session, tokens from them through `dwlib.clients`.

- `start_sandbox(profile="existing-existing", *, rows=50, fresh=False, **options) -> dict`
  (session scope) starts a sandbox process in a temporary directory on a free port and returns its
  connection (the dict of `connection.yaml`). `options` are those of `control.start`: `faults`,
  `limits`, `token_lifetime_s`, `device_code_approve_after_s`. Calls with the same arguments share
  one sandbox; pass `fresh=True` for a sandbox of your own (e.g. when you change data or settings).
  Every sandbox is stopped at the end of the session.
- `sandbox` (session scope): `start_sandbox()` with the defaults; parametrize it indirectly with a
  profile name for another profile: `@pytest.mark.parametrize("sandbox", ["new-new"], indirect=True)`.
- `sandbox_token(connection, resource="dataverse", credential="secret") -> str`: an access token
  signed in the library's way (`dw_helpers.sandbox_token`: `dwlib.clients.auth` with parameters
  from the sandbox's `connection.yaml`; `resource` "dataverse", "finops" or a URL; `credential`
  "secret" or "certificate"); msal's cache lives in the session's temporary directory.

Example:
    def test_whoami(sandbox, sandbox_token):
        token = sandbox_token(sandbox)
        with control.http_client(sandbox) as http:
            r = http.get(f"{sandbox['dataverse_url']}/api/data/v9.2/WhoAmI",
                         headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import sandbox_token as _sandbox_token

from dwlib.sandbox import control

DEFAULT_PROFILE = "existing-existing"
DEFAULT_ROWS = 50

StartSandbox = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def start_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartSandbox]:
    """Factory that starts (or reuses) sandbox processes; all are stopped after the session."""
    shared: dict[tuple[Any, ...], dict[str, Any]] = {}
    roots: list[Path] = []

    def start(profile: str = DEFAULT_PROFILE, *, rows: int = DEFAULT_ROWS, fresh: bool = False,
              **options: Any) -> dict[str, Any]:
        key = (profile, rows, tuple(sorted(options.items())))
        if not fresh and key in shared:
            return shared[key]
        root = tmp_path_factory.mktemp(f"sandbox-{profile}")
        roots.append(root)
        # owner_pid: should this session be killed, its sandboxes stop by themselves.
        connection = control.start(profile, root=root, rows=rows, port=0, owner_pid=os.getpid(),
                                   **options).connection
        if not fresh:
            shared[key] = connection
        return connection

    yield start
    for root in roots:
        control.stop(root)


@pytest.fixture(scope="session")
def sandbox(start_sandbox: StartSandbox, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The connection of a shared sandbox (profile existing-existing unless parametrized)."""
    return start_sandbox(getattr(request, "param", DEFAULT_PROFILE))


@pytest.fixture(scope="session")
def sandbox_token(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """`sandbox_token(connection, resource="dataverse", credential="secret")`: a token via dwlib.clients."""
    cache = tmp_path_factory.mktemp("msal") / "msal_cache.bin"

    def token(connection: dict[str, Any], resource: str = "dataverse", credential: str = "secret") -> str:
        return _sandbox_token(connection, resource, credential, token_cache=cache)

    return token
