"""The OData protocol pieces both emulated services share.

Errors (`ODataError`), response headers and JSON composition, `Prefer` and ETag headers, resource
paths (`accounts(accountnumber='A1')/…`) and key segments, value coercion, and the write hooks
(`WriteEvent`). Query options → SQL and paging live in `odata_sql`.

Example:
    >>> from dwlib.sandbox.schema import ENTITIES
    >>> split_path("accounts(accountnumber='A/1')/Microsoft.Dynamics.CRM.X")
    [Segment(name='accounts', key="accountnumber='A/1'"), Segment(name='Microsoft.Dynamics.CRM.X', key=None)]
    >>> parse_key(ENTITIES["CustomersV3"], "dataAreaId='usmf',CustomerAccount='US-001'")
    {'dataAreaId': 'usmf', 'CustomerAccount': 'US-001'}
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import quote as urlquote

from starlette.requests import Request
from starlette.responses import Response

from .schema import ColumnType, Entity

JSON_TYPE = "application/json; odata.metadata=minimal"
BAD_QUERY = "0x80060888"  # Dataverse's code for OData query/payload errors
NO_SEGMENT = "0x8006088a"  # Dataverse: "Resource not found for the segment" (web-api-client-errors)
UNKNOWN_PROPERTY = "0x0"  # Dataverse: "Could not find a property named …" (web-api-client-errors)
_EDM = {
    "guid": "Edm.Guid",
    "string": "Edm.String",
    "int": "Edm.Int32",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "json": "Edm.String",
}
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NAME_RE = re.compile(r"^[$A-Za-z_][\w.]*$")
_LINK_SAFE = "$,'()"
_PREFERENCE = re.compile(r'\s*([^=,\s]+)\s*(?:=\s*("[^"]*"|[^,]*))?\s*(?:,|$)')


class ODataError(Exception):
    """A request the service refuses: HTTP status, service error code and a message.

    Each service renders it in its own error shape (Dataverse `{"error":{"code","message"}}`,
    F&O with `innererror`); `kind` is the exception type F&O reports in `innererror.type`.

    >>> ODataError(404, "Not found").status
    404
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "",
        *,
        kind: str = "Microsoft.OData.ODataException",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.headers = dict(headers or {})


def type_name(ent: Entity) -> str:
    """The OData type of `ent`'s rows, as services name it in messages and `@odata.type`.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> type_name(ENTITIES["accounts"]), type_name(ENTITIES["CustomersV3"])
    ('Microsoft.Dynamics.CRM.account', 'Microsoft.Dynamics.DataEntities.CustomerV3')
    """
    ns = "Microsoft.Dynamics.CRM" if ent.service == "dataverse" else "Microsoft.Dynamics.DataEntities"
    return f"{ns}.{ent.logical_name}"


def no_property(ent: Entity, name: str) -> ODataError:
    """The error both services give for a property the entity does not have (in `$select`,
    `$filter`, `$orderby`, `$expand`); Dataverse's code is `0x0`.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> no_property(ENTITIES["accounts"], "Name").message
    "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'."
    """
    return ODataError(400, f"Could not find a property named '{name}' on type '{type_name(ent)}'.",
                      UNKNOWN_PROPERTY)


def new_request_id() -> str:
    """A fresh request id (`REQ_ID` / `x-ms-service-request-id`)."""
    return str(uuid.uuid4())


def odata_response(
    body: str | bytes | Mapping[str, Any] | None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    media_type: str = JSON_TYPE,
) -> Response:
    """A response with the OData headers every answer of both services carries; a mapping body
    is serialised as compact JSON.

    >>> odata_response({"value": []}).body
    b'{"value":[]}'
    """
    rid = new_request_id()
    out = {"OData-Version": "4.0", "REQ_ID": rid, "x-ms-service-request-id": rid, **(headers or {})}
    if body is None:
        return Response(status_code=status, headers=out)
    if not isinstance(body, str | bytes):
        body = json.dumps(body, separators=(",", ":"))
    return Response(body, status_code=status, headers=out, media_type=media_type)


def parse_prefer(values: Sequence[str]) -> dict[str, str]:
    """The preferences of `Prefer` header values (name → value, '' when it has none); a quoted
    value may hold commas (RFC 7240).

    >>> parse_prefer(['return=representation, odata.maxpagesize=10', 'odata.include-annotations="*"'])
    {'return': 'representation', 'odata.maxpagesize': '10', 'odata.include-annotations': '*'}
    >>> parse_prefer(['odata.include-annotations="a.b,c.d"'])
    {'odata.include-annotations': 'a.b,c.d'}
    """
    out: dict[str, str] = {}
    for value in values:
        for name, val in _PREFERENCE.findall(value):
            out[name.strip().lower()] = val.strip().strip('"')
    return out


