"""`POST {service root}$batch` for both services: multipart/mixed in, multipart/mixed out.

The request is parsed with the standard library's `email` parser; each part is an HTTP request
that is dispatched, in process, to the same ASGI routes that serve it at top level (so a batch
part behaves exactly like the request sent alone). Change sets run inside one store SAVEPOINT:
the first failing part rolls the whole change set back and the change set answers with that one
error. `Content-ID` values declared in a change set can be referenced as `$n` by later parts of
it, at the start of the URL or as an `@odata.bind` value. Without `Prefer:
odata.continue-on-error` the batch stops at the first failure; Dataverse's batch then takes the
failure's status (api-surface §2.8), F&O's still answers 200 (its OData batch handler: a failed
change set answers with its failed request alone, inside its change set response). Parts bypass
the app's middleware, so a batch counts once against request limits.

Line endings: a body whose lines end in LF alone parses, but where the service documents that it
cannot read such a body unless it ends with two line endings (Dataverse: web-api-client-errors,
"Stream was not readable"), `BatchService.unreadable` says so, and the last request of such a body
fails with that error.

Parts must not await anything that suspends while a change set is open (route handlers do their
SQLite work synchronously), so no other request can interleave with an open SAVEPOINT.

Example:
    >>> svc = BatchService(root_url="https://h/dataverse/api/data/v9.2/", app=None, check=print,
    ...                    render=print, transaction=None)
    >>> svc.root_path
    '/dataverse/api/data/v9.2/'
"""

from __future__ import annotations

import email.policy
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from http import HTTPStatus
from urllib.parse import unquote, urljoin, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp
from starlette.types import Message as AsgiMessage

from .odata import ODataError, new_request_id, parse_prefer

log = logging.getLogger(__name__)
CRLF = "\r\n"
_REF_RE = re.compile(r"^/?\$([A-Za-z0-9_.\-]+)")
_NOT_REFS = {"metadata", "batch", "count"}
_HEADER_CASE = {"odata-version": "OData-Version", "odata-entityid": "OData-EntityId", "req_id": "REQ_ID",
                "x-ms-service-request-id": "x-ms-service-request-id",
                "etag": "ETag", "www-authenticate": "WWW-Authenticate"}
_SKIP_HEADERS = {"content-length", "transfer-encoding", "connection"}
# compat32 keeps headers as plain strings; the modern policies parse every header into objects and
# cost a millisecond per part, which a 1000-part batch would feel.
_PARSER = BytesParser(policy=email.policy.compat32)


@dataclass(frozen=True)
class BatchService:
    """What `$batch` needs from a service."""

    root_url: str  # absolute service root ending in '/', e.g. {dataverse_url}/api/data/v9.2/
    app: ASGIApp  # the service's routes without $batch: parts are dispatched here
    check: Callable[[Request], object]  # authenticate the batch request itself (raises ODataError)
    render: Callable[[ODataError], Response]  # the service's error response
    transaction: Callable[[], AbstractContextManager[None]]  # store SAVEPOINT for change sets
    max_parts: int = 1000
    # The error of the last request of an LF-only body that does not end in two line endings
    # (given the entity set of that request), where the service cannot read such bodies.
    unreadable: Callable[[str], ODataError] | None = None
    # Dataverse: a batch stopped by a failure answers with its status, and a failed change set with
    # the bare failed response. F&O: 200, and the failed response inside its change set response.
    failure_status: bool = True
    failed_change_set_wrapped: bool = False

    @property
    def root_path(self) -> str:
        return urlsplit(self.root_url).path


@dataclass
class _Result:
    """One part's response."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_id: str | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class _Part:
    """One request of the batch, as parsed from its application/http part."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None


class _ChangeSetFailed(Exception):
    def __init__(self, result: _Result) -> None:
        super().__init__(result.status)
        self.result = result


