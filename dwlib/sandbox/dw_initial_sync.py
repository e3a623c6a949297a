"""The initial sync (initial write) of one table map: a bidirectional copy per legal entity.

Rows only in F&O are created in Dataverse, rows only in Dataverse (eligible: company set, reversed
filter true) are created in F&O, and rows on both sides with competing values take the values of
the *master* side: the master decides conflicts only, never the direction. The documented limits
and errors apply (dualwrite-facts.md §5): at most 40 legal entities, 500,000 rows per legal
entity per run, more than 10 lookups fail the Dataverse export, single-threaded maps time out
pushing more than 70,000 rows into F&O, an F&O export taking longer than 5 minutes times out
(measured, plus the sandbox's `row_ms` a row), double quotes break parsing, references that do not
resolve fail their row. Rows that convert are written even when others fail (as DMF does); the
job keeps the total error count and the first five errors.

The copy is an async function that yields to the event loop between chunks, so the server keeps
answering while a job runs.

Example:
    >>> log = JobLog("exec-1", "Customers V3 (accounts)", "dataverse", top=5)
    >>> log.fail("boom"); log.record["status"], log.record["errorCount"]
    ('Error', 1)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dwlib import catalog
from dwlib.catalog.locales import Locale, locale

from .dmf_jobs import outcome
from .dw_limits import RuntimeLimits, elapsed_ms
from .dw_mapping import COMPANY, Company, MapBinding, Rejected, Resolver, binding, companies
from .schema import Entity
from .store import Store, quote, utcnow

CHUNK = 2000
Row = dict[str, Any]
FO_TO_DV = "From Dynamics 365 for Finance and Operations Entity to Dynamics 365 for Sales Entity"
DV_TO_FO = "From Dynamics 365 for Sales Entity to Dynamics 365 for Finance and Operations Entity"


def partition_error(project: str) -> str:
    """The documented text for too many legal entities (initial-sync-guidance.md)."""
    return (
        "Dual-write failure - Plugin registration failed: [(Unable to get partition map for project "
        f"{project}. Error Exceeds the maximum partitions allowed for mapping {project})], "
        "One or more errors occurred."
    )


LOOKUP_METADATA_ERROR = (
    "Unable to complete initial data sync. Error: dual-write failure - plugin registration failed: "
    "Unable to build dual-write lookup metadata. Error object reference not set to an instance of an object."
)


class JobLog:
    """The record of one initial-sync execution: per legal entity and leg counts, top errors."""

    def __init__(self, execution_id: str, map_name: str, master: str, *, top: int) -> None:
        self.top = top
        self.record: dict[str, Any] = {
            "executionId": execution_id,
            "map": map_name,
            "master": master,
            "status": "Executing",
            "submittedOn": utcnow(),
            "finishedOn": None,
            "legalEntities": [],
            "errors": [],
            "errorCount": 0,
            "upsertCount": 0,
            "details": "",
        }

    def entity(self, code: str) -> dict[str, Any]:
        """The per-legal-entity entry (created on first use), with both legs."""
        for le in self.record["legalEntities"]:
            if le["legalEntityId"] == code:
                return le
        le = {
            "legalEntityId": code,
            "status": "Executing",
            "errorCount": 0,
            "legs": {
                leg: {
                    "displayName": leg,
                    "exportRecordCount": 0,
                    "importRecordsInsertedCount": 0,
                    "importRecordsUpdatedCount": 0,
                    "importRecordsErrorCount": 0,
                    "status": "Executing",
                }
                for leg in (FO_TO_DV, DV_TO_FO)
            },
        }
        self.record["legalEntities"].append(le)
        return le

    def error(self, code: str, leg: str, message: str, record_id: str = "", field: str = "") -> None:
        """Count an error; keep it when it is among the first `top`."""
        self.record["errorCount"] += 1
        if code:
            le = self.entity(code)
            le["errorCount"] += 1
            le["legs"][leg]["importRecordsErrorCount"] += 1
            le["legs"][leg]["status"] = "Error"
        if len(self.record["errors"]) < self.top:
            self.record["errors"].append(
                {
                    "legalEntityId": code,
                    "leg": leg,
                    "recordId": record_id,
                    "sourceField": field,
                    "errorMessage": message,
                }
            )

    def fail(self, message: str, details: str = "") -> None:
        """The whole execution failed before copying anything."""
        self.error("", "", message)
        self.record["details"] = details
        self.finish()

    def finish(self) -> None:
        for le in self.record["legalEntities"]:
            for leg in le["legs"].values():
                leg["status"] = "Error" if leg["importRecordsErrorCount"] else "Completed"
            le["status"] = "Error" if le["errorCount"] else "Completed"
        self.record["status"] = "Error" if self.record["errorCount"] else "Completed"
        self.record["finishedOn"] = utcnow()

    @property
    def ok(self) -> bool:
        return self.record["status"] == "Completed"

    def dmf_job(self) -> dict[str, Any]:
        """The finished job as F&O's DMF job history keeps it (`dmf.job.<id>`, see dmf_jobs.py): the
        initial sync runs as DMF packages, and its FinOps job name is the execution id."""
        job = self.record
        legs = [leg for le in job["legalEntities"] for leg in le["legs"].values()]
        created = sum(leg["importRecordsInsertedCount"] for leg in legs)
        updated = sum(leg["importRecordsUpdatedCount"] for leg in legs)
        status = outcome(job["errorCount"], created + updated)
        return {
            "executionId": job["executionId"],
            "operation": "DualWriteInitialSync",
            "definitionGroupId": job["map"],
            "legalEntityId": ",".join(le["legalEntityId"] for le in job["legalEntities"]),
            "status": status,
            "createdOn": job["submittedOn"],
            "startedOn": job["submittedOn"],
            "finishedOn": job["finishedOn"],
            "entities": {job["map"]: {"status": status, "created": created, "updated": updated,
                                      "errors": job["errorCount"]}},
            "errorCount": job["errorCount"],
            "errors": [{"EntityName": job["map"], "LineNumber": 0, "RecordKey": e["recordId"],
                        "ErrorMessage": e["errorMessage"]} for e in job["errors"]],
        }


@dataclass
class SyncScope:
    """What one run covers: the connection's legal entities and the maps already running."""

    store: Store
    dataverse_url: str
    limits: RuntimeLimits
    legal_entities: list[str]
    running: set[str]
    project: str
    on_company_created: Callable[[dict[str, Any]], object] | None = None
    export_locale: Locale = field(default_factory=lambda: locale("en-us"))  # of the F&O export (DMF)


