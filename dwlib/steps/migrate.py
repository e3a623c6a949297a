"""Migrate: move a map's data outside the initial sync, for the maps the plan marks "migrate".

"Initial sync guidance" names it for large volumes (and it is the way around the other limits of
the initial sync, e.g. double quotes in the data): migrate each side separately, then "Activate
dual-write, and skip the initial synchronization" — the table-maps step does that part. No map may
run while its data is migrated outside the initial sync (live sync would race the migration and
the rows written while a company was outside the connection would never cross), so a map to
migrate that is Running (e.g. started by the LCS link) is stopped first (`admin.stop`, a portal
gate) and left Not running for table-maps to run skipping the initial sync. Per map (in dependency
order, so the rows a lookup needs are there first) and legal entity:

- F&O → Dataverse: the F&O data project `migrate.export_project` exports the company's rows
  (DMF package; one export serves the maps of one F&O entity, e.g. Customers V3's two); rows
  missing in Dataverse are created with UpsertMultiple, rows on both sides with other values are
  updated when F&O is the map's master. New rows get an id derived from map,
  company and key, so a repeated or resumed run can never create a row twice.
- Dataverse → F&O: rows missing in F&O (or, with Dataverse as master, differing) are written into
  a package with the export's manifest and imported with `migrate.import_project`.

Every mapped column moves, in its direction(s), value maps applied (`rowmap`). Package numbers and
dates are read and written in the Language locale of the package's source data format, read from
F&O (Data management > Source data formats): an nl-NL package's `1234,5` is 1234.5. A value that
is not a number or date in that locale fails the step with the documented fix (Language locale
en-us, "Troubleshoot issues during initial synchronization").

A company can hold most of a table (a million customers), so neither side is held in memory: the
package is read row by row from the zip and the Dataverse rows page by page into temporary files,
sorted by key (`spill`), which pair them; the rows to write go there too, and are streamed to
UpsertMultiple and into the import package.

Eligibility, keys and counts are those of verify (`reconcile`): the step is done when the keys
of every migrated map reconcile per company, whatever the maps' states (a finished run has them
Running again), and a re-run finds it so; only maps with rows to move are stopped. Evidence:
`migrate.csv` (every row written, its key, direction and outcome) and the packages under
`migrate/`.

Example:
    plan marks Customers V3 (accounts) "migrate" (e.g. > 70,000 rows in one legal entity)
    r = Migrate().execute(ctx); r.tables["reconciliation"] → one row per map and company
    >>> Migrate.name
    'migrate'
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.catalog.locales import LOCALE_DOC, LocaleError
from dwlib.clients.bulk import run_chunks
from dwlib.clients.dmf import ExecutionStatus
from dwlib.clients.errors import ClientError, DmfError
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .plan import PlanRow, plan_companies, plan_of
from .support.bulkwrite import AppendCsv, isolate, progress_of
from .support.dmf_package import FormatLocale, Package, format_locale, package_head, package_rows
from .support.dvmeta import Tables
from .support.reconcile import GLOBAL, Reconciliation, company_clause, company_ids, reconcile
from .support.rowmap import Lookups, RowMap
from .support.spill import Spill

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Params

MIGRATE_DOC = DOCS_ROOT + "initial-sync-guidance"
MIGRATE_CSV = "migrate.csv"
COLUMNS = ("map", "company", "direction", "key", "operation", "row_id", "status", "error")
TO_DATAVERSE, TO_FINOPS = "F&O → Dataverse", "Dataverse → F&O"
MAX_DMF_JOBS = 16  # DMF jobs waited for at once (each wait is a status poll every few seconds)
READ_AHEAD = 2  # companies read (package and Dataverse rows, into their spill files) ahead of the one moved
_IDS = uuid.UUID("5b1c7c1e-3f5d-4c47-9d0e-7a4e1c2b9f10")  # namespace of the ids of migrated rows


T = TypeVar("T")
Outgoing = tuple[str, dict[str, Any], str]  # a row to write: key, values, create | update


@dataclass
class MigrateOutcome:
    """What act did, for verify: rows per direction, lookups not found, DMF errors, failed rows."""

    written: Counter[str] = field(default_factory=Counter)  # "<map> <direction>" → rows
    unresolved: Counter[str] = field(default_factory=Counter)  # "<map>: <lookup value>" → rows
    dmf_errors: list[str] = field(default_factory=list)
    failed: int = 0
    skipped_columns: dict[str, list[str]] = field(default_factory=dict)
    locales: dict[str, FormatLocale] = field(default_factory=dict)  # source data format → its locale
    stop: threading.Event = field(default_factory=threading.Event)  # never set: every row is tried
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str, rows: int, *, failed: bool = False) -> None:
        """Add `rows` written (or failed) under `key` (called from the bulk threads)."""
        with self._lock:
            if failed:
                self.failed += rows
            else:
                self.written[key] += rows


@dataclass
class MigrateWork:
    """The check's finding: the maps to migrate, their reconciliation before, the Running ones
    with rows to move (stopped before the migration)."""

    maps: list[PlanRow]
    before: list[Reconciliation]
    stop: list[str] = field(default_factory=list)
    outcome: MigrateOutcome = field(default_factory=MigrateOutcome)


def row_id(map_id: str, company: str, key: str) -> str:
    """The id a migrated row gets in Dataverse: the same for the same map, company and key.

    >>> row_id("customers-v3-accounts", "USMF", "US-001") == row_id("customers-v3-accounts", "usmf", "us-001")
    True
    """
    return str(uuid.uuid5(_IDS, f"{map_id}|{company.lower()}|{key.lower()}"))


def _maps_to_migrate(ctx: StepContext) -> list[PlanRow]:
    return [r for r in plan_of(ctx) if r.migrated]


def _to_stop(admin: DualWriteAdmin, maps: Sequence[str]) -> list[str]:
    """The maps of `maps` (with rows to move) that run and must stop first; StepError for a map in
    a state Stop is not available in (Paused, Resuming, Initializing)."""
    states = admin.map_states(maps)
    busy = [f"{n} is {states[n].state}" for n in maps
            if states[n].state not in (MapState.RUNNING, MapState.NOT_RUNNING)]
    if busy:
        raise StepError(f"cannot migrate while {'; '.join(busy)}: no map may run while its data is "
                        "migrated, and Stop is available only for Running maps. Resume a Paused map "
                        "(catch up) or wait until an initial sync ends, then run migrate again (it stops "
                        "the Running maps itself)")
    return [n for n in maps if states[n].state == MapState.RUNNING]


@dataclass
class _Prepared:
    """One company's export beside its Dataverse rows, read ahead of its move: both sides' rows by
    key in `spill` (tables "fo" and "dv"), on disk, not in memory (a company can hold most of a
    table); the rows to write go there too ("to_dv", "to_fo")."""

    package: Package  # the export's header, manifest and fields (its rows are in `spill`)
    locale: FormatLocale
    rowmap: RowMap
    spill: Spill


@dataclass
class _Run:
    """What the movers of one migration share."""

    ctx: StepContext
    params: Params
    session: Session
    codes: list[str]  # the legal entities migrated (the plan's)
    tables: Tables
    lookups: Lookups
    log: AppendCsv
    outcome: MigrateOutcome
    spills: list[Spill] = field(default_factory=list)  # every company's, closed when the step ends

    def locale_of(self, source_format: str) -> FormatLocale:
        """The locale of a source data format's packages, read from F&O once per run."""
        known = self.outcome.locales
        if source_format not in known:
            known[source_format] = format_locale(self.session.finops, source_format)
        return known[source_format]