def route(path: str, svc: BatchService) -> Route:
    """The `$batch` route of a service, mounted at `path` (e.g. `/api/data/v9.2/$batch`).

    in a route module: routes.append(odata_batch.route(f"{API}/$batch", service))
    """

    async def endpoint(request: Request) -> Response:
        try:
            svc.check(request)
            raw = await request.body()
            message = await _parse(request)
            items = _parts(message)
            assert isinstance(items, list)
            total = sum(len(_parts(p)) if p.is_multipart() else 1 for p in items)
            if total > svc.max_parts:
                raise ODataError(400, f"The batch contains {total} requests; a batch can contain at most "
                                 f"{svc.max_parts}. Split it into smaller batches.", "0x80040203")
        except ODataError as exc:
            return svc.render(exc)
        unreadable = None
        if svc.unreadable is not None and b"\r\n" not in raw and not raw.endswith(b"\n\n") and items:
            last = _parts(items[-1])[-1] if items[-1].is_multipart() else items[-1]
            unreadable = (last, svc.unreadable)
        keep_going = "odata.continue-on-error" in parse_prefer(request.headers.getlist("prefer"))
        boundary = f"batchresponse_{uuid.uuid4()}"
        chunks: list[bytes] = []
        status = 200
        for item in items:
            if item.is_multipart():
                chunk, failed = await _change_set(request, svc, item, unreadable)
            else:
                result = await _single(request, svc, item, unreadable)
                chunk, failed = _http_part(result), (result if result.status >= 400 else None)
            chunks.append(f"--{boundary}{CRLF}".encode() + chunk + CRLF.encode())
            if failed is not None and not keep_going:
                status = failed.status if svc.failure_status else 200
                break
        body = b"".join(chunks) + f"--{boundary}--{CRLF}".encode()
        rid = new_request_id()
        headers = {"OData-Version": "4.0", "REQ_ID": rid, "x-ms-service-request-id": rid}
        if keep_going:
            headers["Preference-Applied"] = "odata.continue-on-error"
        return Response(body, status, headers, media_type=f"multipart/mixed; boundary={boundary}")

    return Route(path, endpoint, methods=["POST"])


