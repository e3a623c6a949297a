"""Client calls a fixture can name that are not one method of a dwlib client (`calls.<name>`).

A fixture's `client.call` is either `<Client>.<method>` (called on the service's client with the
fixture's `args`/`kwargs`) or `calls.<name>`: one of the functions here, called with the client,
the fixture (its placeholders resolved), then `args`/`kwargs`. Each returns plain data (see
`normalize`) that the fixture's `expect.returns` states.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
from collections.abc import Iterator
from typing import Any

from corpus import Fixture

from dwlib.clients import PartResponse, TokenProvider
from dwlib.clients.finops import FinOpsClient
from dwlib.clients.http import RetryBudget
from dwlib.clients.odata import ODataService
from dwlib.clients.odata_batch import Batch


def normalize(value: Any, take: int | None = None) -> Any:
    """Plain data for a client's result: generators and tuples become lists (the first `take`
    items of a generator), dataclasses dicts, batch parts `{status, content_id, entity_id, json}`."""
    if isinstance(value, types.GeneratorType | Iterator):
        value = list(itertools.islice(value, take))  # no more than `take`: a page more is a request more
    if isinstance(value, PartResponse):
        return {"status": value.status, "content_id": value.content_id or None,
                "entity_id": value.headers.get("odata-entityid"), "json": value.json()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return normalize(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


def batch(client: ODataService, fixture: Fixture, items: list[dict[str, Any]],
          continue_on_error: bool = False) -> list[PartResponse]:
    """A `$batch` built with the client's builder: `{get: path, params: {…}}` items and
    `{changeset: [{create: path, body}, {update: path, body, if_match: "*"|null}, {delete: path}]}`."""
    b = Batch(client)
    for item in items:
        if "get" in item:
            b.get(item["get"], item.get("params"))
            continue
        with b.changeset() as cs:
            for op in item["changeset"]:
                if "create" in op:
                    cs.create(op["create"], op["body"])
                elif "update" in op:
                    cs.update(op["update"], op["body"], if_match=op.get("if_match", "*"))
                else:
                    cs.delete(op["delete"])
    return b.execute(continue_on_error=continue_on_error)


def execute(client: FinOpsClient, fixture: Fixture, items: list[dict[str, Any]]) -> list[PartResponse]:
    """`{get: path, params: {…}}` items sent by `FinOpsClient.execute`, which sends the parts F&O
    throttled inside the batch again after their Retry-After (not slept here) until its attempts
    are spent."""
    client.budget = RetryBudget(client.retry.retry_budget_s, sleep=lambda s: None)
    b = client.batch()
    for item in items:
        b.get(item["get"], item.get("params"))
    return client.execute(b)


def replay(client: ODataService, fixture: Fixture) -> Any:
    """The fixture's own request, sent as it is through the client's stack and read the way the
    client reads such an answer (a `$batch` body the client would never write, e.g. LF-only)."""
    request = fixture.request
    skip = ("authorization", "content-length")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
    response = client.send(request.method, request.path, content=request.body.bytes(), headers=headers,
                           check=False)
    if response.headers.get("Content-Type", "").lower().startswith("multipart/"):
        prefer = request.header("prefer") or ""
        return Batch(client).read(response, continue_on_error="odata.continue-on-error" in prefer)
    if response.status_code >= 300:
        raise client.error(response)
    return client.decode(response)


def token_endpoint(client: TokenProvider, fixture: Fixture) -> str:
    """The token endpoint msal found in the authority's OpenID configuration (read when the
    client was built)."""
    return str(client._app.authority.token_endpoint)
