"""OData `$batch` (multipart/mixed) for Dataverse and F&O: a builder with change sets, and a parser.

Parts run in order; each change set is atomic; a later part of a change set may refer to an
earlier create by its reference (`$1`). A batch holds at most 1000 parts. It is repeated on
throttling or a dropped connection only when every part is safe to repeat (no plain create).

Example:
    >>> svc = ODataService(httpx.Client(), "https://org.example/api/data/v9.2")
    >>> batch = Batch(svc)
    >>> with batch.changeset() as cs:
    ...     ref = cs.create("accounts", {"name": "Contoso"})
    ...     cs.update(f"{ref}/primarycontactid", {"firstname": "Ann"})
    >>> batch.get("accounts", {"$select": "name", "$top": "1"})
    >>> ref, len(batch), batch.safe
    ('$1', 3, False)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import BatchError, ClientError, ResponseError
from .http import redact_url
from .odata import ODataService

MAX_PARTS = 1000
CRLF = "\r\n"


@dataclass(frozen=True)
class Part:
    """One request of a batch.

    >>> Part("GET", "https://h/api/accounts").safe
    True
    """

    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str = ""
    safe: bool = True


@dataclass(frozen=True)
class PartResponse:
    """One response of a batch: status, headers, body; `content_id` when the request had one.

    >>> PartResponse(200, {}, b'{"value": []}').json()
    {'value': []}
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    content_id: str = ""

    def json(self) -> Any:
        """The decoded JSON body, or None when empty."""
        return json.loads(self.body) if self.body.strip() else None


class ChangeSet:
    """Parts that succeed or fail together; `create` returns a `$n` reference for later parts.

    with batch.changeset() as cs: ref = cs.create("accounts", {...}); cs.update(f"{ref}/x", {...})
    """

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self.parts: list[Part] = []

    def create(self, path: str, row: Mapping[str, Any]) -> str:
        """A POST create (not safe to repeat); returns its `$n` reference."""
        cid = self._batch.next_content_id()
        self._add(Part("POST", self._batch.service.url(path), row, _ENTRY, cid, safe=False))
        return f"${cid}"

    def update(self, path: str, changes: Mapping[str, Any], *, if_match: str | None = "*") -> None:
        """A PATCH that only updates (`If-Match: *`); `if_match=None` makes it an upsert."""
        headers = {**_ENTRY, **({"If-Match": if_match} if if_match else {})}
        self._add(Part("PATCH", self._batch.service.url(path), changes, headers,
                       self._batch.next_content_id()))

    def delete(self, path: str) -> None:
        """A DELETE."""
        self._add(Part("DELETE", self._batch.service.url(path), None, {}, self._batch.next_content_id()))

    def _add(self, part: Part) -> None:
        self._batch.reserve()
        self.parts.append(part)


_ENTRY = {"Content-Type": "application/json; type=entry"}


class Batch:
    """A `$batch` request under construction; `execute()` sends it and returns the part responses.

    batch = dataverse.batch(); batch.get("accounts", {"$top": "1"}); parts = batch.execute()
    """

    def __init__(self, service: ODataService) -> None:
        self.service = service
        self._items: list[Part | ChangeSet] = []
        self._count = 0
        self._content_ids = 0

    def __len__(self) -> int:
        return self._count

    @property
    def safe(self) -> bool:
        """True when every part may be repeated (then the whole batch may be)."""
        return all(p.safe for p in self._parts())

    def next_content_id(self) -> str:
        """The next Content-ID (unique in the batch)."""
        self._content_ids += 1
        return str(self._content_ids)

    def reserve(self) -> None:
        """Count one more part; raises when the batch would exceed 1000 parts."""
        if self._count >= MAX_PARTS:
            raise ValueError(f"a $batch holds at most {MAX_PARTS} requests: split the work into batches")
        self._count += 1

    def get(self, path: str, params: Mapping[str, str] | None = None) -> None:
        """A read outside any change set (GET is not allowed inside one)."""
        self.reserve()
        url = str(httpx.URL(self.service.url(path), params=params or None))
        self._items.append(Part("GET", url))

    @contextmanager
    def changeset(self) -> Iterator[ChangeSet]:
        """Group writes so they succeed or fail together."""
        cs = ChangeSet(self)
        yield cs
        if cs.parts:
            self._items.append(cs)

    def execute(self, *, continue_on_error: bool = False) -> list[PartResponse]:
        """Send the batch. Without `continue_on_error`, a failed part raises `BatchError`."""
        boundary = f"batch_{uuid.uuid4()}"
        headers = {"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.service.send("POST", "$batch", content=self.encode(boundary).encode(),
                                     headers=headers, safe=self.safe, check=False)
        return self.read(response, continue_on_error=continue_on_error)

    def read(self, response: httpx.Response, *, continue_on_error: bool = False) -> list[PartResponse]:
        """The part responses of a `$batch` answer; without `continue_on_error`, a failed part
        raises `BatchError`, and a body that is not a batch response `ResponseError`."""
        # A stopped batch may answer with the failing part's status, yet still with a multipart body.
        if not response.headers.get("Content-Type", "").lower().startswith("multipart/"):
            if response.status_code >= 300:
                raise self.service.error(response)
            raise ResponseError("POST", redact_url(response.request.url),
                                f"$batch answered {response.status_code} without a multipart body "
                                f"(Content-Type {response.headers.get('Content-Type', 'none')!r})")
        parts = parse_multipart(response)
        if not continue_on_error:
            for index, part in enumerate(parts):
                if part.status >= 400:
                    raise BatchError(self._request_of(part, index), self._part_error(part))
        return parts

    def _request_of(self, part: PartResponse, index: int) -> int:
        """The position of the request a part answers: a failed change set answers with its failed
        request alone, so the answer's position is not the request's; its Content-ID is."""
        ids = [p.content_id for p in self._parts()]
        return ids.index(part.content_id) if part.content_id and part.content_id in ids else index

    def encode(self, boundary: str) -> str:
        """The multipart/mixed body (CRLF line ends, as the services expect)."""
        out: list[str] = []
        for item in self._items:
            out.append(f"--{boundary}")
            if isinstance(item, ChangeSet):
                inner = f"changeset_{uuid.uuid4()}"
                out += [f"Content-Type: multipart/mixed; boundary={inner}", ""]
                for part in item.parts:
                    out += [f"--{inner}", *_encode_part(part)]
                out.append(f"--{inner}--")
            else:
                out += _encode_part(item)
        out.append(f"--{boundary}--")
        return CRLF.join(out) + CRLF

    def items(self) -> list[Part | ChangeSet]:
        """The batch's requests in order: parts outside change sets, and change sets."""
        return list(self._items)

    def subset(self, items: Sequence[Part | ChangeSet]) -> Batch:
        """A batch of some of this batch's `items`, Content-IDs unchanged (e.g. the throttled ones,
        to send again)."""
        other = Batch(self.service)
        other._items = list(items)
        other._count = sum(len(i.parts) if isinstance(i, ChangeSet) else 1 for i in items)
        other._content_ids = self._content_ids
        return other

    def _parts(self) -> Iterator[Part]:
        for item in self._items:
            yield from (item.parts if isinstance(item, ChangeSet) else [item])

    def _part_error(self, part: PartResponse) -> ClientError:
        as_response = httpx.Response(part.status, headers=dict(part.headers), content=part.body,
                                     request=httpx.Request("POST", self.service.url("$batch")))
        return self.service.error(as_response)