def _rows(store: Store, ent: Entity, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        Store.from_db(ent, r) for r in store.query(f"SELECT * FROM {quote(ent.table)} WHERE {where}", params)
    ]


def _has_quote(row: dict[str, Any], columns: Iterable[str]) -> bool:
    return any(isinstance(row.get(c), str) and '"' in row[c] for c in columns)


def decimal_literal_error(b: MapBinding, fo_row: dict[str, Any], loc: Locale) -> Rejected | None:
    """The documented failure of a number the F&O export wrote in another locale than en-us: the
    Dataverse leg reads the package's numbers as Edm.Decimal literals (INFERRED from the
    troubleshooting page, whose example is a zero written '000000'; its fix is Language locale en-us).

    >>> from dwlib import catalog
    >>> b = binding(catalog.table_map("Customers V3 (accounts)"))
    >>> decimal_literal_error(b, {"CreditLimit": 1500.5}, locale("nl-NL")).message.split(": ")[-1]
    "Can't convert the literal '1500,5' to the expected type'Edm.Decimal',..."
    """
    if loc.decimal == "." or b.fo is None:
        return None
    for x in b.bindings:
        value = fo_row.get(x.finops or "")
        if x.to_dataverse and x.finops and b.fo.columns.get(x.finops) == "decimal" and value is not None:
            literal = loc.format_number(value)
            if loc.decimal in literal:
                return Rejected("An error occurred while validating input parameters: "
                                "Microsoft.OData.ODataException: Can't convert the literal "
                                f"'{literal}' to the expected type'Edm.Decimal',...", x.finops)
    return None