def page_size(prefer: Mapping[str, str], maximum: int) -> int:
    """The page size `odata.maxpagesize` asks for, at most `maximum` (also the default)."""
    raw = prefer.get("odata.maxpagesize", "")
    if not raw:
        return maximum
    if not raw.isdigit() or int(raw) < 1:
        raise ODataError(400, f"Invalid odata.maxpagesize '{raw}': use a positive integer.", BAD_QUERY)
    return min(int(raw), maximum)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an `If-Match`/`If-None-Match` header value names `etag` (or is `*`)."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags


def allow(method: str, allowed: str | tuple[str, ...], request: Request) -> None:
    """405 unless `method` is one of `allowed` for the addressed resource."""
    allowed = (allowed,) if isinstance(allowed, str) else allowed
    if method not in allowed:
        raise ODataError(405, f"The HTTP method '{method}' is not allowed on '{request.url.path}': use "
                         f"{' or '.join(allowed)}.", BAD_QUERY)


async def json_body(request: Request) -> Any:
    """The request body parsed as JSON (an empty body is `{}`), or a 400."""
    raw = await request.body()
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise ODataError(400, f"The request body is not valid JSON: {exc}.", BAD_QUERY) from None


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ODataError(400, "The request body must be a JSON object.", BAD_QUERY)
    return body


# --- resource paths and keys ------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One path segment: a name and, when it had parentheses, the text between them."""

    name: str
    key: str | None = None


def _scan(text: str, stops: str) -> list[tuple[int, str]]:
    """Positions of `stops` characters outside quotes and parentheses (the one tokenising rule
    that key segments, paths and `$apply` share)."""
    hits: list[tuple[int, str]] = []
    depth, quoted = 0, False
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still correct
        elif quoted:
            continue
        elif ch in stops and depth == 0:
            hits.append((i, ch))
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
    if quoted or depth != 0:
        raise ODataError(400, f"Unbalanced quotes or parentheses in '{text}'.", BAD_QUERY)
    return hits


