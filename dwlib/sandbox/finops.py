"""The finance and operations OData emulation, served under `{finops_url}/data/`.

Entity sets from `schema` (LegalEntities, Currencies, CustomerGroups, PaymentTerms, CustomersV3,
DualWriteProjectConfigurations) with composite keys including `dataAreaId`, company scoping (the
caller's default company unless `cross-company=true`), lower-case `dataAreaId` values, pages of
at most 10,000 rows, `$skip`, `@odata.etag`, 201 on create and 204 on update/delete, Infolog-style
write errors in the `innererror` shape (api-surface §3), `$batch`, and the DMF package actions
under `DataManagementDefinitionGroups`, which are handed to `sbx.extras["dmf"]` (see `dmf_jobs.py`).

Example:
    server.py: Mount("/finops", routes=finops.routes(sbx))
    >>> DATA, MAX_PAGE
    ('/data', 10000)
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from typing import Any
from urllib.parse import quote as urlquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from . import fo_rules, odata_batch
from .context import AuthError, Sandbox
from .dmf_package import DmfError
from .fo_rules import COMPANY, SYSTEM_COMPANY
from .limits import FINOPS_THROTTLED, PART_THROTTLE, THROTTLING_KIND
from .odata import (
    ODataError,
    Segment,
    WriteEvent,
    allow,
    coerce,
    collection_json,
    etag_matches,
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
    parse_query,
)
from .schema import FINOPS, Entity, entity
from .store import RECVERSION, quote

log = logging.getLogger(__name__)
DATA = "/data"
MAX_PAGE = 10_000
DMF_GROUPS = "DataManagementDefinitionGroups"
KEY_SAFE = "=,'()-_.~"
_ETAG_FUNC = "fo_etag"


def error_response(exc: ODataError) -> Response:
    """The F&O error body: a generic message with the details in `innererror`."""
    body = {"error": {"code": "", "message": "An error has occurred.",
                      "innererror": {"message": exc.message, "type": exc.kind, "stacktrace": ""}}}
    return odata_response(body, exc.status, exc.headers)


def _etag(version: int) -> str:
    """The ETag of a row of row version `version` (`store.RECVERSION`), in the service's form:
    `W/"JzEsNjg3MTk0ODI4MzMn"` is base64 of `'1,68719482833'`.

    >>> _etag(1), base64.b64decode(_etag(68719482833)[3:-1])
    ('W/"JzEsMSc="', b"'1,68719482833'")
    """
    return 'W/"' + base64.b64encode(f"'1,{version}'".encode()).decode() + '"'


def etag_sql(ent: Entity) -> str:
    """SQL for a row's ETag: from its row version, which every update changes (`store.RECVERSION`)."""
    return f"{_ETAG_FUNC}({quote(RECVERSION)})"


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """The OData routes, to mount at the path of `sbx.finops_url` (`/finops`).

    app = Starlette(routes=[Mount("/finops", routes=routes(sbx))])
    """
    sbx.store.conn.create_function(_ETAG_FUNC, 1, _etag, deterministic=True)
    svc = _FinOps(sbx)
    return odata_batch.service_routes(DATA, svc.handle, root_url=svc.root, check=svc.authenticate,
                                      render=error_response, transaction=sbx.store.transaction,
                                      failure_status=False, failed_change_set_wrapped=True)