def _parse_error(leg: str, line: int) -> str:
    return (
        f"Initial writes failed while parsing the data for leg:{leg} - Legal Entity. Message: "
        f"Type=Microsoft.VisualBasic.FileIO.MalformedLineException, Msg=Line {line} cannot be parsed "
        "using the current Delimiters."
    )


def export_timeout(le_name: str, entity: str, export_ms: float, limit_ms: int) -> str:
    """An F&O export that took longer than an initial sync waits (initial-sync-guidance.md gives
    the limit, not the text).

    >>> export_timeout("USMF", "CustCustomerV3Entity", 301500, 300000)[-64:]
    'took 301.5 seconds: an export longer than 300 seconds times out.'
    """
    return (f"Initial writes failed for leg:{FO_TO_DV} - Legal Entity {le_name}. The finance and operations "
            f"data export of {entity} took {export_ms / 1000:.1f} seconds: an export longer than "
            f"{limit_ms / 1000:g} seconds times out.")


def _lookup_error(scope: SyncScope, b: MapBinding, company: Company | None) -> str:
    # What the Dataverse export leg asks for: every mapped column of the company's rows.
    cols = [x.dataverse or (x.lookup.fk if x.lookup else "") for x in b.bindings if x.to_finops]
    company_filter = f"(msdyn_company/cdm_companyid eq '{company.id}')" if company else ""
    return (
        "CRMExport: Package execution complete. Error Description 5 Attempts to get data from "
        f"{scope.dataverse_url}/api/data/v9.2/{b.dv.name}?$select={', '.join(c for c in cols if c)}"
        f"&$filter={company_filter}&$orderby={b.dv_key} asc failed."
    )


async def _chunked(items: list[Any], write: Callable[[list[Any]], object]) -> None:
    for start in range(0, len(items), CHUNK):
        write(items[start : start + CHUNK])
        await asyncio.sleep(0)


async def initial_sync(scope: SyncScope, m: catalog.TableMap, log: JobLog) -> bool:
    """Run the initial write of map `m` over `scope`; the outcome is in `log`. True when Completed."""
    lim = scope.limits
    if len(scope.legal_entities) > lim.initial_sync_legal_entities:
        log.fail(
            partition_error(scope.project),
            f"{len(scope.legal_entities)} legal entities; initial sync supports "
            f"{lim.initial_sync_legal_entities}",
        )
        return False
    missing = [d for d in m.depends_on if d not in scope.running]
    if missing:
        log.fail(LOOKUP_METADATA_ERROR, "maps this map depends on are not running: " + ", ".join(missing))
        return False
    b = binding(m)
    if b.has_data:
        comps = companies(scope.store)
        codes = scope.legal_entities if m.company_specific else [""]
        for code in codes:
            company = comps.get(code.lower()) if code else None
            if code and company is None:
                log.error(
                    code,
                    FO_TO_DV,
                    f"Legal entity {code} has no cdm_company row in Dataverse; "
                    "run the Legal entities (cdm_companies) map first.",
                )
                continue
            await _sync_scope(scope, b, code, company, log)
    log.finish()
    return log.ok