def service_routes(
    path: str,
    handle: Callable[[Request], Awaitable[Response]],
    *,
    root_url: str,
    check: Callable[[Request], object],
    render: Callable[[ODataError], Response],
    transaction: Callable[[], AbstractContextManager[None]],
    unreadable: Callable[[str], ODataError] | None = None,
    failure_status: bool = True,
    failed_change_set_wrapped: bool = False,
) -> list[BaseRoute]:
    """A service's routes under `path`: its root and everything below it go to `handle`, and
    `path/$batch` dispatches its parts into those same routes (arguments as for `BatchService`).

    return odata_batch.service_routes(API, svc.handle, root_url=svc.root, check=svc.caller,
                                      render=error_response, transaction=sbx.store.transaction)
    """
    inner = Router(routes=[
        Route(path, handle, methods=["GET"]),
        Route(path + "/{path:path}", handle, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
    ])
    svc = BatchService(root_url=root_url, app=inner, check=check, render=render, transaction=transaction,
                       unreadable=unreadable, failure_status=failure_status,
                       failed_change_set_wrapped=failed_change_set_wrapped)
    return [route(path + "/$batch", svc), *inner.routes]


def _parts(message: Message) -> list[Message]:
    """The parts of a multipart message (`get_payload` is typed for every kind of message)."""
    parts: list[Message] = message.get_payload()  # type: ignore[assignment]
    return parts


async def _parse(request: Request) -> Message:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/mixed") or "boundary=" not in ctype.lower():
        raise ODataError(400, "A $batch request must have 'Content-Type: multipart/mixed; boundary=…' "
                         f"(got '{ctype or 'none'}'); JSON batches are not supported.", "0x80040203")
    raw = b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + await request.body()
    message = _PARSER.parsebytes(raw)
    if not message.is_multipart() or not message.get_payload():
        raise ODataError(400, "The $batch body has no parts: check that the boundary in Content-Type "
                         "matches the one in the body.", "0x80040203")
    return message


def _read_part(part: Message) -> _Part:
    if part.get_content_type() != "application/http":
        raise ODataError(400, f"A batch part must be 'Content-Type: application/http' "
                         f"(got '{part.get_content_type()}').", "0x80040203")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    request_line, _, rest = payload.lstrip(b"\r\n").partition(b"\n")
    pieces = request_line.decode("latin-1").strip().split(" ")
    if len(pieces) != 3 or not pieces[2].startswith("HTTP/"):
        raise ODataError(400, f"Bad request line in batch part: '{request_line.decode('latin-1').strip()}'"
                         " (expected 'METHOD URL HTTP/1.1').", "0x80040203")
    inner = _PARSER.parsebytes(rest)
    body = inner.get_payload(decode=True)
    return _Part(
        method=pieces[0].upper(),
        target=pieces[1],
        headers=[(k, str(v)) for k, v in inner.items()],
        body=body if isinstance(body, bytes) else b"",
        content_id=part.get("Content-ID"),
    )


def _error(svc: BatchService, exc: ODataError, content_id: str | None = None) -> _Result:
    response = svc.render(exc)
    return _Result(exc.status, list(response.headers.items()), bytes(response.body), content_id)


Unreadable = tuple[Message, Callable[[str], ODataError]] | None  # the part that fails, and its error


def _unreadable(part: _Part, item: Message, unreadable: Unreadable) -> None:
    """Raise the service's error when `item` is the part it cannot read (see the module)."""
    if unreadable is not None and item is unreadable[0]:
        path = urlsplit(part.target).path
        raise unreadable[1](path.rstrip("/").rsplit("/", 1)[-1].partition("(")[0])


async def _single(request: Request, svc: BatchService, item: Message, unreadable: Unreadable) -> _Result:
    try:
        part = _read_part(item)
        _unreadable(part, item, unreadable)
        if part.method == "POST" and part.target.rstrip("/").endswith("$batch"):
            raise ODataError(400, "A batch can't contain another batch request.", "0x80040203")
        if (ref := _ref(part.target)) is not None:
            raise _unknown_ref(ref[0])
    except ODataError as exc:
        return _error(svc, exc, item.get("Content-ID"))
    return await _dispatch(request, svc, part)


async def _change_set(request: Request, svc: BatchService, item: Message,
                      unreadable: Unreadable) -> tuple[bytes, _Result | None]:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    ids: dict[str, str] = {}
    results: list[_Result] = []
    try:
        with svc.transaction():
            for sub in item.get_payload():
                assert isinstance(sub, Message)
                try:
                    if sub.is_multipart():
                        raise ODataError(400, "A change set can't contain another change set.", "0x80040203")
                    part = _read_part(sub)
                    _unreadable(part, sub, unreadable)
                    if part.method == "GET":
                        raise ODataError(400, "A GET request can't be part of a change set: send it as a "
                                         "batch part outside the change set.", "0x80040203")
                    _resolve_refs(part, ids)
                except ODataError as exc:
                    raise _ChangeSetFailed(_error(svc, exc, sub.get("Content-ID"))) from None
                result = await _dispatch(request, svc, part)
                if result.status >= 400:
                    raise _ChangeSetFailed(result)
                entity_url = result.header("OData-EntityId") or result.header("Location")
                if part.content_id and entity_url:
                    ids[part.content_id] = entity_url
                results.append(result)
    except _ChangeSetFailed as failed:
        if svc.failed_change_set_wrapped:
            return _change_set_response(boundary, [failed.result]), failed.result
        return _http_part(failed.result), failed.result
    return _change_set_response(boundary, results), None


def _change_set_response(boundary: str, results: list[_Result]) -> bytes:
    inner = b"".join(f"--{boundary}{CRLF}".encode() + _http_part(r) + CRLF.encode() for r in results)
    head = f"Content-Type: multipart/mixed; boundary={boundary}{CRLF}{CRLF}".encode()
    return head + inner + f"--{boundary}--".encode()


def _ref(target: str) -> tuple[str, str] | None:
    """(`n`, rest) when `target` starts with a Content-ID reference `$n`."""
    m = _REF_RE.match(target)
    if m is None or m.group(1) in _NOT_REFS:
        return None
    return m.group(1), target[m.end():]


def _unknown_ref(name: str) -> ODataError:
    return ODataError(400, f"Content-ID Reference: '${name}' does not exist in the batch context.",
                      "0x80040203")


def _resolve_refs(part: _Part, ids: dict[str, str]) -> None:
    """Replace `$n` references (URL start, `@odata.bind` values) by the entity URLs they name."""
    if (ref := _ref(part.target)) is not None:
        if ref[0] not in ids:
            raise _unknown_ref(ref[0])
        part.target = ids[ref[0]] + ref[1]
    if b'"$' not in part.body:
        return
    try:
        data = json.loads(part.body)
    except ValueError:
        return  # the handler reports the malformed body
    if not isinstance(data, dict):
        return
    changed = False
    for key, value in data.items():
        if key.endswith("@odata.bind") and isinstance(value, str) and (ref := _ref(value)) is not None:
            if ref[0] not in ids:
                raise _unknown_ref(ref[0])
            data[key] = ids[ref[0]] + ref[1]
            changed = True
    if changed:
        part.body = json.dumps(data).encode()


async def _dispatch(request: Request, svc: BatchService, part: _Part) -> _Result:
    """Run one part through the service's routes, in process."""
    url = urlsplit(urljoin(svc.root_url, part.target))
    path = url.path
    mount = request.scope.get("root_path", "")
    if not path.startswith(svc.root_path) and path.startswith(svc.root_path[len(mount):]):
        path = mount + path  # the real service's host-relative form, e.g. /api/data/v9.2/accounts
    if not path.startswith(svc.root_path):
        return _error(svc, ODataError(400, f"The batch part URL '{part.target}' is not under the service "
                                      f"root {svc.root_url}.", "0x80040203"), part.content_id)
    names = {k.lower() for k, _ in part.headers}
    headers = list(part.headers)
    for name in ("authorization", "callerobjectid", "host"):
        if name not in names and (value := request.headers.get(name)) is not None:
            headers.append((name, value))
    scope = {
        **request.scope,
        "method": part.method,
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": url.query.encode("latin-1"),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "root_path": mount,
    }
    for key in ("endpoint", "path_params", "route"):
        scope.pop(key, None)
    body_sent = False

    async def receive() -> AsgiMessage:
        nonlocal body_sent
        if body_sent:
            return {"type": "http.disconnect"}
        body_sent = True
        return {"type": "http.request", "body": part.body, "more_body": False}

    result = _Result(500, content_id=part.content_id)
    chunks: list[bytes] = []

    async def send(message: AsgiMessage) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                              if k.decode("latin-1").lower() not in _SKIP_HEADERS]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await svc.app(scope, receive, send)
    except Exception as exc:  # a bug in a handler must not take the whole batch down
        log.exception("batch part %s %s failed", part.method, part.target)
        return _error(svc, ODataError(500, f"Unexpected error in batch part {part.method} {part.target}: "
                                      f"{type(exc).__name__}: {exc}", "0x80040216"), part.content_id)
    result.body = b"".join(chunks)
    return result


def _http_part(result: _Result) -> bytes:
    """One response as an application/http part (headers, blank line, HTTP message)."""
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if result.content_id:
        lines.append(f"Content-ID: {result.content_id}")
    lines += ["", f"HTTP/1.1 {result.status} {_reason(result.status)}"]
    lines += [f"{_HEADER_CASE.get(k.lower(), k.title())}: {v}" for k, v in result.headers]
    return (CRLF.join(lines) + CRLF + CRLF).encode("latin-1") + result.body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