class _Mover:
    """Moves one map's rows, legal entity by legal entity, in both directions."""

    def __init__(self, run: _Run, row: PlanRow) -> None:
        self.params, self.session, self.ctx = run.params, run.session, run.ctx
        self.codes, self.tables, self.lookups = run.codes, run.tables, run.lookups
        self.log, self.outcome = run.log, run.outcome
        self.run = run
        self.row = row
        self.map = catalog.table_map(row.name)

    def companies(self, ids: dict[str, str]) -> list[tuple[str, str, str]]:
        """(DMF legal entity, reconciliation company, cdm_companyid) per company of the map: one
        GLOBAL entry, exported in any legal entity, for a global map."""
        if not self.map.company_specific:
            return [(self.codes[0], GLOBAL, "")]
        return [(code, code, ids[code.upper()]) for code in self.codes if code.upper() in ids]

    def export_key(self, code: str) -> tuple[str, str]:
        """What the company's export is: (data project, legal entity). Maps of one F&O entity
        (Customers V3 for accounts and for contacts) share it: one export serves both."""
        entity_set = self.map.finops_entity_set or ""
        return self.params.migrate.export_project.format(entity=entity_set), code.upper()

    def export(self, code: str) -> tuple[str, Path]:
        """Start the company's export: its job id and where its package goes (`finish_export`)."""
        project, _ = self.export_key(code)
        entity_set = (self.map.finops_entity_set or "").lower()
        dest = self.ctx.evidence_dir / "migrate" / f"{entity_set}-{code.lower()}-export.zip"
        return self.session.dmf.start_export(project, dest.stem, legal_entity=code), dest

    def finish_export(self, execution_id: str, dest: Path) -> Path:
        """The export's package, downloaded once the job is done (read only when its company's
        turn comes: a table's packages in memory together would be the whole table)."""
        return self.session.dmf.finish_export(execution_id, dest)

    def prepare(self, path: Path, company_id: str) -> _Prepared:
        """The company's package beside its Dataverse rows, streamed into a spill file by key: what
        `move` compares (thread-safe, so the next company is read while this one is written)."""
        pkg = package_head(path, self.map.finops_entity)
        fmt = self.run.locale_of(pkg.source_format)
        info = self.tables.info(self.map.dataverse_table)
        rm = RowMap(self.map, info, self.tables, pkg.fields, self.lookups,
                    self.params.column_defaults(self.map.name), fmt.locale)
        spill = Spill()
        self.run.spills.append(spill)
        # The connection's legal entities only, of cdm_companies.
        wanted = {c.lower() for c in self.codes} if self.map.dataverse_table == "cdm_companies" else None
        spill.put("fo", ((r[rm.finops_key].lower(), r) for r in package_rows(path, pkg)
                         if rm.finops_eligible(r) and (wanted is None or r[rm.finops_key].lower() in wanted)))
        spill.put("dv", ((str(r[rm.dataverse_key]).lower(), r) for r in self._dataverse_rows(rm, company_id)))
        return _Prepared(pkg, fmt, rm, spill)

    def finops_side(self, prepared: _Prepared, code: str, company: str) -> int:
        """Put the company's rows missing (or, by the map's master, differing) in F&O into the
        spill's "to_fo"; return how many (to import). Done before the Dataverse side, so the
        import, whose queue is the longest wait, starts as early as it can.

        `code`: the legal entity DMF works in; `company`: the reconciliation's company (GLOBAL for
        global maps)."""
        self.outcome.skipped_columns[self.map.name] = prepared.rowmap.skipped
        try:
            return prepared.spill.add("to_fo", self._to_finops(prepared, code))
        except LocaleError as exc:
            raise prepared.locale.locale_error(exc, f"{self.map.name} {company}") from None

    def dataverse_side(self, prepared: _Prepared, company: str, company_id: str,
                       writer: ThreadPoolExecutor) -> Future[None] | None:
        """Hand the company's rows missing (or, by the map's master, differing) in Dataverse to
        `writer` (through the spill's "to_dv"); the write's future, None when there is none.

        `company_id`: the company's cdm_companyid ("" for global maps)."""
        spill = prepared.spill
        try:
            to_dv = spill.add("to_dv", self._to_dataverse(prepared, company, company_id))
        except LocaleError as exc:
            raise prepared.locale.locale_error(exc, f"{self.map.name} {company}") from None
        info = prepared.rowmap.info
        return writer.submit(self._upsert, info.entity_set, info.logical_name, company, spill, to_dv) \
            if to_dv else None

    def _to_dataverse(self, prepared: _Prepared, company: str, company_id: str) -> Iterator[Outgoing]:
        rm = prepared.rowmap
        info = rm.info
        master = self.row.master
        # A row on both sides moves only when F&O's values win: else only the missing ones are read.
        for key, fo, existing in prepared.spill.pairs("fo", "dv", unmatched=master != "finops"):
            values, missing = rm.to_dataverse(fo, company_id)
            if existing is not None and not rm.dataverse_differs(values, existing):
                continue
            self.outcome.unresolved.update(f"{self.map.name}: {m}" for m in missing)
            if existing is None:
                values[info.primary_id] = row_id(self.map.id, company, key)
                if rm.company:
                    values[f"{rm.company[0]}@odata.bind"] = f"cdm_companies({company_id})"
                yield fo[rm.finops_key], values, "create"
            else:
                values = rm.for_update(values, existing)
                values[info.primary_id] = existing[info.primary_id]
                yield fo[rm.finops_key], values, "update"

    def _to_finops(self, prepared: _Prepared, code: str) -> Iterator[Outgoing]:
        rm, pkg = prepared.rowmap, prepared.package
        master = self.row.master
        # A row on both sides moves only when Dataverse's values win.
        for _, dv, existing_fo in prepared.spill.pairs("dv", "fo", unmatched=master != "dataverse"):
            values, missing = rm.to_finops(dv)
            if existing_fo is not None and not rm.finops_differs(values, existing_fo):
                continue
            self.outcome.unresolved.update(f"{self.map.name}: {m}" for m in missing)
            if "DATAAREAID" in pkg.fields and self.map.company_specific:
                values["DATAAREAID"] = code.lower()
            yield str(dv[rm.dataverse_key]), values, "create" if existing_fo is None else "update"

    def _dataverse_rows(self, rm: RowMap, company_id: str) -> Iterator[dict[str, Any]]:
        clauses = [f"({self.map.dataverse_filter})"] if self.map.dataverse_filter else []
        if rm.company:
            clauses.append(company_clause(company_id))
        rows = self.session.dataverse.query(self.map.dataverse_table, select=rm.dataverse_select(),
                                            filter=" and ".join(clauses) or None)
        return (r for r in rows if r.get(rm.dataverse_key) not in (None, ""))

    def _upsert(self, entity_set: str, logical: str, company: str, spill: Spill, total: int) -> None:
        """Write the spill's "to_dv" rows (`total` of them), streamed from it chunk by chunk."""
        if not total:
            return
        rows = (tuple(r) for r in spill.listed("to_dv"))
        dv = self.session.dataverse
        name = self.map.name
        pk = self.tables.info(entity_set).primary_id

        def send(chunk: list[tuple[str, dict[str, Any], str]]) -> Any:
            return dv.upsert_multiple(entity_set, [v for _, v, _ in chunk], errors="collect",
                                      logical_name=logical)

        def done(chunk: list[tuple[str, dict[str, Any], str]]) -> None:
            self.log.write({"map": name, "company": company, "direction": TO_DATAVERSE, "key": k,
                            "operation": op, "row_id": v[pk], "status": "written"} for k, v, op in chunk)
            self.outcome.count(f"{name} {TO_DATAVERSE}", len(chunk))

        def failed(chunk: list[tuple[str, dict[str, Any], str]], error: ClientError) -> None:
            self.log.write({"map": name, "company": company, "direction": TO_DATAVERSE, "key": k,
                            "operation": op, "status": StepStatus.FAILED, "error": str(error)}
                           for k, _, op in chunk)
            self.outcome.count(name, len(chunk), failed=True)

        bar = self.ctx.progress(f"migrate {name} {company} → Dataverse", total)
        try:
            run_chunks(rows,
                       lambda chunk: isolate(send, chunk, done=done, failed=failed, stop=self.outcome.stop),
                       chunk_size=self.params.options.batch_size, concurrency=self.params.options.concurrency,
                       progress=progress_of(bar), what=f"migration of {name}")
        finally:
            bar.close()

    def package(self, pkg: Package, code: str, spill: Spill) -> Path:
        """The spill's "to_fo" rows written (streamed) into a package with the export's manifest, to
        import into the company."""
        name = f"dw-migrate-{self.map.id}-{code.lower()}-{uuid.uuid4().hex[:8]}.zip"
        return pkg.write(self.ctx.evidence_dir / "migrate" / name, (v for _, v, _ in spill.listed("to_fo")))

    def import_rows(self, path: Path, code: str, company: str, rows: Iterable[tuple[str, str]]) -> list[str]:
        """Import the package at `path` (`rows`: its keys and operations) into the company; returns
        the job's errors (thread-safe)."""
        dmf = self.session.dmf
        name = path.name
        project = self.params.migrate.import_project.format(entity=self.map.finops_entity_set or "")
        url = dmf.write_url(name)
        dmf.upload(url, path)
        execution = dmf.start_import(url, project, legal_entity=code)
        try:
            status: str = dmf.wait(execution)
            errors = dmf.execution_errors(execution) if status != ExecutionStatus.SUCCEEDED else []
        except DmfError as exc:
            status, errors = exc.status or "Failed", exc.errors
        self.log.write({"map": self.map.name, "company": company, "direction": TO_FINOPS, "key": k,
                        "operation": op, "status": f"DMF import {execution} {status}"} for k, op in rows)
        return [f"{self.map.name} {company}: {e}" for e in errors]