async def _sync_scope(
    scope: SyncScope, b: MapBinding, code: str, company: Company | None, log: JobLog
) -> None:
    assert b.fo is not None
    fo = b.fo
    store, lim, master = scope.store, scope.limits, log.record["master"]
    le_name = code or "(all)"
    entry = log.entity(le_name)
    export_started = time.perf_counter()
    if code:
        fo_all = _rows(store, b.fo, '"dataAreaId" = ?', [company.data_area if company else code.lower()])
        dv_all = _rows(store, b.dv, f"{quote(COMPANY)} = ?", [company.id if company else None])
    else:
        fo_all = _rows(store, b.fo, "1", [])
        dv_all = _rows(store, b.dv, "1", [])
        if b.dv.name == "cdm_companies":  # the Legal entities map covers the connection's companies
            wanted = {c.lower() for c in scope.legal_entities}
            fo_all = [r for r in fo_all if str(r.get(b.fo_key, "")).lower() in wanted]
            dv_all = [r for r in dv_all if str(r.get(b.dv_key, "")).lower() in wanted]
    fo_rows = [r for r in fo_all if b.fo_eligible(r)]
    export_ms = elapsed_ms(time.perf_counter() - export_started, rows=len(fo_rows), lim=lim)
    writes_to_fo = any(x.to_finops and x.finops for x in b.bindings if x.dataverse or x.lookup)
    dv_rows = [r for r in dv_all if b.dv_eligible(r)] if writes_to_fo else []
    entry["legs"][FO_TO_DV]["exportRecordCount"] = len(fo_rows)
    entry["legs"][DV_TO_FO]["exportRecordCount"] = len(dv_rows)

    if dv_rows and b.map.lookup_count >= lim.failing_lookups:
        log.error(le_name, DV_TO_FO, _lookup_error(scope, b, company))
        return
    for leg, rows in ((FO_TO_DV, fo_rows), (DV_TO_FO, dv_rows)):
        if len(rows) > lim.initial_sync_rows_per_legal_entity:
            log.error(
                le_name,
                leg,
                f"Initial sync of {le_name} has {len(rows):,} rows in {b.map.name}: more than "
                f"the limit of {lim.initial_sync_rows_per_legal_entity:,} rows per legal entity per run.",
            )
            return
    fo_text = [x.finops for x in b.bindings if x.to_dataverse and x.finops]
    dv_text = [x.dataverse for x in b.bindings if x.to_finops and x.dataverse]
    fo_ok, dv_ok = True, True
    if fo_rows and export_ms > lim.initial_sync_export_ms:
        log.error(le_name, FO_TO_DV, export_timeout(le_name, b.map.finops_data_entity, export_ms,
                                                    lim.initial_sync_export_ms))
        fo_ok = False  # nothing exported: the leg writes nothing
    for line, r in enumerate(fo_rows if fo_ok else [], start=2):  # line 1 of the file is the header
        if _has_quote(r, fo_text):
            log.error(le_name, FO_TO_DV, _parse_error(FO_TO_DV, line), r[b.fo_key])
            fo_ok = False
            break
    for line, r in enumerate(dv_rows, start=2):
        if _has_quote(r, dv_text):
            log.error(le_name, DV_TO_FO, _parse_error(DV_TO_FO, line), r[b.dv_key])
            dv_ok = False
            break

    resolver = Resolver(store, scope.dataverse_url, bulk=True)
    fo_by_key = {b.key(r[b.fo_key]): r for r in fo_rows}
    dv_by_key = {b.key(r[b.dv_key]): r for r in dv_rows}
    # Rows outside the filters still own their key: a write must update them, not collide.
    fo_index = {b.key(r[b.fo_key]): r for r in fo_all if r.get(b.fo_key)}
    dv_index = {b.key(r[b.dv_key]): r for r in dv_all if r.get(b.dv_key)}
    data_area = company.data_area if company else None

    def reject(leg: str, row_key: Any, exc: Rejected) -> None:
        log.error(le_name, leg, exc.message, str(row_key), exc.field)

    dv_inserts, dv_updates = _writes(
        FO_TO_DV, fo_by_key if fo_ok else {}, dv_index,
        contested=dv_by_key, target_is_master=master == "dataverse",
        differs=lambda fo_row, dv_row: b.differs(fo_row, dv_row, resolver),
        convert=lambda fo_row, _: _from_export(b, fo_row, scope.export_locale, company, resolver),
        address=lambda dv_row: {b.dv.key[0]: dv_row[b.dv.key[0]]},
        reject=lambda fo_row, exc: reject(FO_TO_DV, fo_row[b.fo_key], exc),
    )
    fo_inserts, fo_updates = _writes(
        DV_TO_FO, dv_by_key if dv_ok else {}, fo_index,
        contested=fo_by_key, target_is_master=master == "finops",
        differs=lambda dv_row, fo_row: b.differs(fo_row, dv_row, resolver),
        convert=lambda dv_row, fo_row: b.to_finops(dv_row, data_area, resolver, fo_row),
        address=lambda fo_row: {c: fo_row[c] for c in fo.key},
        reject=lambda dv_row, exc: reject(DV_TO_FO, dv_row[b.dv_key], exc),
    )
    if (
        b.map.single_threaded
        and len(fo_inserts) + len(fo_updates) > lim.single_threaded_dataverse_to_finops_rows
    ):
        log.error(
            le_name,
            DV_TO_FO,
            f"The import into finance and operations did not complete within 24 hours: "
            f"{len(fo_inserts) + len(fo_updates):,} rows of the single-threaded map {b.map.name} "
            f"(more than {lim.single_threaded_dataverse_to_finops_rows:,}).",
        )
        fo_inserts, fo_updates = [], []

    legs = entry["legs"]
    await _chunked(dv_inserts, lambda part: _insert_dv(scope, b, part))
    await _chunked(dv_updates, lambda part: store.update_rows(b.dv, part))
    await _chunked(fo_inserts, lambda part: store.insert_rows(fo, part))
    await _chunked(fo_updates, lambda part: store.update_rows(fo, part))
    legs[FO_TO_DV]["importRecordsInsertedCount"] += len(dv_inserts)
    legs[FO_TO_DV]["importRecordsUpdatedCount"] += len(dv_updates)
    legs[DV_TO_FO]["importRecordsInsertedCount"] += len(fo_inserts)
    legs[DV_TO_FO]["importRecordsUpdatedCount"] += len(fo_updates)
    log.record["upsertCount"] += len(dv_inserts) + len(dv_updates) + len(fo_inserts) + len(fo_updates)


