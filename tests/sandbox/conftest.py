"""In-process fixtures for the data-plane tests: a Sandbox on a temporary store, a stub identity,
and Starlette TestClients for the Dataverse and F&O routes (no TLS, no server process).

Tokens of the stub identity are `Bearer <who>-<audience>`: `app` (the sandbox's app
registration, an application user in Dataverse), `user` (the consultant), `stranger` (an app
with no Dataverse user); `Bearer expired` fails as an expired token.

Example:
    def test_whoami(dv):
        assert dv.get("WhoAmI").status_code == 200
"""

from __future__ import annotations

import email.policy
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 fork for its TestClient; httpx works and is what we ship.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from dwlib.sandbox import dataverse, finops
from dwlib.sandbox.context import AuthError, Principal, Sandbox
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.state import Paths, Settings
from dwlib.sandbox.store import Store

BASE = "http://testserver"
USER_OID = "6d3bd9a4-1f60-4c1b-9b51-1a2b3c4d5e6f"
STRANGER_APP = "0badc0de-0000-4000-8000-000000000001"


class StubIdentity:
    """The `Identity` protocol for tests: `Bearer <who>-<audience>` tokens."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def authenticate(self, request: Request, audience: str) -> Principal:
        header = request.headers.get("authorization", "")
        if not header:
            raise AuthError("missing", "The request has no 'Authorization: Bearer <token>' header.")
        token = header.removeprefix("Bearer ").strip()
        if token == "expired":
            raise AuthError("expired", "The token is expired: acquire a new one.")
        who, _, aud = token.partition("-")
        if aud != audience:
            raise AuthError("wrong_audience", f"The token is not for this service: request scope "
                            f"'{audience}/.default'.")
        tenant = self.settings.tenant_id
        if who == "user":
            return Principal(oid=USER_OID, tenant_id=tenant, kind="user", app_id="", name="consultant")
        app_id = {"app": self.settings.client_id, "stranger": STRANGER_APP}[who]
        return Principal(oid=str(uuid.uuid4()), tenant_id=tenant, kind="app", app_id=app_id, name=who)


@dataclass
class Seed:
    """The rows every test sandbox starts with."""

    organization_id: str
    business_unit_id: str
    app_user_id: str


def seed(store: Store, settings: Settings) -> Seed:
    """An organization, its root business unit, the app's application user and the consultant."""
    org = store.insert(ENTITIES["organizations"], {"name": "sandbox"})["organizationid"]
    bu = store.insert(ENTITIES["businessunits"], {"name": "sandbox"})["businessunitid"]
    users = ENTITIES["systemusers"]
    app = store.insert(users, {"fullname": "app", "applicationid": settings.client_id,
                               "_businessunitid_value": bu, "isdisabled": False})["systemuserid"]
    store.insert(users, {"fullname": "consultant", "azureactivedirectoryobjectid": USER_OID,
                         "_businessunitid_value": bu})
    return Seed(org, bu, app)


@pytest.fixture
def sbx(tmp_path: Path) -> Iterator[Sandbox]:
    """A Sandbox on a fresh store with the seed rows (`sbx.extras["seed"]`)."""
    settings = Settings(profile="new-new", rows=0)
    store = Store(tmp_path / "state.sqlite")
    box = Sandbox(paths=Paths(tmp_path), settings=settings, store=store, identity=StubIdentity(settings),
                  base_url=BASE)
    box.extras["seed"] = seed(store, settings)
    yield box
    store.close()


class Service:
    """A TestClient bound to one service root, sending the given token."""

    def __init__(self, client: TestClient, root: str, audience: str) -> None:
        self.client, self.root, self.audience = client, root, audience
        self.token = f"app-{audience}"

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.root + path

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token != "":
            headers.setdefault("Authorization", f"Bearer {token or self.token}")
        return self.client.request(method, self.url(path), headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def client(sbx: Sandbox) -> Iterator[TestClient]:
    """A TestClient for an app that mounts both services as server.py does."""
    app = Starlette(routes=[Mount("/dataverse", routes=dataverse.routes(sbx)),
                            Mount("/finops", routes=finops.routes(sbx))])
    with TestClient(app, base_url=BASE) as tc:
        yield tc


@pytest.fixture
def dv(client: TestClient, sbx: Sandbox) -> Service:
    """The Dataverse Web API root `/dataverse/api/data/v9.2/`."""
    return Service(client, f"{BASE}/dataverse/api/data/v9.2/", sbx.dataverse_url)


@pytest.fixture
def fo(client: TestClient, sbx: Sandbox) -> Service:
    """The F&O OData root `/finops/data/`."""
    return Service(client, f"{BASE}/finops/data/", sbx.finops_url)


# --- $batch helpers ---------------------------------------------------------------------------


@dataclass
class Part:
    """One request of a batch (body as JSON text or None)."""

    method: str
    url: str
    body: str | None = None
    content_id: str | None = None
    headers: Sequence[tuple[str, str]] = ()


def batch_body(items: Sequence[Part | Sequence[Part]]) -> tuple[str, bytes]:
    """A multipart/mixed batch; a list of parts is a change set. Returns (content type, body)."""
    boundary = f"batch_{uuid.uuid4().hex}"
    out: list[str] = []
    for item in items:
        out.append(f"--{boundary}")
        if isinstance(item, Part):
            out.append(_part(item))
            continue
        cs = f"changeset_{uuid.uuid4().hex}"
        out.append(f"Content-Type: multipart/mixed; boundary={cs}\r\n")
        for part in item:
            out += [f"--{cs}", _part(part)]
        out.append(f"--{cs}--")
    out.append(f"--{boundary}--\r\n")
    return f"multipart/mixed; boundary={boundary}", "\r\n".join(out).encode()


def _part(p: Part) -> str:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if p.content_id:
        head.append(f"Content-ID: {p.content_id}")
    lines = [*head, "", f"{p.method} {p.url} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in p.headers]
    if p.body is not None:
        lines.append("Content-Type: application/json; type=entry")
    lines += ["", p.body or ""]
    return "\r\n".join(lines)


@dataclass
class PartResponse:
    """One response of a batch response; `change_set` numbers the change set it came in (or None)."""

    status: int
    headers: dict[str, str]
    body: bytes
    content_id: str | None
    change_set: int | None


def parse_batch(response: httpx.Response) -> list[PartResponse]:
    """The part responses of a multipart/mixed batch response, flattened in order."""
    parser = BytesParser(policy=email.policy.HTTP)
    ctype = response.headers["content-type"]
    message = parser.parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + response.content)
    out: list[PartResponse] = []
    for i, item in enumerate(message.iter_parts()):
        for part in (item.iter_parts() if item.is_multipart() else [item]):
            raw = part.get_payload(decode=True)
            status_line, _, rest = raw.partition(b"\r\n")
            inner = BytesParser().parsebytes(rest)  # compat32 keeps header values as sent
            body = inner.get_payload(decode=True) or b""
            headers = {k.lower(): str(v) for k, v in inner.items()}
            out.append(PartResponse(int(status_line.split()[1]), headers, body, part.get("Content-ID"),
                                    i if item.is_multipart() else None))
    return out