def split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` where it stands outside quotes and parentheses.

    >>> split_top("a='x,y',b=(1,2)", ",")
    ["a='x,y'", 'b=(1,2)']
    """
    parts, start = [], 0
    for i, _ in _scan(text, sep):
        parts.append(text[start:i])
        start = i + 1
    parts.append(text[start:])
    return parts


def split_path(path: str) -> list[Segment]:
    """The segments of a resource path (relative to the service root).

    >>> split_path("WhoAmI()")
    [Segment(name='WhoAmI', key='')]
    """
    segments: list[Segment] = []
    if not path.strip("/"):
        return segments
    for raw in split_top(path.strip("/"), "/"):
        name, paren, rest = raw.partition("(")
        if not _NAME_RE.match(name):
            raise ODataError(404, f"Resource not found for the segment '{raw}'.", NO_SEGMENT)
        if not paren:
            segments.append(Segment(name))
            continue
        if not rest.endswith(")"):
            raise ODataError(400, f"Bad key segment '{raw}': it must end with ')'.", BAD_QUERY)
        segments.append(Segment(name, rest[:-1]))
    return segments


def _literal(text: str) -> Any:
    """A key literal: 'string' (with '' escapes), a GUID, a number, true/false or null."""
    text = text.strip()
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if _GUID_RE.match(text):
        return text.lower()
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ODataError(400, f"Bad key value {text}: quote strings ('US-001'); GUIDs go bare.",
                         BAD_QUERY) from None


def parse_key(ent: Entity, text: str) -> dict[str, Any]:
    """The key segment `text` as a column → value dict, checked against the entity's primary
    key and alternate keys; values are coerced to the columns' types.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> parse_key(ENTITIES["accounts"], "3F2504E0-4F89-11D3-9A0C-0305E82C3301")
    {'accountid': '3f2504e0-4f89-11d3-9a0c-0305e82c3301'}
    """
    items = split_top(text, ",")
    if len(items) == 1 and "=" not in items[0].split("'")[0]:
        if len(ent.key) != 1:
            raise ODataError(400, f"The key of '{ent.name}' has {len(ent.key)} parts "
                             f"({', '.join(ent.key)}): name every part, e.g. "
                             f"{ent.name}({','.join(f'{k}=…' for k in ent.key)}).", BAD_QUERY)
        pairs = {ent.key[0]: _literal(items[0])}
    else:
        pairs = {}
        for item in items:
            name, eq, value = item.partition("=")
            if not eq:
                raise ODataError(400, f"Bad key part '{item}' in '{text}': use name=value.", BAD_QUERY)
            pairs[name.strip()] = _literal(value)
    names = set(pairs)
    if names != set(ent.key) and names not in [set(ak) for ak in ent.alternate_keys]:
        keys = " or ".join("(" + ", ".join(k) + ")" for k in (ent.key, *ent.alternate_keys))
        raise ODataError(400, f"The key ({', '.join(pairs)}) is not a key of '{ent.name}': "
                         f"address a row by {keys}.", BAD_QUERY)
    cols = ent.all_columns
    return {name: coerce(ent, name, cols[name], value) for name, value in pairs.items()}


def is_primary(ent: Entity, key: Mapping[str, Any]) -> bool:
    """Whether `key` (from `parse_key`) is the primary key rather than an alternate key."""
    return set(key) == set(ent.key)


# --- values -----------------------------------------------------------------------------------


def iso_utc(value: str) -> str:
    """An ISO-8601 date-time as the store keeps it: UTC, seconds, `Z`.

    >>> iso_utc("2024-01-01T02:00:00.123+02:00")
    '2024-01-01T00:00:00Z'
    """
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def coerce(ent: Entity, name: str, typ: ColumnType, value: Any) -> Any:
    """`value` (from JSON or a key literal) as the Python value the store keeps for `typ`,
    or a 400 naming the expected type.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> coerce(ENTITIES["accounts"], "creditlimit", "decimal", 5)
    5
    """
    if value is None:
        return None
    ok = True
    if typ in ("string", "json"):
        ok = isinstance(value, str) or typ == "json"
    elif typ == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ == "decimal":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif typ == "bool":
        ok = isinstance(value, bool)
    elif typ == "guid":
        ok = isinstance(value, str) and bool(_GUID_RE.match(value))
        value = value.lower() if ok else value
    elif typ == "datetime":
        try:
            value = iso_utc(value)
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ODataError(400, f"Cannot convert the literal '{value}' to the expected type "
                         f"'{_EDM[typ]}' of property '{name}' on type '{type_name(ent)}'.", BAD_QUERY)
    return value


def with_annotations(annotations: Mapping[str, Any], row_json: str) -> str:
    """`row_json` (an object's JSON text) with `annotations` inserted first.

    >>> with_annotations({"@odata.context": "x"}, '{"a":1}')
    '{"@odata.context":"x","a":1}'
    """
    head = json.dumps(dict(annotations), separators=(",", ":"))[:-1]
    inner = row_json[1:]
    return head + ("" if inner == "}" else ",") + inner if head != "{" else row_json


def collection_json(annotations: Mapping[str, Any], items: Sequence[str], tail: Mapping[str, Any]) -> str:
    """A collection response: `annotations`, then `value`, then `tail` (e.g. `@odata.nextLink`)."""
    head = json.dumps(dict(annotations), separators=(",", ":"))[1:-1]
    rest = json.dumps(dict(tail), separators=(",", ":"))[1:-1]
    parts = [p for p in (head, '"value":[' + ",".join(items) + "]", rest) if p]
    return "{" + ",".join(parts) + "}"


def query_string(args: Sequence[tuple[str, str]]) -> str:
    """Query parameters encoded the way OData links show them (`$` and `,` left readable).

    >>> query_string([("$select", "name,accountid"), ("$filter", "name eq 'a b'")])
    "$select=name,accountid&$filter=name%20eq%20'a%20b'"
    """
    return "&".join(f"{urlquote(k, safe='$')}={urlquote(v, safe=_LINK_SAFE)}" for k, v in args)


# --- write hooks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteEvent:
    """Rows written through the API, handed to the hooks in `sbx.extras["write_hooks"]`.

    `rows` are the rows after the write (create/update) or before it (delete), as the store
    returns them; given as a function, they are read when a hook first asks for them. Hooks run
    inside the writing transaction: raising `ODataError` fails (and rolls back) the write that
    triggered them.

    `batch` is shared by the events of one batch of writes made in one synchronous block (the
    rows of one DMF import step), during which nothing but these writes changes the store: a hook
    keeps there what it would otherwise read again for every event (its own configuration).

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> WriteEvent(ENTITIES["accounts"], "create", lambda: [{"name": "A"}]).rows
    [{'name': 'A'}]
    """

    entity: Entity
    op: str  # "create" | "update" | "delete"
    given: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]]
    batch: dict[Any, Any] = field(default_factory=dict)

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        return self.given if isinstance(self.given, list) else self.given()


def run_write_hooks(extras: Mapping[str, Any], event_factory: Callable[[], WriteEvent]) -> None:
    """Call every registered write hook with the event (built only when there is a hook)."""
    hooks = extras.get("write_hooks") or ()
    if not hooks:
        return
    event = event_factory()
    for hook in hooks:
        hook(event)