def _from_export(b: MapBinding, fo_row: Row, loc: Locale, company: Company | None, resolver: Resolver) -> Row:
    """An F&O row as the Dataverse leg reads it from the export: refused when a number does not read."""
    problem = decimal_literal_error(b, fo_row, loc)
    if problem is not None:
        raise problem
    return b.to_dataverse(fo_row, company, resolver)


def _writes(
    leg: str,
    sources: dict[str, Row],
    targets: dict[str, Row],
    *,
    contested: dict[str, Row],
    target_is_master: bool,
    differs: Callable[[Row, Row], bool],
    convert: Callable[[Row, Row | None], Row],
    address: Callable[[Row], Row],
    reject: Callable[[Row, Rejected], None],
) -> tuple[list[Row], list[tuple[Row, Row]]]:
    """One leg's writes: source rows (by key) missing on the target side are inserted, differing ones
    updated; a conflict on a row the target side exports too is left to the master's leg.
    Returns (inserts, updates as (target key, values)); rows `convert` rejects go to `reject`."""
    inserts: list[Row] = []
    updates: list[tuple[Row, Row]] = []
    for k, row in sources.items():
        target = targets.get(k)
        if target is not None and (not differs(row, target) or (k in contested and target_is_master)):
            continue  # equal, or a conflict the master (the target side) wins on the other leg
        try:
            values = convert(row, target)
        except Rejected as exc:
            reject(row, exc)
            continue
        if target is None:
            inserts.append(values)
        else:
            updates.append((address(target), values))
    return inserts, updates


def _insert_dv(scope: SyncScope, b: MapBinding, rows: list[dict[str, Any]]) -> None:
    stored = scope.store.insert_rows(b.dv, rows)
    if b.dv.name == "cdm_companies" and scope.on_company_created is not None:
        for row in stored:
            scope.on_company_created(row)
