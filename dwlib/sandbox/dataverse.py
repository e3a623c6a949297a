"""The Dataverse Web API v9.2 emulation, served under `{dataverse_url}/api/data/v9.2/`.

WhoAmI, RetrieveFinanceAndOperationsIntegrationDetails, EntityDefinitions (from `schema`), CRUD
with GUID and alternate keys, upsert with If-Match/If-None-Match, lookups (`_x_value` read,
`x@odata.bind` write), query options and paging (`odata.maxpagesize` ≤ 5000, opaque
`$skiptoken`), Create/Update/UpsertMultiple (all-or-nothing) and `$batch` — with the error codes
and messages of api-surface §2. Every request is authenticated for the Dataverse audience and
runs as the caller's `systemusers` row (application user by app id, user by object id).

Example:
    server.py: Mount("/dataverse", routes=dataverse.routes(sbx))
    >>> API
    '/api/data/v9.2'
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from . import odata_batch, platform
from .context import AuthError, Sandbox
from .dataverse_annotations import PREFERENCE as ANNOTATIONS_PREFERENCE
from .dataverse_annotations import Annotator, requested
from .dataverse_expand import Expand, apply, lookup_columns, parse_expand
from .dataverse_metadata import READ_ONLY, Metadata, attribute_type
from .odata import (
    BAD_QUERY,
    NO_SEGMENT,
    UNKNOWN_PROPERTY,
    ODataError,
    Segment,
    WriteEvent,
    allow,
    coerce,
    collection_json,
    etag_matches,
    is_primary,
    json_body,
    json_object,
    odata_response,
    page_size,
    parse_key,
    parse_prefer,
    query_string,
    run_write_hooks,
    split_path,
    type_name,
    with_annotations,
)
from .odata_sql import (
    Query,
    count_rows,
    fetch_one,
    fetch_page,
    key_where,
    parse_query,
)
from .schema import DATAVERSE, PLATFORM, Entity, Lookup, collection, entity
from .store import Store, quote
from .tracelog import SERVICE_WRITTEN

log = logging.getLogger(__name__)
API = "/api/data/v9.2"
MAX_PAGE = 5000
COUNT_LIMIT = 5000
AGGREGATE_LIMIT = 50_000  # rows an aggregate ($apply) may cover: a fixed platform limit
AGGREGATE_LIMIT_EXCEEDED = "0x8004e023"
ETAG_SQL = "'W/\"' || \"versionnumber\" || '\"'"
NOT_FOUND = "0x80040217"
DUPLICATE = "0x80040237"
VERSION_MISMATCH = "0x80060882"
NOT_A_USER = "0x80072560"
NOT_LINKED = "0x80048d0b"
BAD_ARGUMENT = "0x80040203"
UNEXPECTED = "0x80040216"
PAYLOAD = "0x80048d19"  # "Error identified in Payload provided by the user …" (web-api-client-errors)
NOT_SUPPORTED = "0x80040800"  # a message the table does not support (unverified: community reports)
_BULK = {f"Microsoft.Dynamics.CRM.{m}Multiple": m.lower() for m in ("Create", "Update", "Upsert")}


def error_response(exc: ODataError) -> Response:
    """The Dataverse error body `{"error":{"code","message"}}` for `exc`."""
    body = {"error": {"code": exc.code, "message": exc.message}}
    return odata_response(body, exc.status, exc.headers)


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """The Web API routes, to mount at the path of `sbx.dataverse_url` (`/dataverse`).

    app = Starlette(routes=[Mount("/dataverse", routes=routes(sbx))])
    """
    svc = _Dataverse(sbx)
    return odata_batch.service_routes(API, svc.handle, root_url=svc.root, check=svc.caller,
                                      render=error_response, transaction=sbx.store.transaction,
                                      unreadable=unreadable_stream)


def unreadable_stream(entity_set: str) -> ODataError:
    """The error Dataverse gives for a `$batch` body it cannot read: lines ending in LF only, without
    two line endings at its end (web-api-client-errors, "Stream was not readable")."""
    return ODataError(400, f"Error identified in Payload provided by the user for Entity :'{entity_set}', "
                      "For more information on this error please follow this help link "
                      "https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : "
                      "System.ArgumentException: Stream was not readable.", PAYLOAD)


class _Binder:
    """Resolves `x@odata.bind` / `@odata.id` references to primary keys, once per request."""

    def __init__(self, svc: _Dataverse) -> None:
        self.svc = svc
        self.cache: dict[tuple[str, str], str] = {}

    def resolve(self, ref: str, targets: tuple[str, ...], what: str) -> str:
        """The primary key of the row `ref` names, which must be a row of one of `targets`."""
        hit = self.cache.get((targets[0], ref))
        if hit is None:
            ent, key = self.svc.parse_ref(ref)
            if ent.name not in targets:
                raise ODataError(400, f"{what} must reference '{' or '.join(targets)}', not '{ent.name}' "
                                 f"({ref}).", BAD_QUERY)
            row = self.svc.find(ent, key)
            if row is None:
                raise self.svc.not_found(ent, key)
            hit = self.cache[(targets[0], ref)] = row[ent.key[0]]
        return hit


class _Dataverse:
    """Request handlers; one instance per sandbox."""

    def __init__(self, sbx: Sandbox) -> None:
        self.sbx = sbx
        self.store = sbx.store
        self.conn: sqlite3.Connection = sbx.store.conn
        self.root = f"{sbx.dataverse_url}{API}/"
        self.metadata = Metadata(self.root)
        self._columns: dict[str, dict[str, str]] = {}

    # --- caller -------------------------------------------------------------------------------

    def caller(self, request: Request) -> sqlite3.Row:
        """The enabled `systemusers` row the request's token maps to (401/403 otherwise)."""
        try:
            principal = self.sbx.identity.authenticate(request, self.sbx.dataverse_url)
        except AuthError as exc:
            challenge = (f"Bearer authorization_uri={self.sbx.authority}/oauth2/authorize, "
                         f"resource_id={self.sbx.dataverse_url}")
            raise ODataError(401, f"The request is not authorized ({exc.code}): {exc.reason}", NOT_A_USER,
                             headers={"WWW-Authenticate": challenge}) from None
        column, value, what = (
            ("applicationid", principal.app_id, f"application id {principal.app_id}") if principal.is_app
            else ("azureactivedirectoryobjectid", principal.oid, f"Entra object id {principal.oid}")
        )
        row = self.conn.execute(
            f"SELECT systemuserid, _businessunitid_value FROM dv_systemusers WHERE {quote(column)} = ? "
            "AND COALESCE(isdisabled, 0) = 0 LIMIT 1", (value,)).fetchone()
        if row is None:
            fix = ("add it as an application user (Power Platform admin center > Environment > Settings > "
                   "Application users)" if principal.is_app else "add the user to the environment")
            raise ODataError(403, f"The user is not a member of the organization: no enabled user with "
                             f"{what} exists in this Dataverse environment; {fix}.", NOT_A_USER)
        return row

    # --- dispatch -----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            user = self.caller(request)
            segments = split_path(request.path_params.get("path", ""))
            return await self._route(request, segments, user)
        except ODataError as exc:
            return error_response(exc)
        except Exception:  # a sandbox bug still answers in the service's error shape
            log.exception("Dataverse %s %s failed", request.method, request.url.path)
            return error_response(ODataError(500, "An unexpected error occurred.", UNEXPECTED))

    async def _route(self, request: Request, segments: list[Segment], user: sqlite3.Row) -> Response:
        method = request.method
        if not segments:
            return self._service_document()
        head, rest = segments[0], segments[1:]
        if head.name in ("WhoAmI", "RetrieveFinanceAndOperationsIntegrationDetails") and not rest:
            if method != "GET":  # a function called with another method (web-api-client-errors)
                raise ODataError(404, "No HTTP resource was found that matches the request URI "
                                 f"'{self.root}{head.name}'.", "")
            return self._who_am_i(user) if head.name == "WhoAmI" else self._link_details()
        if head.name == "RetrieveVersion" and head.key in (None, "") and not rest:
            allow(method, "GET", request)
            return odata_response({"@odata.context": f"{self.root}$metadata#Microsoft.Dynamics.CRM."
                                                     "RetrieveVersionResponse",
                                   "Version": platform.state(self.sbx)["dataverse_version"]})
        if head.name == "EntityDefinitions":
            allow(method, "GET", request)
            return self.metadata.get(head.key, rest, request.query_params)
        ent = entity(head.name, "dataverse")
        if ent is None:
            raise ODataError(404, f"Resource not found for the segment '{head.name}'.", NO_SEGMENT)
        if ent in PLATFORM:  # derived from the schema, read-only
            allow(method, "GET", request)
            if rest:
                raise ODataError(404, f"Resource not found for the segment '{rest[0].name}'.", NO_SEGMENT)
            if head.key is None:
                return self._list(request, ent, conn=self.metadata.conn)
            return self._retrieve(request, ent, parse_key(ent, head.key), conn=self.metadata.conn)
        if ent.name in SERVICE_WRITTEN:  # the service writes them: GET and DELETE only
            allow(method, ("GET",) if head.key is None else ("GET", "DELETE"), request)
        if head.key is None:
            if not rest:
                allow(method, ("GET", "POST"), request)
                return self._list(request, ent) if method == "GET" else await self._create(request, ent, user)
            if len(rest) == 1 and rest[0].name == "$count":
                allow(method, "GET", request)
                q = parse_query(ent, {k: v for k, v in request.query_params.items() if k == "$filter"})
                count = min(count_rows(self.conn, q), COUNT_LIMIT)
                return odata_response(str(count), media_type="text/plain")
            if len(rest) == 1 and rest[0].name in _BULK:
                allow(method, "POST", request)
                return await self._bulk(request, ent, _BULK[rest[0].name], user)
        else:
            key = parse_key(ent, head.key)
            if not rest:
                allow(method, ("GET", "PATCH", "DELETE"), request)
                if method == "GET":
                    return self._retrieve(request, ent, key)
                if method == "PATCH":
                    return await self._upsert(request, ent, key, user)
                return self._delete(request, ent, key)
            if len(rest) == 1 and rest[0].key is None and rest[0].name in ent.all_columns:
                allow(method, ("GET", "PUT", "DELETE"), request)
                return await self._property(request, ent, key, rest[0].name)
            if len(rest) == 1 and rest[0].key is None and (many := collection(ent, rest[0].name)) is not None:
                allow(method, "GET", request)
                return self._related(request, ent, key, rest[0].name, *many)
        raise ODataError(404, f"Resource not found for the segment '{rest[0].name if rest else head.name}'.",
                         NO_SEGMENT)

    # --- functions ----------------------------------------------------------------------------

    def _service_document(self) -> Response:
        sets = [{"name": e.name, "kind": "EntitySet", "url": e.name} for e in DATAVERSE]
        return odata_response({"@odata.context": f"{self.root}$metadata", "value": sets})

    def _who_am_i(self, user: sqlite3.Row) -> Response:
        org = self.conn.execute(
            "SELECT organizationid FROM dv_organizations ORDER BY createdon LIMIT 1").fetchone()
        body = {
            "@odata.context": f"{self.root}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": user["_businessunitid_value"],
            "UserId": user["systemuserid"],
            "OrganizationId": org[0] if org else self.sbx.settings.organization_id,
        }
        return odata_response(body)

    def _link_details(self) -> Response:
        link = self.store.kv_get("pp_link")
        if not link:
            raise ODataError(400, "Dataverse instance isn't integrated with finance and operations.",
                             NOT_LINKED)
        ctx = (f"{self.root}$metadata#Microsoft.Dynamics.CRM."
               "RetrieveFinanceAndOperationsIntegrationDetailsResponse")
        return odata_response({"@odata.context": ctx, **link})

    # --- reading ------------------------------------------------------------------------------

    def _select(self, ent: Entity, select: list[str] | None) -> list[str]:
        if select is None:
            return list(ent.all_columns)
        extra = [*ent.key]
        # "the _transactioncurrencyid_value lookup property … is included because revenue is a
        # currency property" (select-columns.md)
        if ent.lookup("transactioncurrencyid") and any(
                c in ent.columns and attribute_type(ent, c) == "Money" for c in select):
            extra.append("_transactioncurrencyid_value")
        return select + [c for c in extra if c not in select]

    def _annotator(self, request: Request, ent: Entity, conn: sqlite3.Connection,
                   q: Query | None = None) -> Annotator | None:
        """The annotations the request's `Prefer: odata.include-annotations` asks for, if any."""
        names = requested(_prefer(request).get(ANNOTATIONS_PREFERENCE))
        aggregates = q.apply.sources if q is not None and q.apply is not None else None
        return Annotator(conn, ent, names, aggregates) if names else None

    def _context(self, ent: Entity, select: list[str] | None, suffix: str = "",
                 expands: list[Expand] | None = None) -> str:
        parts = [*(select or []), *(e.shape() for e in expands or [])]
        shape = f"({','.join(parts)})" if parts else ""
        return f"{self.root}$metadata#{ent.name}{shape}{suffix}"

    def _query(self, request: Request, ent: Entity) -> tuple[Query, list[Expand]]:
        q = parse_query(ent, request.query_params, allow_expand=True)
        return q, (parse_expand(ent, q.expand) if q.expand else [])

    def _list(self, request: Request, ent: Entity, *, conn: sqlite3.Connection | None = None,
              restrict: tuple[str, list[Any]] | None = None, path: str | None = None) -> Response:
        """A collection of `ent` (`path` is its URL under the root when it is a filtered one)."""
        conn = conn or self.conn
        args = request.query_params
        q, expands = self._query(request, ent)
        if restrict is not None:
            q.restrict(*restrict)
        prefer = _prefer(request)
        size = page_size(prefer, MAX_PAGE)
        if "odata.maxpagesize" in prefer:
            q.top = None  # "If you include both, $top is ignored." (page-results.md)
        if q.apply is not None and count_rows(conn, q) > AGGREGATE_LIMIT:
            raise ODataError(400, "AggregateQueryRecordLimit exceeded. Cannot perform this operation.",
                             AGGREGATE_LIMIT_EXCEEDED)
        columns = self._select(ent, q.select)
        hidden = [c for c in lookup_columns(expands) if c not in columns]
        page = fetch_page(conn, q, columns + hidden, size, ETAG_SQL)
        items = page.items
        if q.apply is not None:
            # The service leaves a group's empty key out of its row (aggregate-data.md, Distinct values).
            items = [json.dumps({k: v for k, v in json.loads(t).items() if v is not None or k not in
                                 q.apply.groupby}, separators=(",", ":")) for t in items]
            head: dict[str, Any] = {"@odata.context": f"{self.root}$metadata#{ent.name}"}
        else:
            head = {"@odata.context": self._context(ent, q.select, expands=expands)}
        if expands:
            items = [self._expanded(ent, t, expands, hidden, conn) for t in items]
        if (annotator := self._annotator(request, ent, conn, q)) is not None:
            items = [annotator.text(t) for t in items]
        if page.count is not None:
            head["@odata.count"] = min(page.count, COUNT_LIMIT)
            head["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = page.count > COUNT_LIMIT
        tail = {}
        if page.next_token:
            keep = [(k, v) for k, v in args.multi_items() if k != "$skiptoken"]
            tail["@odata.nextLink"] = (f"{self.root}{path or ent.name}?"
                                       f"{query_string([*keep, ('$skiptoken', page.next_token)])}")
        applied = [f"odata.maxpagesize={size}"] if "odata.maxpagesize" in prefer else []
        return odata_response(collection_json(head, items, tail), headers=_applied(prefer, applied))

    def _expanded(self, ent: Entity, text: str, expands: list[Expand], hidden: list[str],
                  conn: sqlite3.Connection) -> str:
        row = apply(conn, self.root, ent, json.loads(text), expands, ETAG_SQL)
        for column in hidden:
            row.pop(column, None)
        return json.dumps(row, separators=(",", ":"))

    def _related(self, request: Request, ent: Entity, key: dict[str, Any], name: str, referencing: Entity,
                 lookup: Lookup) -> Response:
        """A collection-valued navigation property: the rows of `referencing` that refer to this row."""
        row = self.find(ent, key)
        if row is None:
            raise self.not_found(ent, key)
        pk = row[ent.key[0]]
        return self._list(request, referencing, restrict=(f"{quote(lookup.column)} = ?", [pk]),
                          path=f"{ent.name}({pk})/{name}")

    def _retrieve(self, request: Request, ent: Entity, key: dict[str, Any], *,
                  conn: sqlite3.Connection | None = None) -> Response:
        q, expands = self._query(request, ent)  # validates every option; $select and $expand apply
        row = self.find(ent, key, conn=conn)
        if row is None:
            raise self.not_found(ent, key)
        etag = _etag(row)
        if etag_matches(request.headers.get("if-none-match", ""), etag):
            return odata_response(None, 304, {"ETag": etag})
        annotator = self._annotator(request, ent, conn or self.conn)
        return self._representation(ent, row[ent.key[0]], q.select, 200, _applied(_prefer(request), []),
                                    expands=expands, conn=conn, annotator=annotator)

    def _representation(self, ent: Entity, pk: str, select: list[str] | None, status: int,
                        headers: Mapping[str, str] | None = None, *, expands: list[Expand] | None = None,
                        conn: sqlite3.Connection | None = None,
                        annotator: Annotator | None = None) -> Response:
        columns = self._select(ent, select)
        hidden = [c for c in lookup_columns(expands or []) if c not in columns]
        text = fetch_one(conn or self.conn, ent, {ent.key[0]: pk}, columns + hidden, ETAG_SQL)
        assert text is not None
        if expands:
            text = self._expanded(ent, text, expands, hidden, conn or self.conn)
        if annotator is not None:
            text = annotator.text(text)
        context = self._context(ent, select, "/$entity", expands)
        return odata_response(with_annotations({"@odata.context": context}, text), status, headers)

    async def _property(self, request: Request, ent: Entity, key: dict[str, Any], name: str) -> Response:
        row = self.find(ent, key)
        if row is None:
            raise self.not_found(ent, key)
        pk = {ent.key[0]: row[ent.key[0]]}
        if request.method == "GET":
            ctx = f"{self.root}$metadata#{ent.name}({row[ent.key[0]]})/{name}"
            return odata_response({"@odata.context": ctx, "value": row[name]})
        if name.startswith("_") or name in READ_ONLY or name in ent.key:
            raise ODataError(400, f"The property '{name}' can't be set this way: lookups take "
                             "x@odata.bind in a PATCH body; system columns are read-only.", BAD_QUERY)
        value = None
        if request.method == "PUT":
            body = await json_body(request)
            if not isinstance(body, dict) or "value" not in body:
                raise ODataError(400, 'A property PUT takes {"value": …}.', BAD_QUERY)
            value = coerce(ent, name, ent.all_columns[name], body["value"])
        with self.store.transaction():
            self.store.update_rows(ent, [(pk, {name: value})])
            self._hooks(ent, "update", [pk])
        return odata_response(None, 204)

    # --- references ---------------------------------------------------------------------------

    def parse_ref(self, ref: str) -> tuple[Entity, dict[str, Any]]:
        """The entity set and key a reference names: `/accounts(<guid>)`, `accounts(k='v')` or an
        absolute URL."""
        path = urlsplit(ref).path if "://" in ref else ref
        rel = path.split(API + "/", 1)[1] if API + "/" in path else path.lstrip("/")
        segments = split_path(rel)
        target = entity(segments[0].name, "dataverse") if len(segments) == 1 else None
        if target is None or segments[0].key is None:
            raise ODataError(400, f"'{ref}' is not an entity reference: use /<entity set>(<id>) or "
                             "/<entity set>(<alternate key>=<value>).", BAD_QUERY)
        return target, parse_key(target, segments[0].key)

    def find(self, ent: Entity, key: Mapping[str, Any], *,
             conn: sqlite3.Connection | None = None) -> dict[str, Any] | None:
        """The row at a primary or alternate key (the first by primary key if several), or None."""
        where, params = key_where(key)
        sql = f"SELECT * FROM {quote(ent.table)} WHERE {where} ORDER BY {quote(ent.key[0])} LIMIT 1"
        rows = (conn or self.conn).execute(sql, params).fetchall()
        return Store.from_db(ent, rows[0]) if rows else None

    def not_found(self, ent: Entity, key: Mapping[str, Any]) -> ODataError:
        """The 404 Dataverse gives for a missing row (by id, or by alternate key)."""
        if is_primary(ent, key):
            return ODataError(404, f"{ent.logical_name} With Id = {key[ent.key[0]]} Does Not Exist",
                              NOT_FOUND)
        return ODataError(404, f"A record with the specified key values does not exist in "
                          f"{ent.logical_name} entity", NOT_FOUND)

    # --- writing ------------------------------------------------------------------------------

    def _row(self, ent: Entity, body: Mapping[str, Any], binder: _Binder) -> dict[str, Any]:
        """A request body as store values: properties checked and coerced, binds resolved."""
        cols = self._columns.get(ent.name)
        if cols is None:
            # lookup columns (_x_value) are read-only: they are written through x@odata.bind
            cols = {c: t for c, t in ent.all_columns.items() if not c.startswith("_")}
            self._columns[ent.name] = cols
        row: dict[str, Any] = {}
        for name, value in body.items():
            if "@" in name:
                prop, _, annotation = name.partition("@")
                if prop and annotation == "odata.bind":
                    found = ent.navigation(prop)  # case-sensitive, one per target of a multi-table lookup
                    if found is None:
                        raise ODataError(400, f"Error identified in Payload provided by the user for Entity "
                                         f":'{ent.name}'  ---->  InnerException : Microsoft.OData."
                                         f"ODataException: An undeclared property '{prop}' which only has "
                                         "property annotations in the payload but no property value was "
                                         "found in the payload. In OData, only declared navigation "
                                         "properties and declared named streams can be represented as "
                                         "properties without values.", PAYLOAD)
                    lookup, targets = found
                    if value is not None and not isinstance(value, str):
                        raise ODataError(400, f"{name} takes a reference string like "
                                         f"\"/{targets[0]}(<id>)\", or null.", BAD_QUERY)
                    row[lookup.column] = None if value is None else binder.resolve(value, targets, name)
                continue  # other instance annotations (@odata.type, …) carry no data
            typ = cols.get(name)
            if typ is None:
                raise ODataError(400, "An error occurred while validating input parameters: Microsoft.Crm."
                                 f"CrmException: Invalid property '{name}' was found in entity "
                                 f"'{type_name(ent)}'. ---> Microsoft.OData.ODataException: Does not support "
                                 "untyped value in non-open type.", UNKNOWN_PROPERTY)
            if name not in READ_ONLY:
                row[name] = coerce(ent, name, typ, value)  # type: ignore[arg-type]
        return row

    def _owned(self, ent: Entity, row: dict[str, Any], user: sqlite3.Row) -> dict[str, Any]:
        """`row` with owner and owning business unit defaulted to the caller's (owned tables)."""
        if ent.lookup("ownerid") is not None:
            row.setdefault("_ownerid_value", user["systemuserid"])
            row.setdefault("_owningbusinessunit_value", user["_businessunitid_value"])
        return row

    def _insert(self, ent: Entity, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            stored = self.store.insert_rows(ent, rows)
        except sqlite3.IntegrityError:
            raise ODataError(412, "A record with matching key values already exists.", DUPLICATE) from None
        self._hooks(ent, "create", [{ent.key[0]: r[ent.key[0]]} for r in stored])
        return stored

    def _update(self, ent: Entity, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        try:
            self.store.update_rows(ent, items)
        except KeyError as exc:
            raise self.not_found(ent, exc.args[0]) from None
        self._hooks(ent, "update", [k for k, _ in items])

    def _hooks(self, ent: Entity, op: str, keys: list[dict[str, Any]]) -> None:
        def rows() -> list[dict[str, Any]]:  # read only if a hook asks for them
            pk = ent.key[0]
            ids = list(dict.fromkeys(k[pk] for k in keys))
            found: dict[str, dict[str, Any]] = {}
            for start in range(0, len(ids), 500):  # a few IN queries, not one SELECT per row
                chunk = ids[start:start + 500]
                sql = f"SELECT * FROM {quote(ent.table)} WHERE {quote(pk)} IN ({', '.join('?' * len(chunk))})"
                found.update((r[pk], Store.from_db(ent, r)) for r in self.store.query(sql, chunk))
            return [found[i] for i in ids if i in found]

        run_write_hooks(self.sbx.extras, lambda: WriteEvent(ent, op, rows))

    def _written(self, request: Request, ent: Entity, pk: str, status_if_returned: int) -> Response:
        url = f"{self.root}{ent.name}({pk})"
        headers = {"OData-EntityId": url, "Location": url}
        prefer = _prefer(request)
        if prefer.get("return") == "representation":
            q = parse_query(ent, request.query_params)  # validates every option; only $select applies
            headers.update(_applied(prefer, ["return=representation"]))
            return self._representation(ent, pk, q.select, status_if_returned, headers,
                                        annotator=self._annotator(request, ent, self.conn))
        return odata_response(None, 204, headers)

    async def _create(self, request: Request, ent: Entity, user: sqlite3.Row) -> Response:
        body = await json_object(request)
        with self.store.transaction():
            row = self._owned(ent, self._row(ent, body, _Binder(self)), user)
            stored = self._insert(ent, [row])[0]
        return self._written(request, ent, stored[ent.key[0]], 201)

    async def _upsert(
        self, request: Request, ent: Entity, key: dict[str, Any], user: sqlite3.Row
    ) -> Response:
        body = await json_object(request)
        if_match = request.headers.get("if-match")
        if_none_match = request.headers.get("if-none-match", "")
        with self.store.transaction():
            existing = self.find(ent, key)
            if existing is not None and if_none_match.strip() == "*":
                raise ODataError(412, "A record with matching key values already exists.", DUPLICATE)
            if if_match is not None:
                if existing is None:
                    raise self.not_found(ent, key)
                if not etag_matches(if_match, _etag(existing)):
                    raise ODataError(412, "The version of the existing record doesn't match the RowVersion "
                                     "property provided.", VERSION_MISMATCH)
            row = self._row(ent, body, _Binder(self))
            if existing is None:
                stored = self._insert(ent, [self._owned(ent, {**row, **key}, user)])[0]
                pk = stored[ent.key[0]]
            else:
                pk = existing[ent.key[0]]
                self._update(ent, [({ent.key[0]: pk}, row)])
        return self._written(request, ent, pk, 200)

    def _delete(self, request: Request, ent: Entity, key: dict[str, Any]) -> Response:
        with self.store.transaction():
            existing = self.find(ent, key)
            if existing is None:
                raise self.not_found(ent, key)
            if_match = request.headers.get("if-match")
            if if_match is not None and not etag_matches(if_match, _etag(existing)):
                raise ODataError(412, "The version of the existing record doesn't match the RowVersion "
                                 "property provided.", VERSION_MISMATCH)
            run_write_hooks(self.sbx.extras, lambda: WriteEvent(ent, "delete", [existing]))
            self.store.delete(ent, {ent.key[0]: existing[ent.key[0]]})
        return odata_response(None, 204)

    # --- bulk messages ------------------------------------------------------------------------

    async def _bulk(self, request: Request, ent: Entity, action: str, user: sqlite3.Row) -> Response:
        name = f"{action.capitalize()}Multiple"
        if not ent.bulk:  # as `sdkmessagefilters` says (bulk-operations.md, Availability)
            raise ODataError(400, f"The '{name}' method does not support entities of type "
                             f"'{ent.logical_name}'. MessageProcessorCache returned MessageProcessor.Empty. ",
                             NOT_SUPPORTED)
        body = await json_object(request)
        targets = body.get("Targets")
        if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
            raise ODataError(400, f'{name} takes {{"Targets": [ {{…}}, … ]}}: a list of row objects.',
                             BAD_ARGUMENT)
        expected = type_name(ent)
        for i, t in enumerate(targets):
            if str(t.get("@odata.type", "")).lstrip("#") != expected:
                raise ODataError(400, f"Targets[{i}] of {name} needs \"@odata.type\": \"{expected}\" "
                                 f"(got {t.get('@odata.type')!r}); every target must carry it.", BAD_ARGUMENT)
        binder = _Binder(self)
        pk = ent.key[0]
        with self.store.transaction():
            if action == "create":
                rows = [self._owned(ent, self._row(ent, t, binder), user) for t in targets]
                stored = self._insert(ent, rows)
                ctx = f"{self.root}$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
                return odata_response({"@odata.context": ctx, "Ids": [r[pk] for r in stored]})
            creates: list[dict[str, Any]] = []
            updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
            planned: list[tuple[dict[str, Any], dict[str, Any] | None, Any]] = []  # row, key, found
            for i, t in enumerate(targets):
                row = self._row(ent, t, binder)
                key = self._target_key(ent, t, row)
                if key is None and action == "update":
                    raise ODataError(400, f"Targets[{i}] of UpdateMultiple has no primary key ({pk}) "
                                     "or @odata.id.", BAD_ARGUMENT)
                found = None
                if key is not None and is_primary(ent, key) and action == "upsert":
                    found = _LOOKED_UP  # every upsert by id is looked up in one query below
                elif key is not None:
                    found = key[pk] if is_primary(ent, key) and action == "update" else self._pk_of(ent, key)
                if found is None and action == "update":
                    raise self.not_found(ent, key or {})
                planned.append((row, key, found))
            # No write happens before the last lookup, so one query sees what each lookup would.
            known = self._ids(ent, [key[pk] for _, key, found in planned if found is _LOOKED_UP and key])
            for row, key, found in planned:
                if found is _LOOKED_UP and key:
                    found = known.get(str(key[pk]).lower())
                if found is None:
                    creates.append(self._owned(ent, {**row, **(key or {})}, user))
                else:
                    updates.append(({pk: found}, {k: v for k, v in row.items() if k != pk}))
            if updates:
                self._update(ent, updates)
            if creates:
                self._insert(ent, creates)
        return odata_response(None, 204)

    def _target_key(
        self, ent: Entity, target: Mapping[str, Any], row: dict[str, Any]
    ) -> dict[str, Any] | None:
        ref = target.get("@odata.id")
        if ref is not None:
            ref_ent, key = self.parse_ref(str(ref))
            if ref_ent.name != ent.name:
                raise ODataError(400, f"@odata.id '{ref}' does not name a row of '{ent.name}'.", BAD_ARGUMENT)
            return key
        pk = ent.key[0]
        return {pk: row[pk]} if row.get(pk) else None

    def _ids(self, ent: Entity, ids: list[Any]) -> dict[str, str]:
        """Of the primary ids `ids`, those that exist: lower case → as stored (a few IN queries)."""
        pk = ent.key[0]
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {quote(pk)} FROM {quote(ent.table)} WHERE {quote(pk)} IN ({marks})"
            out.update((str(r[0]).lower(), r[0]) for r in self.store.query(sql, chunk))
        return out

    def _pk_of(self, ent: Entity, key: Mapping[str, Any]) -> str | None:
        row = self.find(ent, key)
        return None if row is None else row[ent.key[0]]


_LOOKED_UP = object()  # a bulk target whose primary id is looked up with the others (see `_bulk`)


def _prefer(request: Request) -> dict[str, str]:
    return parse_prefer(request.headers.getlist("prefer"))


def _applied(prefer: Mapping[str, str], applied: list[str]) -> dict[str, str]:
    """`Preference-Applied` for the preferences honoured: `applied`, and the annotations asked for."""
    if requested(prefer.get(ANNOTATIONS_PREFERENCE)):
        applied = [f'{ANNOTATIONS_PREFERENCE}="{prefer[ANNOTATIONS_PREFERENCE]}"', *applied]
    return {"Preference-Applied": ",".join(applied)} if applied else {}


def _etag(row: Mapping[str, Any]) -> str:
    return f'W/"{row["versionnumber"]}"'
