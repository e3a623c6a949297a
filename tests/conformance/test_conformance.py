"""Every fixture of the corpus, used twice (README.md).

(a) The client parses it: the dwlib call the fixture names runs against an `httpx.MockTransport`
that checks each request against the sample (and the samples it lists under `also`) and answers
with the sample's response; the call's result is what the fixture expects.
(b) The sandbox answers the same request, after the fixture's setup rows, with the same shape.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calls
import corpus
import httpx
import pytest
from services import SERVICES

from dwlib.clients import errors
from dwlib.sandbox import profiles, server
from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.identity import EntraIdentity
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.state import Paths, Settings
from dwlib.sandbox.store import Store

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

FIXTURES = corpus.fixtures()
IDS = sorted(FIXTURES)
_JSON_TYPES = {"entra": "application/json; charset=utf-8"}


# --- (a) the client parses the sample -------------------------------------------------------------


def _answer(fixture: corpus.Fixture) -> httpx.Response:
    response = fixture.response
    headers = dict(response.headers)
    if response.body.present and response.body.text is None and response.header("content-type") is None:
        headers["Content-Type"] = _JSON_TYPES.get(fixture.service, "application/json; odata.metadata=minimal")
    return httpx.Response(response.status, headers=headers, content=response.body.bytes())


def _contract(fixture_id: str) -> corpus.Fixture:
    fixture = FIXTURES[fixture_id]
    return fixture.resolved(SERVICES[fixture.service].contract_values)


def _call(client: Any, fixture: corpus.Fixture) -> Any:
    spec = fixture.client
    owner, _, name = spec["call"].partition(".")
    args, kwargs = spec.get("args") or [], spec.get("kwargs") or {}
    if owner == "calls":
        return getattr(calls, name)(client, fixture, *args, **kwargs)
    if type(client).__name__ != owner:
        raise AssertionError(f"{fixture.id}: {spec['call']} is not a call of {type(client).__name__}")
    return getattr(client, name)(*args, **kwargs)


@pytest.mark.parametrize("fixture_id", IDS)
def test_the_client_parses_the_sample(fixture_id: str, tmp_path: Path) -> None:
    fixture = _contract(fixture_id)
    service = SERVICES[fixture.service]
    answers = [fixture, *(_contract(other) for other in fixture.client.get("also") or [])]
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read()
        problems: list[str] = []
        for sample in answers:
            root = SERVICES[sample.service].contract_root
            found = corpus.request_differences(sample.request, request.method, str(request.url),
                                               dict(request.headers), body, root)
            if not found:
                seen.append(sample.id)
                return _answer(sample)
            problems += [f"  vs {sample.id}: {p}" for p in found]
        pytest.fail(f"{fixture_id}: the client sent a request no sample describes: {request.method} "
                    f"{request.url}\n" + "\n".join(problems))

    client = service.client(httpx.Client(transport=httpx.MockTransport(handle)), tmp_path, fixture)
    expect = fixture.client["expect"]
    if "raises" in expect:
        kind = getattr(errors, expect["raises"])
        with pytest.raises(kind) as raised:
            calls.normalize(_call(client, fixture))
        for attr, value in (expect.get("attrs") or {}).items():
            assert getattr(raised.value, attr) == value, f"{attr} of {raised.value!r}"
        assert expect.get("message", "") in str(raised.value)
    else:
        result = calls.normalize(_call(client, fixture), fixture.client.get("take"))
        # `returns: body`: the call hands back the sample's JSON body as it is
        assert result == (fixture.response.body.json if expect["returns"] == "body" else expect["returns"])
    assert fixture.id in seen, f"{fixture_id}: the client never sent the sample's request"


# --- (b) the sandbox answers with the sample's shape ---------------------------------------------


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA, keys and the app secret, made once and copied into each test's sandbox."""
    root = tmp_path_factory.mktemp("conformance-credentials")
    server.ensure_credentials(Paths(root))
    return root


@pytest.fixture
def sandbox(credentials: Path, tmp_path: Path) -> Iterator[Sandbox]:
    """An in-process sandbox of profile new-new (what provisioning creates, no business rows)."""
    for item in credentials.iterdir():
        shutil.copy2(item, tmp_path / item.name)
    paths = Paths(tmp_path)
    settings = Settings(profile="new-new", rows=0)
    settings.save(paths.settings)
    store = Store(paths.db)
    base = "https://testserver"
    sbx = Sandbox(paths=paths, settings=settings, store=store,
                  identity=EntraIdentity(paths, settings, base), base_url=base)
    profiles.seed(store, settings)
    yield sbx
    store.close()


@pytest.mark.parametrize("fixture_id", IDS)
def test_the_sandbox_answers_with_the_same_shape(fixture_id: str, sandbox: Sandbox) -> None:
    service = SERVICES[FIXTURES[fixture_id].service]
    fixture = FIXTURES[fixture_id].resolved(service.sandbox_values(sandbox))
    for row in fixture.setup:
        sandbox.store.insert(ENTITIES[row["entity"]], row["row"])
    app = server.build_app(sandbox)
    if limits := fixture.sandbox.get("limits"):
        sandbox.extras["guard"].set_limits(limits)
    if faults := fixture.sandbox.get("faults"):
        sandbox.extras["guard"].set_faults(faults, persist=False)
    request = fixture.request
    skip = ("authorization", "content-length")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
    if (token := service.token(sandbox)) is not None:
        headers["Authorization"] = f"Bearer {token}"
    with TestClient(app, base_url=sandbox.base_url) as tc:
        for _ in range(int(fixture.sandbox.get("send", 1))):
            r = tc.request(request.method, service.sandbox_root(sandbox) + request.path, headers=headers,
                           content=request.body.bytes())
    problems = corpus.response_differences(fixture.response, r.status_code, dict(r.headers), r.content)
    answered = f"\n--- the sandbox answered:\n{r.text[:3000]}"
    assert not problems, f"{fixture_id}:\n" + "\n".join(problems) + answered

