"""What every sandbox route module receives: the running sandbox's context.

Route modules expose `routes(sbx: Sandbox) -> list[starlette.routing.BaseRoute]`; `server.py`
assembles them. Authentication goes through `sbx.identity.authenticate(request, audience)`.

Example:
    >>> p = Principal(oid="o", tenant_id="t", kind="app", app_id="a", name="app")
    >>> p.is_app
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from starlette.requests import Request

from .state import Paths, Settings
from .store import Store


@dataclass(frozen=True)
class Principal:
    """Who a valid access token was issued to."""

    oid: str  # object id of the service principal or user
    tenant_id: str
    kind: Literal["app", "user"]
    app_id: str  # client id the token was issued to
    name: str  # display name (app name, or user principal name)
    audience: str = ""
    scopes: tuple[str, ...] = ()

    @property
    def is_app(self) -> bool:
        return self.kind == "app"


class AuthError(Exception):
    """A request without a valid token for the audience; `reason` says which check failed.

    `code` is one of: "missing", "malformed", "bad_signature", "expired", "wrong_audience",
    "wrong_tenant".
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Identity(Protocol):
    def authenticate(self, request: Request, audience: str) -> Principal:
        """The principal of the request's bearer token for `audience`, or raise AuthError."""
        ...


@dataclass
class Sandbox:
    """The running sandbox: settings, storage, identity and URLs."""

    paths: Paths
    settings: Settings
    store: Store
    identity: Identity
    base_url: str  # https://127.0.0.1:{port}
    extras: dict[str, Any] = field(default_factory=dict)  # runtime objects of other modules

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.settings.tenant_id}"

    @property
    def dataverse_url(self) -> str:
        return f"{self.base_url}/dataverse"

    @property
    def finops_url(self) -> str:
        return f"{self.base_url}/finops"

    @property
    def gateway_url(self) -> str:
        return f"{self.base_url}/gateway"

    @property
    def admin_url(self) -> str:
        return f"{self.base_url}/_sandbox"