def _encode_part(part: Part) -> list[str]:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if part.content_id:
        lines.append(f"Content-ID: {part.content_id}")
    lines += ["", f"{part.method} {part.url} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in part.headers.items()]
    if part.body is not None:
        lines += ["", json.dumps(part.body)]
    else:
        lines += [""]
    return lines


def parse_multipart(response: httpx.Response) -> list[PartResponse]:
    """The part responses of a multipart/mixed `$batch` response, change sets flattened, in order.

    Lines may end in CRLF or in LF alone; a body that is not a readable batch response raises
    `ResponseError` naming the endpoint.

    >>> part = b"Content-Type: application/http\\r\\n\\r\\nHTTP/1.1 204 No Content\\r\\n\\r\\n"
    >>> r = httpx.Response(200, headers={"Content-Type": "multipart/mixed; boundary=b"},
    ...                    content=b"--b\\r\\n" + part + b"\\r\\n--b--")
    >>> [p.status for p in parse_multipart(r)]
    [204]
    >>> lf = httpx.Response(200, headers={"Content-Type": "multipart/mixed; boundary=b"},
    ...                     content=b"--b\\n" + part.replace(b"\\r\\n", b"\\n") + b"\\n--b--\\n")
    >>> [p.status for p in parse_multipart(lf)]
    [204]
    """
    try:
        return _parse(response.headers.get("Content-Type", ""), response.content)
    except _Unreadable as exc:
        request = response.request
        raise ResponseError(request.method, redact_url(request.url), f"$batch response: {exc}") from None


class _Unreadable(Exception):
    """What is wrong with a batch response body (becomes a `ResponseError`)."""


_LINE_END = re.compile(rb"\r?\n")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def _boundary(content_type: str) -> str:
    for piece in content_type.split(";"):
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"')
    raise _Unreadable(f"no boundary in Content-Type {content_type!r}")


def _split_head(block: bytes) -> tuple[bytes, bytes]:
    """A block's header lines and what follows the blank line after them (CRLF or LF)."""
    found = _BLANK_LINE.search(block)
    if found is None:
        return block, b""
    return block[:found.start()], block[found.end():]


def _parse(content_type: str, body: bytes) -> list[PartResponse]:
    delimiter = b"--" + _boundary(content_type).encode()
    chunks = body.split(delimiter)
    if len(chunks) < 2:
        raise _Unreadable(f"the boundary {delimiter.decode()!r} of its Content-Type is not in the body")
    out: list[PartResponse] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break  # closing delimiter
        head, payload = _split_head(chunk.lstrip(b"\r\n"))
        headers = _headers(head)
        ctype = headers.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            out += _parse(ctype, payload)
        else:
            out.append(_http_response(payload, headers.get("content-id", ""), len(out)))
    if not closed:
        raise _Unreadable(f"it does not end with the closing delimiter {delimiter.decode()}--")
    return out


def _http_response(payload: bytes, content_id: str, index: int) -> PartResponse:
    head, body = _split_head(payload.lstrip(b"\r\n"))
    status_line, *rest = _LINE_END.split(head, maxsplit=1)
    pieces = status_line.split()
    if len(pieces) < 2 or not pieces[0].startswith(b"HTTP/") or not pieces[1].isdigit():
        raise _Unreadable(f"part {index} has no HTTP status line (it starts {status_line[:40]!r})")
    return PartResponse(int(pieces[1]), _headers(rest[0] if rest else b""), body.rstrip(b"\r\n"), content_id)


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in re.split(r"\r?\n", block.decode("utf-8", "replace")):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers
