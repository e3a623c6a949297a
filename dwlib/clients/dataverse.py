"""Dataverse Web API v9.2: queries, rows, `$batch`, bulk messages and the dual-write reads.

Example:
    dv = DataverseClient(http, "https://contoso.crm.dynamics.com")
    dv.whoami()["UserId"]
    for row in dv.query("accounts", select=["name"], filter="statecode eq 0"): ...
    dv.update_multiple("accounts", [{"accountid": i, "description": "x"} for i in ids])
    >>> DataverseClient.API
    'api/data/v9.2'
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import httpx

from .bulk import BulkResult, Progress, run_chunks
from .errors import ClientError, HttpError, ResponseError
from .odata import Key, ODataService, key_segment, literal
from .odata_batch import Batch
from .pacing import Pacer

if TYPE_CHECKING:
    import pandas as pd

Row = dict[str, Any]
log = logging.getLogger(__name__)
AGGREGATE_LIMIT_EXCEEDED = "0x8004e023"  # AggregateQueryRecordLimit: an aggregate over > 50,000 rows
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")
_NOT_LINKED = "0x80048d0b"
MAX_BULK = 1000  # rows per CreateMultiple/UpdateMultiple/UpsertMultiple request
MAX_PAGE = 5000  # the service's page size, also its default
# "Message size exceeded when sending context to Sandbox": 116.65 MB (the page also says 116.85).
MAX_PAYLOAD_BYTES = 116_650_000
_JSON = {"Content-Type": "application/json"}
SOLUTION_COLUMNS = ("uniquename", "friendlyname", "version", "ismanaged", "installedon")


class TableNames(NamedTuple):
    """A table's logical name and primary id column, as EntityDefinitions gives them."""

    logical_name: str
    primary_id: str