def _import_keys(spill: Spill) -> Iterator[tuple[str, str]]:
    """The keys and operations of the rows to import (the spill's "to_fo"), for the log."""
    return ((k, op) for k, _, op in spill.listed("to_fo"))


def _once_set(event: threading.Event, rows: Callable[[], Iterable[T]]) -> Iterator[T]:
    """`rows()`, called once `event` is set (by the thread that still writes what they read).

    >>> e = threading.Event(); it = _once_set(e, lambda: [1, 2]); e.set(); list(it)
    [1, 2]
    """
    event.wait()
    yield from rows()


@register
class Migrate(Step):
    """Migrate the data of the maps the plan marks "migrate", both ways, outside the initial sync.

    Example:
        Migrate().execute(ctx).counts → {"Customers V3 (accounts) F&O → Dataverse": 120, …}
        >>> Migrate.title
        'Migrate data outside the initial sync'
    """

    name = "migrate"
    title = "Migrate data outside the initial sync"
    doc_url = MIGRATE_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        maps = _maps_to_migrate(ctx)
        if not maps:
            return Finding(True, "no map needs migration", todo=MigrateWork([], []))
        before = reconcile(session, [m.name for m in maps], plan_companies(params, company_ids(session)))
        open_ = [r for r in before if not r.ok]
        opened = {r.map for r in open_}
        stop = _to_stop(admin, [m.name for m in maps if m.name in opened]) if open_ else []
        to_dv = sum(len(r.missing_in_dataverse) for r in open_)
        to_fo = sum(len(r.missing_in_finops) for r in open_)
        names = ", ".join(m.name for m in maps)
        summary = f"migrate {to_dv} rows into Dataverse and {to_fo} into F&O ({names})"
        if stop:
            summary = f"stop {', '.join(stop)} (no map runs while its data is migrated), then {summary}"
        return Finding(not open_, summary, todo=MigrateWork(maps, before, stop))

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, session, admin = environment(ctx)
        work: MigrateWork = finding.todo
        out = work.outcome
        if work.stop:
            admin.stop(work.stop)  # a portal gate; verified Not running before any row moves
        open_ = {(r.map, r.company) for r in work.before if not r.ok}
        ids = company_ids(session)
        codes = plan_companies(params, ids)
        log = AppendCsv(ctx.evidence_dir / MIGRATE_CSV, COLUMNS)
        run = _Run(ctx, params, session, codes, Tables(session.dataverse), Lookups(session.dataverse), log,
                   out)
        movers = {r.name: _Mover(run, r) for r in work.maps}
        # (map, DMF legal entity, reconciliation company, cdm_companyid), in dependency order
        pairs = [(r.name, code, company, company_id) for r in work.maps
                 for code, company, company_id in movers[r.name].companies(ids) if (r.name, company) in open_]
        # DMF jobs are waited for by polling: all exports start at once and the maps are moved in
        # dependency order as their exports arrive. Per company, three things overlap: the next
        # companies' packages and Dataverse rows are read (`reader`, up to READ_AHEAD companies
        # ahead, into files: it need not wait for the comparing; it may read the next map's rows
        # while this map's are written: the two maps that share a table, contacts, filter on
        # msdyn_sellable true and false), this one's rows are compared and
        # converted (here), the previous one's are written to Dataverse (`writer`, one company at a
        # time, each through the bulk path's own concurrency); imports into F&O run beside them. A
        # map's writes end before the next map is compared, so its lookups find the rows written.
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_DMF_JOBS, len(pairs))),
                                thread_name_prefix="dw-dmf") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="dw-read") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="dw-write") as writer:
            started: dict[tuple[str, str], Future[Path]] = {}
            for name, code, _, _ in pairs:  # one export per data project and company
                if (key := movers[name].export_key(code)) not in started:
                    # Started here one by one, so F&O runs them in the order they are needed.
                    started[key] = pool.submit(movers[name].finish_export, *movers[name].export(code))
            exports = [started[movers[name].export_key(code)] for name, code, _, _ in pairs]

            def prepared(i: int) -> Future[_Prepared]:
                name, _, _, company_id = pairs[i]
                return reader.submit(lambda: movers[name].prepare(exports[i].result(), company_id))

            def imported(after: list[Future[list[str]]], *args: Any) -> list[str]:
                for job in after:  # the previous map's rows are in F&O first (its lookups need them)
                    job.result()
                return movers[args[0]].import_rows(*args[1:])

            ahead = deque(prepared(i) for i in range(min(READ_AHEAD + 1, len(pairs))))
            jobs: list[Future[list[str]]] = []
            chain: list[Future[list[str]]] = []  # the imports the next map's imports wait for
            try:
                for row in work.maps:
                    mine: list[Future[list[str]]] = []
                    writes: list[Future[None]] = []
                    for i, (name, code, company, company_id) in enumerate(pairs):
                        if name != row.name:
                            continue
                        current = ahead.popleft().result()
                        if i + READ_AHEAD + 1 < len(pairs):
                            ahead.append(prepared(i + READ_AHEAD + 1))
                        mover, spill = movers[name], current.spill
                        # The import's log reads the spill once the Dataverse side is in it too.
                        compared = threading.Event()
                        to_fo = mover.finops_side(current, code, company)
                        if to_fo:
                            path = mover.package(current.package, code, spill)
                            keys = _once_set(compared, partial(_import_keys, spill))
                            mine.append(pool.submit(imported, chain, name, path, code, company, keys))
                            out.written[f"{name} {TO_FINOPS}"] += to_fo
                        try:
                            written = mover.dataverse_side(current, company, company_id, writer)
                        finally:
                            compared.set()
                        writes += [written] if written else []
                        del current
                    for write in writes:
                        write.result()
                    if writes:
                        run.lookups.forget(catalog.table_map(row.name).dataverse_table)
                    # The next map's Dataverse side goes on while this map's imports run; its own
                    # imports wait for them, so F&O gets the maps in dependency order.
                    jobs += mine
                    chain = mine or chain
                for job in jobs:
                    out.dmf_errors += job.result()
            finally:
                for export in exports:
                    export.cancel()
                log.close()
                for spill in run.spills:  # the temporary files of the companies' rows
                    spill.close()
                run.lookups.close()

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, admin = environment(ctx)
        work: MigrateWork = finding.todo
        if not work.maps:
            return self.result(StepStatus.PASSED, "no map needs migration",
                               checks=[Check("plan", StepStatus.PASSED, "the plan marks no map 'migrate'")])
        after = reconcile(session, [m.name for m in work.maps], plan_companies(params, company_ids(session)))
        out = work.outcome
        checks = [_reconciled(r) for r in after]
        if work.stop:
            checks += [_stopped(n, s.state) for n, s in admin.map_states(work.stop).items()]
        if out.unresolved:
            top = "; ".join(f"{k} ({n})" for k, n in out.unresolved.most_common(5))
            checks.append(Check("values not converted", StepStatus.WARNING,
                                f"{sum(out.unresolved.values())} values had no row to refer to or no "
                                f"entry in the map's value map, left empty: {top}",
                                fix="migrate or create the referenced rows (or correct the values), then "
                                    "run migrate again", doc=MIGRATE_DOC))
        for fmt in out.locales.values():
            checks.append(Check(f"package locale ({fmt.source_format})",
                                StepStatus.WARNING if fmt.note else StepStatus.PASSED,
                                f"numbers and dates read and written in {fmt.locale.name}"
                                + (f": {fmt.note}" if fmt.note else ", the format's Language locale"),
                                doc=LOCALE_DOC))
        for error in out.dmf_errors[:5]:
            known = catalog.match_error(error)
            checks.append(Check("F&O import error", StepStatus.FAILED, error,
                                fix=known.remediation() if known else "fix the row in Dataverse, then run "
                                "migrate again (Data management > Job history shows every error)"))
        skipped = [f"{m}: {c}" for m, cols in out.skipped_columns.items() for c in cols]
        if skipped:
            checks.append(Check("column rows not migrated", StepStatus.PASSED, "; ".join(skipped)))
        status = worst(checks)
        files = [str(p) for p in (ctx.evidence_dir / MIGRATE_CSV,) if p.exists()]
        counts = {**dict(out.written), "failed": out.failed,
                  "missing": sum(len(r.missing_in_dataverse) + len(r.missing_in_finops) for r in after)}
        bad = [r for r in after if not r.ok]
        summary = (f"{len(bad)} of {len(after)} map/company pairs do not reconcile" if bad else
                   f"migrated {', '.join(m.name for m in work.maps)}: keys reconcile in every company")
        return self.result(status, summary, checks=checks, counts=counts, evidence_files=files,
                           tables={"reconciliation": [r.row() for r in after]},
                           next_action="table-maps enables these maps skipping the initial sync" if not bad
                           else "")