class _FinOps:
    """Request handlers; one instance per sandbox."""

    def __init__(self, sbx: Sandbox) -> None:
        self.sbx = sbx
        self.store = sbx.store
        self.conn: sqlite3.Connection = sbx.store.conn
        self.root = f"{sbx.finops_url}{DATA}/"

    def authenticate(self, request: Request) -> None:
        """401 unless the request carries a valid token for the F&O audience."""
        try:
            self.sbx.identity.authenticate(request, self.sbx.finops_url)
        except AuthError as exc:
            raise ODataError(401, f"Unauthorized ({exc.code}): {exc.reason}",
                             kind="System.UnauthorizedAccessException",
                             headers={"WWW-Authenticate": f"Bearer authorization_uri={self.sbx.authority}"
                                      f"/oauth2/authorize, resource_id={self.sbx.finops_url}"}) from None

    def default_company(self) -> str:
        """The caller's default company: `usmf` when it exists, else the first legal entity."""
        row = self.conn.execute("SELECT LegalEntityId FROM fo_legalentities "
                                "ORDER BY (LegalEntityId <> 'usmf'), LegalEntityId LIMIT 1").fetchone()
        return row[0].lower() if row else SYSTEM_COMPANY

    # --- dispatch -----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            self.authenticate(request)
            self._throttle_part(request)
            return await self._route(request, split_path(request.path_params.get("path", "")))
        except ODataError as exc:
            return error_response(exc)
        except Exception as exc:  # a sandbox bug still answers in the service's error shape
            log.exception("F&O %s %s failed", request.method, request.url.path)
            return error_response(ODataError(500, f"{type(exc).__name__}: {exc}", kind="System.Exception"))

    @staticmethod
    def _throttle_part(request: Request) -> None:
        """A part of a `$batch` the guard says to throttle gets F&O's 429, before it runs."""
        throttled = request.scope.get(PART_THROTTLE)
        if throttled is None or DMF_GROUPS in request.url.path:  # DMF is exempt from throttling
            return
        retry_after = throttled()
        if retry_after is not None:
            raise ODataError(429, FINOPS_THROTTLED, kind=THROTTLING_KIND,
                             headers={"Retry-After": str(retry_after)})

    async def _route(self, request: Request, segments: list[Segment]) -> Response:
        method = request.method
        if not segments:
            sets = [{"name": e.name, "kind": "EntitySet", "url": e.name} for e in FINOPS]
            return odata_response({"@odata.context": f"{self.root}$metadata", "value": sets})
        head, rest = segments[0], segments[1:]
        if head.name == DMF_GROUPS and head.key is None and len(rest) == 1:
            allow(method, "POST", request)
            return await self._dmf(request, rest[0].name)
        ent = entity(head.name, "finops")
        if ent is None:
            raise ODataError(404, f"Resource not found for the segment '{head.name}'.")
        cross = request.query_params.get("cross-company", "").lower() == "true"
        company = self.default_company()
        if head.key is None and not rest:
            allow(method, ("GET", "POST"), request)
            return self._list(request, ent, company, cross) if method == "GET" else \
                await self._create(request, ent, company)
        if head.key is None and len(rest) == 1 and rest[0].name == "$count":
            allow(method, "GET", request)
            q = parse_query(ent, {k: v for k, v in request.query_params.items() if k == "$filter"})
            self._scope(q, ent, company, cross)
            return odata_response(str(count_rows(self.conn, q)), media_type="text/plain")
        if head.key is not None and not rest:
            allow(method, ("GET", "PATCH", "PUT", "DELETE"), request)
            key = self._key(ent, head.key)
            row = self._find(ent, key, company, cross)
            if method == "GET":
                return self._retrieve(request, ent, key)
            if method == "DELETE":
                return self._delete(request, ent, key, row)
            return await self._update(request, ent, key, row)
        raise ODataError(404, f"Resource not found for the segment '{(rest or [head])[-1].name}'.")

    # --- helpers ------------------------------------------------------------------------------

    def _scope(self, q: Query, ent: Entity, company: str, cross: bool) -> None:
        if COMPANY in ent.columns and not cross:
            q.restrict(f"{quote(COMPANY)} = ?", [company])

    def _key(self, ent: Entity, text: str) -> dict[str, Any]:
        key = parse_key(ent, text)
        if isinstance(key.get(COMPANY), str):
            key[COMPANY] = key[COMPANY].lower()
        return key

    def _find(self, ent: Entity, key: dict[str, Any], company: str, cross: bool) -> dict[str, Any]:
        rows = self.store.find(ent, key, limit=1)
        # Without cross-company=true only the default company is visible, even by key.
        if not rows or (COMPANY in key and key[COMPANY] != company and not cross):
            described = ",".join(f"{k}='{v}'" for k, v in key.items())
            hint = ("" if cross or COMPANY not in key else
                    f" in company '{company}' (add ?cross-company=true for other companies)")
            raise ODataError(404, f"No {ent.logical_name} with key ({described}) was found{hint}.")
        return rows[0]

    def _url(self, ent: Entity, row: dict[str, Any]) -> str:
        parts = ",".join(f"{k}={_literal(row[k])}" for k in ent.key)
        return f"{self.root}{ent.name}({urlquote(parts, safe=KEY_SAFE)})"  # headers are latin-1

    def _context(self, ent: Entity, select: list[str] | None, suffix: str = "") -> str:
        return f"{self.root}$metadata#{ent.name}{'(' + ','.join(select) + ')' if select else ''}{suffix}"

    # --- reading ------------------------------------------------------------------------------

    def _list(self, request: Request, ent: Entity, company: str, cross: bool) -> Response:
        args = request.query_params
        q = parse_query(ent, args, allow_skip=True)
        self._scope(q, ent, company, cross)
        prefer = parse_prefer(request.headers.getlist("prefer"))
        size = page_size(prefer, MAX_PAGE)
        page = fetch_page(self.conn, q, q.select or list(ent.columns), size, etag_sql(ent))
        head: dict[str, Any] = {"@odata.context": self._context(ent, q.select)}
        if q.apply is not None:
            head["@odata.context"] = self._context(ent, [*q.apply.groupby, *q.apply.aggregates])
        if page.count is not None:
            head["@odata.count"] = page.count
        tail = {}
        if page.next_token:
            keep = [(k, v) for k, v in args.multi_items() if k != "$skiptoken"]
            link = query_string([*keep, ("$skiptoken", page.next_token)])
            tail["@odata.nextLink"] = f"{self.root}{ent.name}?{link}"
        return odata_response(collection_json(head, page.items, tail))

    def _retrieve(self, request: Request, ent: Entity, key: dict[str, Any]) -> Response:
        q = parse_query(ent, request.query_params, allow_skip=True)  # only $select applies
        return self._representation(ent, key, q.select, 200)

    def _representation(self, ent: Entity, key: dict[str, Any], select: list[str] | None, status: int,
                        headers: dict[str, str] | None = None) -> Response:
        text = fetch_one(self.conn, ent, key, select or list(ent.columns), etag_sql(ent))
        assert text is not None
        body = with_annotations({"@odata.context": self._context(ent, select, "/$entity")}, text)
        return odata_response(body, status, headers)

    # --- writing ------------------------------------------------------------------------------

    def _row(self, ent: Entity, body: dict[str, Any]) -> dict[str, Any]:
        cols = ent.columns
        row: dict[str, Any] = {}
        for name, value in body.items():
            if "@" in name:
                continue  # @odata.type and other annotations carry no data
            typ = cols.get(name)
            if typ is None:
                raise ODataError(400, f"The property '{name}' does not exist on type '{type_name(ent)}'. "
                                 "Make sure to only use property names that are defined by the type.")
            row[name] = coerce(ent, name, typ, value)
        if isinstance(row.get(COMPANY), str):
            row[COMPANY] = row[COMPANY].lower()
        return row

    def _hooks(self, ent: Entity, op: str, rows_of: Any) -> None:
        run_write_hooks(self.sbx.extras, lambda: WriteEvent(ent, op, rows_of))  # read if a hook asks

    async def _create(self, request: Request, ent: Entity, company: str) -> Response:
        body = await json_object(request)
        row = self._row(ent, body)
        if COMPANY in ent.columns:
            row.setdefault(COMPANY, company)
        with self.store.transaction():
            if ent.key == ("RecId",) and row.get("RecId") is None:
                (row["RecId"],) = self.conn.execute(
                    f"SELECT COALESCE(MAX(RecId), 5637144575) + 1 FROM {quote(ent.table)}").fetchone()
            fo_rules.validate(self.store, ent, row)
            try:
                self.store.insert_rows(ent, [row])
            except sqlite3.IntegrityError:
                described = ", ".join(f"{fo_rules.label(k)}: {row[k]}" for k in ent.key)
                raise fo_rules.write_error(ent, f"Error: Cannot create a record in {ent.name} "
                                           f"({ent.logical_name}). {described}. The record already exists.",
                                           500) from None
            key = {k: row[k] for k in ent.key}
            self._hooks(ent, "create", lambda: [self.store.get(ent, key)])
        return self._representation(ent, key, None, 201, {"Location": self._url(ent, key)})

    async def _update(
        self, request: Request, ent: Entity, key: dict[str, Any], existing: dict[str, Any]
    ) -> Response:
        body = await json_object(request)
        self._check_etag(request, ent, existing)
        changes = {k: v for k, v in self._row(ent, body).items() if k not in ent.key}
        pk = {k: existing[k] for k in ent.key}
        with self.store.transaction():
            fo_rules.validate(self.store, ent, {**existing, **changes})
            if changes:
                self.store.update_rows(ent, [(pk, changes)])
            self._hooks(ent, "update", lambda: [self.store.get(ent, pk)])
        return odata_response(None, 204)

    def _delete(
        self, request: Request, ent: Entity, key: dict[str, Any], existing: dict[str, Any]
    ) -> Response:
        self._check_etag(request, ent, existing)
        with self.store.transaction():
            self._hooks(ent, "delete", lambda: [existing])
            self.store.delete(ent, {k: existing[k] for k in ent.key})
        return odata_response(None, 204)

    def _check_etag(self, request: Request, ent: Entity, existing: dict[str, Any]) -> None:
        if_match = request.headers.get("if-match")
        if if_match is None:
            return
        version = self.store.recversion(ent, {k: existing[k] for k in ent.key})
        if version is None or not etag_matches(if_match, _etag(version)):
            raise ODataError(412, "The record has been changed since it was read: its ETag no longer matches "
                             "If-Match. Read it again and retry.")

    # --- DMF ----------------------------------------------------------------------------------

    async def _dmf(self, request: Request, action: str) -> Response:
        service = self.sbx.extras.get("dmf")
        if service is None:
            raise ODataError(404, f"Resource not found for the segment '{DMF_GROUPS}': the data management "
                             "package API is not enabled in this sandbox.")
        body = await json_object(request)
        try:
            result = service.call(action, body)
        except DmfError as exc:
            raise ODataError(exc.status, exc.message) from None
        return odata_response(result)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value)