class DataverseClient(ODataService):
    """A Dataverse environment's Web API; `http` carries the auth for the Dataverse audience.

    >>> DataverseClient(httpx.Client(), "https://org.crm.dynamics.com/").root
    'https://org.crm.dynamics.com/api/data/v9.2'
    """

    API = "api/data/v9.2"
    name = "Dataverse"
    max_payload_bytes = MAX_PAYLOAD_BYTES
    auth_fix = ("the app needs an application user with a security role in this environment "
                "(Power Platform admin center > Environment > Settings > Application users)")

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        *,
        page_size: int = 5000,
        concurrency: int = 4,
        batch_size: int = 1000,
        pacer: Pacer | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BULK:
            raise ValueError(f"batch_size must be 1..{MAX_BULK} (rows per bulk request), not {batch_size}")
        super().__init__(http, f"{url.rstrip('/')}/{self.API}")
        self.environment_url = url.rstrip("/")
        self.page_size = page_size
        self.concurrency = concurrency
        self.batch_size = batch_size
        # One per user and environment, as the service protection limits count: `concurrency` at most.
        self.pacer = pacer or Pacer(concurrency)
        self._tables: dict[str, TableNames] = {}
        self._messages: dict[tuple[str, str], bool] = {}  # (table, message) → available
        self._relationships: dict[str, list[tuple[str, str, str]]] = {}

    # --- reads -------------------------------------------------------------------------------------

    def whoami(self) -> Row:
        """`UserId`, `BusinessUnitId`, `OrganizationId` of the caller."""
        result: Row = self.json("GET", "WhoAmI")
        return result

    def pages_of(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        apply: str | None = None,
        expand: str | None = None,
        top: int | None = None,
        page_size: int | None = None,
    ) -> Iterator[list[Row]]:
        """Pages of a query (`odata.maxpagesize` ≤ 5000), following `@odata.nextLink`.

        A page size is asked for only below the service's own 5,000 (page-results.md), and never
        with `top`: the service ignores `$top` when both are sent, and the first `top` rows are
        what was asked for. `expand` is the `$expand` text, e.g. `primarycontactid($select=fullname)`.
        """
        params = {k: v for k, v in {
            "$select": ",".join(select) if select else None, "$filter": filter, "$orderby": orderby,
            "$apply": apply, "$expand": expand, "$top": str(top) if top is not None else None,
        }.items() if v is not None}
        size = min(page_size or self.page_size, MAX_PAGE)
        prefer = {} if top is not None or size == MAX_PAGE else {"Prefer": f"odata.maxpagesize={size}"}
        return self.pages(entity_set, params, prefer)

    def query(self, entity_set: str, **options: Any) -> Iterator[Row]:
        """Every row of a query, page after page (options as for `pages_of`)."""
        for page in self.pages_of(entity_set, **options):
            yield from page

    def dataframe(self, entity_set: str, **options: Any) -> pd.DataFrame:
        """A query as a pandas DataFrame, without the `@odata` annotations."""
        import pandas as pd  # imported on use: heavy, and only notebooks need it

        rows = self.query(entity_set, **options)
        return pd.DataFrame.from_records([{k: v for k, v in r.items() if k[0] != "@"} for r in rows])

    def get(self, entity_set: str, key: Key, *, select: Sequence[str] | None = None) -> Row:
        """One row by id or alternate key; `NotFoundError` when there is none."""
        params = {"$select": ",".join(select)} if select else None
        row: Row = self.json("GET", f"{entity_set}{key_segment(key)}", params=params)
        return row

    def count_by(
        self, entity_set: str, group_by: Sequence[str] = (), *, filter: str | None = None
    ) -> list[Row]:
        """Row counts (`count`) per combination of `group_by` columns (without any: one row with the
        total), of the rows `filter` keeps, ordered by the group columns (empty values first).

        The service aggregates (`$apply`) unless the rows are more than the 50,000 an aggregate
        may cover (it refuses with AggregateQueryRecordLimit, 0x8004E023): then the group columns
        are read in pages of 5,000 (`$select`) and counted here, one request per 5,000 rows. A
        group whose value is empty comes back from the service without that column
        (aggregate-data.md): it is reported with None.

        dv.count_by("accounts", ["_msdyn_company_value"], filter="customertypecode eq 3")
        [{"_msdyn_company_value": None, "count": 12}, {"_msdyn_company_value": "5f…", "count": 70211}]
        """
        aggregate = "aggregate($count as count)"
        steps = [f"filter({filter})"] if filter else []
        steps.append(f"groupby(({','.join(group_by)}),{aggregate})" if group_by else aggregate)
        counts: Counter[tuple[Any, ...]] = Counter()
        try:
            for row in self.query(entity_set, apply="/".join(steps)):
                n = row.get("count")
                if not isinstance(n, int) or isinstance(n, bool):
                    raise ResponseError("GET", self.url(entity_set), f"an aggregate row has no count: {row}")
                counts[tuple(row.get(c) for c in group_by)] += n
        except HttpError as exc:
            if exc.code.lower() != AGGREGATE_LIMIT_EXCEEDED:
                raise
            log.info("%s: more rows than an aggregate may cover; counting them page by page", entity_set)
            counts.clear()
            select = list(group_by) or [self.table(entity_set).primary_id]
            for page in self.pages_of(entity_set, select=select, filter=filter, page_size=5000):
                counts.update(tuple(row.get(c) for c in group_by) for row in page)
        ordered = sorted(counts.items(), key=lambda item: [(v is not None, v) for v in item[0]])
        return [{**dict(zip(group_by, values, strict=True)), "count": n} for values, n in ordered]

    def solutions(self, unique_names: Sequence[str] | None = None) -> list[Row]:
        """Installed solutions (all, or those with the given unique names)."""
        where = " or ".join(f"uniquename eq {literal(n)}" for n in unique_names or ())
        return list(self.query("solutions", select=SOLUTION_COLUMNS, filter=where or None))

    def version(self) -> str:
        """The environment's version (`RetrieveVersion` function), e.g. `9.2.24012.00206`."""
        result: Row = self.json("GET", "RetrieveVersion()")
        return str(result["Version"])

    def integration_details(self) -> Row:
        """`RetrieveFinanceAndOperationsIntegrationDetails`: linked F&O `Url`, `TenantId`, `Id`."""
        try:
            result: Row = self.json("GET", "RetrieveFinanceAndOperationsIntegrationDetails")
        except HttpError as exc:
            if exc.code != _NOT_LINKED:
                raise
            raise HttpError(exc.status, exc.code, exc.message, method=exc.method, url=exc.url,
                            request_id=exc.request_id,
                            fix="link the environments first: Power Platform integration in LCS for a new "
                                "F&O environment, or the Power Platform integration setup in F&O") from None
        return result

    def choices(self, logical_name: str, attribute: str) -> dict[int, str]:
        """The options of a choice (Picklist) column: value → label in the user's language, from
        its definition (retrieve-metadata-name-metadataid.md).

        dv.choices("account", "accountcategorycode")  ->  {1: 'Preferred Customer', 2: 'Standard'}
        """
        path = (f"EntityDefinitions(LogicalName={literal(logical_name)})/Attributes(LogicalName="
                f"{literal(attribute)})/Microsoft.Dynamics.CRM.PicklistAttributeMetadata")
        expand = "OptionSet($select=Options),GlobalOptionSet($select=Options)"
        response = self.send("GET", path, params={"$select": "LogicalName", "$expand": expand})
        body = self.decode(response)
        options = (body.get("OptionSet") or {}).get("Options") if isinstance(body, dict) else None
        try:
            return {int(o["Value"]): str((o["Label"].get("UserLocalizedLabel") or {}).get("Label", ""))
                    for o in options or ()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.unreadable(response, "an OptionSet without Options of Value and Label") from None

    # --- single-row writes -------------------------------------------------------------------------

    def create(self, entity_set: str, row: Mapping[str, Any]) -> str:
        """Create a row and return its id. Never repeated automatically (it could create twice)."""
        response = self.send("POST", entity_set, json=row, safe=False)
        found = _ENTITY_ID.search(response.headers.get("OData-EntityId", ""))
        if not found:
            raise self.unreadable(response, "the create answered without an OData-EntityId header")
        return found.group(1)

    def update(self, entity_set: str, key: Key, changes: Mapping[str, Any]) -> None:
        """Update an existing row (`If-Match: *`: never creates); `NotFoundError` if it is missing."""
        self.send("PATCH", f"{entity_set}{key_segment(key)}", json=changes, headers={"If-Match": "*"},
                  safe=True)

    def upsert(self, entity_set: str, key: Key, row: Mapping[str, Any]) -> None:
        """Create or update the row with this id or alternate key."""
        self.send("PATCH", f"{entity_set}{key_segment(key)}", json=row, safe=True)

    def batch(self) -> Batch:
        """A `$batch` builder for this environment (see `dwlib.clients.odata_batch`)."""
        return Batch(self)

    # --- bulk messages -----------------------------------------------------------------------------

    def create_multiple(self, entity_set: str, rows: Iterable[Mapping[str, Any]], **kw: Any) -> BulkResult:
        """CreateMultiple in chunks; `result.ids` in input order. Chunks are not repeated on failure."""
        return self._bulk("CreateMultiple", entity_set, rows, safe=False, **kw)

    def update_multiple(self, entity_set: str, rows: Iterable[Mapping[str, Any]], **kw: Any) -> BulkResult:
        """UpdateMultiple in chunks; each row carries its primary key column."""
        return self._bulk("UpdateMultiple", entity_set, rows, safe=True, **kw)

    def upsert_multiple(
        self, entity_set: str, rows: Iterable[Mapping[str, Any]], *, key: Sequence[str] | None = None,
        **kw: Any,
    ) -> BulkResult:
        """UpsertMultiple in chunks; with `key` (alternate key columns) each row is addressed by it."""
        if key:
            rows = (self._addressed(entity_set, row, key) for row in rows)
        return self._bulk("UpsertMultiple", entity_set, rows, safe=True, **kw)

    def table(self, entity_set: str) -> TableNames:
        """The table's logical name (for `@odata.type`) and primary id column, read once from
        EntityDefinitions.

        dv.table("accounts")  ->  TableNames(logical_name='account', primary_id='accountid')
        """
        if entity_set not in self._tables:
            found = list(self.query("EntityDefinitions", select=["LogicalName", "PrimaryIdAttribute"],
                                    filter=f"EntitySetName eq {literal(entity_set)}"))
            if not found:
                raise HttpError(404, "", f"no table has the entity set name {entity_set!r}", method="GET",
                                url=self.url("EntityDefinitions"), fix="check the entity set name")
            self._tables[entity_set] = TableNames(found[0]["LogicalName"], found[0]["PrimaryIdAttribute"])
        return self._tables[entity_set]

    def logical_name(self, entity_set: str) -> str:
        """The table's logical name (for `@odata.type`); see `table`."""
        return self.table(entity_set).logical_name

    def supports(self, logical_name: str, message: str) -> bool:
        """Whether the table takes `message` (`CreateMultiple`, …): one `sdkmessagefilters` read per
        table and message (bulk-operations.md, Availability with standard tables).

        dv.supports("account", "UpsertMultiple")  ->  True
        """
        key = (logical_name, message)
        if key not in self._messages:
            body = self.json("GET", "sdkmessagefilters", params={
                "$select": "sdkmessagefilterid",
                "$filter": "sdkmessageid/name eq @message and primaryobjecttypecode eq @table",
                "@message": literal(message), "@table": literal(logical_name)})
            rows = body.get("value") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise ResponseError("GET", self.url("sdkmessagefilters"), "no 'value' list in the answer")
            self._messages[key] = bool(rows)
        return self._messages[key]

    def navigation(self, entity_set: str, attribute: str, target: str) -> str:
        """The single-valued navigation property through which the lookup `attribute` of
        `entity_set` refers to a row of the table `target` (logical name), from the table's
        ManyToOneRelationships (ReferencingAttribute + ReferencedEntity), read once per table.

        A multi-table (Customer) lookup has one per table (`parentcustomerid` + `account` →
        `parentcustomerid_account`); a lookup with a single relationship answers it whatever the
        target (an Owner lookup takes users and teams through `ownerid`).

        dv.navigation("contacts", "parentcustomerid", "account")  ->  'parentcustomerid_account'
        """
        if entity_set not in self._relationships:
            logical = self.logical_name(entity_set)
            nav = "ReferencingEntityNavigationPropertyName"
            rows = self.query(f"EntityDefinitions(LogicalName={literal(logical)})/ManyToOneRelationships",
                              select=["ReferencingAttribute", "ReferencedEntity", nav])
            self._relationships[entity_set] = [(r["ReferencingAttribute"], r["ReferencedEntity"], r[nav])
                                               for r in rows]
        relationships = [r for r in self._relationships[entity_set] if r[0] == attribute]
        exact = [nav for _, referenced, nav in relationships if referenced == target]
        if len(exact) == 1 or len(relationships) == 1:
            return (exact or [relationships[0][2]])[0]
        known = ", ".join(f"{nav} → {referenced}" for _, referenced, nav in relationships) or "none"
        raise ClientError(f"{entity_set} has no lookup {attribute!r} to the table {target!r} "
                          f"(its relationships for {attribute!r}: {known})",
                          fix="check the lookup's logical name and target table in the table's definition "
                              "(Power Apps > Tables > Relationships)")

    def bind(self, entity_set: str, attribute: str, target_set: str, key: Key) -> dict[str, str]:
        """`{"<navigation property>@odata.bind": "/<target_set>(<key>)"}`, to set the lookup
        `attribute` of a row of `entity_set` to the row `key` of `target_set`.

        dv.bind("contacts", "parentcustomerid", "accounts", account_id)
        {'parentcustomerid_account@odata.bind': '/accounts(6f1b…)'}
        """
        nav = self.navigation(entity_set, attribute, self.logical_name(target_set))
        return {f"{nav}@odata.bind": f"/{target_set}{key_segment(key)}"}

    def _addressed(self, entity_set: str, row: Mapping[str, Any], key: Sequence[str]) -> Row:
        # The key goes in @odata.id only: repeating it in the body is refused by the service.
        body = {k: v for k, v in row.items() if k not in key}
        body["@odata.id"] = f"{entity_set}{key_segment({k: row[k] for k in key})}"
        return body

    def _bulk(
        self,
        message: Literal["CreateMultiple", "UpdateMultiple", "UpsertMultiple"],
        entity_set: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        safe: bool,
        progress: Progress | None = None,
        errors: Literal["raise", "collect"] = "raise",
        logical_name: str | None = None,
    ) -> BulkResult:
        logical = logical_name or self.logical_name(entity_set)
        if self.supports(logical, message):
            send = self._bulk_sender(message, entity_set, logical, safe)
        else:
            # Not every standard table takes the bulk messages (bulk-operations.md): the same rows go
            # as one $batch change set per chunk, all-or-nothing like the message.
            log.info("%s does not take %s: sending $batch change sets instead", entity_set, message)
            send = self._batch_sender(message, entity_set)
        return run_chunks(rows, send, chunk_size=self.batch_size, concurrency=self.concurrency,
                          progress=progress, errors=errors, what=f"{message} on {entity_set}")

    def _bulk_sender(self, message: str, entity_set: str, logical: str, safe: bool) -> Sender:
        odata_type = f"Microsoft.Dynamics.CRM.{logical}"
        path = f"{entity_set}/Microsoft.Dynamics.CRM.{message}"

        def send(chunk: list[Mapping[str, Any]]) -> list[str] | None:
            targets = [{"@odata.type": odata_type, **row} for row in chunk]
            # Encoded before a slot is taken, while other chunks are on the wire.
            body = json.dumps({"Targets": targets}).encode()
            if safe and len(body) > self.max_payload_bytes and len(chunk) > 1:
                # Over the payload a transaction may carry (refused once a plug-in, such as
                # dual-write's, is registered): two requests instead, each safe to repeat.
                half = len(chunk) // 2
                send(chunk[:half])
                return send(chunk[half:])
            response = self.send("POST", path, content=body, headers=_JSON, safe=safe)
            if message != "CreateMultiple":
                return None
            decoded = self.decode(response)
            ids = decoded.get("Ids") if isinstance(decoded, dict) else None
            if not isinstance(ids, list) or len(ids) != len(chunk):
                raise self.unreadable(response, f"CreateMultiple of {len(chunk)} rows answered without "
                                                f"{len(chunk)} Ids")
            return ids

        return send

    def _batch_sender(self, message: str, entity_set: str) -> Sender:
        def send(chunk: list[Mapping[str, Any]]) -> list[str] | None:
            batch = self.batch()
            with batch.changeset() as cs:
                for row in chunk:
                    if message == "CreateMultiple":
                        cs.create(entity_set, row)
                    else:
                        path, body = self._row_address(entity_set, row)
                        cs.update(path, body, if_match="*" if message == "UpdateMultiple" else None)
            parts = batch.execute()
            if message != "CreateMultiple":
                return None
            ids = [_ENTITY_ID.search(p.headers.get("odata-entityid", "")) for p in parts]
            return [found.group(1) for found in ids if found is not None]

        return send

    def _row_address(self, entity_set: str, row: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The path of a bulk target row (its `@odata.id`, else its primary key) and its other values."""
        body = dict(row)
        ref = body.pop("@odata.id", None)
        if ref is not None:
            return str(ref), body
        pk = self.table(entity_set).primary_id
        if pk not in body:
            raise ClientError(f"a row for {entity_set} has neither @odata.id nor its primary key {pk}: {row}",
                              fix=f"give each row its {pk}, or an alternate key (upsert_multiple(key=…))")
        return f"{entity_set}({body.pop(pk)})", body


Sender = Callable[[list[Mapping[str, Any]]], list[str] | None]