def _stopped(name: str, state: str) -> Check:
    """A map stopped for the migration must still be Not running (table-maps runs it next)."""
    if state == MapState.NOT_RUNNING:
        return Check(f"{name}: stopped for the migration", StepStatus.PASSED,
                     "Not running: table-maps runs it skipping the initial sync")
    return Check(f"{name}: stopped for the migration", StepStatus.FAILED,
                 f"{state} again during the migration",
                 fix="stop the map (Stop in the table map list) and run migrate again; table-maps runs it "
                     "afterwards skipping the initial sync", doc=MIGRATE_DOC)


def _reconciled(r: Reconciliation) -> Check:
    row = r.row()
    evidence = f"F&O {r.finops_rows}, Dataverse {r.dataverse_rows}"
    if r.ok:
        return Check(f"{r.map} {r.company}", StepStatus.PASSED, evidence)
    parts = [evidence,
             f"missing in Dataverse {row['missing_in_dataverse']} ({row['sample_missing_in_dataverse']})",
             f"missing in F&O {row['missing_in_finops']} ({row['sample_missing_in_finops']})",
             *([f"{r.duplicates} duplicate keys"] if r.duplicates else []), *([r.note] if r.note else [])]
    return Check(f"{r.map} {r.company}", StepStatus.FAILED, "; ".join(parts),
                 fix=f"read {MIGRATE_CSV} and the F&O import errors, fix the rows, then run migrate again",
                 doc=MIGRATE_DOC)
