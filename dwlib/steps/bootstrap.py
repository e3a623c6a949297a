"""Bootstrap: stamp existing Dataverse rows with their company before dual-write syncs them.

"Only rows that have company data are eligible for dual-write", so rows created before dual-write
(accounts, contacts, …) need their company lookup (`msdyn_company` → `cdm_company`) set. Like
Microsoft's FastTrack sample, the company follows the row's owning business unit through
`bootstrap.mapping` (business unit name → company code; the key "" serves tables without an owning
business unit). Only rows whose company is still empty are touched: the company "becomes
read-only once saved", and a re-run finds the stamped rows done.

- `bootstrap-simulate` reads everything and writes `bootstrap-simulation.csv`: every planned
  change and every row that cannot be mapped, with the reason. It never writes to Dataverse.
- `bootstrap-apply` (irreversible) re-derives the rows from the real state (not from the CSV, so a
  killed run resumes where it stopped) and stamps them with UpdateMultiple, `options.batch_size`
  rows per request and `options.concurrency` requests in flight. A request refused because of
  its rows is split until the refused rows are isolated; more failed rows than
  `bootstrap.max_failed_rows` stop the run. `bootstrap-applied.csv` (what changed, with the prior
  value) and `bootstrap-failed.csv` are appended chunk by chunk, so a killed run leaves an exact
  record of everything it was told succeeded.

Example:
    >>> # params: bootstrap: {mapping: {"Contoso US": USMF, "Contoso UK": GBSI}, tables: [accounts]}
    >>> # BootstrapSimulate().execute(ctx).counts      → {"accounts USMF": 40, "unmapped": 2, …}
    >>> # BootstrapApply().execute(ctx).evidence_files → [".../bootstrap-applied.csv"]
    >>> BootstrapApply.irreversible, BootstrapSimulate.read_only
    (True, True)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.clients.bulk import BulkResult, run_chunks
from dwlib.clients.errors import ClientError

from .base import Check, Finding, Status, Step, StepContext, StepError, StepResult, register
from .bulkwrite import AppendCsv, isolate, progress_of
from .dvmeta import Lookup, TableInfo, Tables
from .link import companies, environment, worst

if TYPE_CHECKING:
    from dwlib.clients.dataverse import DataverseClient

BOOTSTRAP_DOC = DOCS_ROOT + "bootstrap-company-data"
SIMULATION_CSV = "bootstrap-simulation.csv"
APPLIED_CSV = "bootstrap-applied.csv"
FAILED_CSV = "bootstrap-failed.csv"
UNMAPPED_CSV = "bootstrap-unmapped.csv"
OWNING_BU = "owningbusinessunit"
ADD_COMPANY_FIX = ("add the company to the dual-write connection first (dual-write workspace > Environment "
                   "details > Legal entities > Add legal entity; the add-company step), so that its "
                   "cdm_companies row exists, then run the bootstrap again")


@dataclass(frozen=True)
class RowChange:
    """One row of a bootstrapped table and its company (empty `company_code` when unmapped)."""

    table: str
    row_id: str
    key: str
    name: str
    owning_business_unit: str
    company_code: str
    company_id: str
    prior_company: str
    reason: str = ""  # why the row cannot be mapped

    COLUMNS = ("table", "row_id", "key", "name", "owning_business_unit", "company_code", "company_id",
               "prior_company", "reason")


FAILED_COLUMNS = (*RowChange.COLUMNS[:-1], "error", "remediation")


@dataclass(frozen=True)
class Target:
    """A table to stamp: its metadata and company lookup (navigation property and column)."""

    info: TableInfo
    nav: str
    lookup: Lookup


@dataclass
class BootstrapState:
    """What the real state says: rows to stamp, rows that cannot be mapped, and how it was read."""

    targets: dict[str, Target]
    stamps: list[RowChange]
    unmapped: list[RowChange]
    checks: list[Check] = field(default_factory=list)
    outcome: ApplyOutcome | None = None  # filled by bootstrap-apply's act

    def summary(self) -> str:
        """e.g. `stamp 294 rows (accounts USMF 80, …); 6 rows cannot be mapped`."""
        per = ", ".join(f"{k} {n}" for k, n in self.per_company().items())
        text = f"stamp {len(self.stamps)} rows with their company" + (f" ({per})" if per else "")
        return text + (f"; {len(self.unmapped)} rows cannot be mapped" if self.unmapped else "")

    def per_company(self) -> dict[str, int]:
        """Rows to stamp per `"<table> <company code>"`."""
        return dict(sorted(Counter(f"{s.table} {s.company_code}" for s in self.stamps).items()))

    def unmapped_table(self) -> list[dict[str, Any]]:
        """Unmapped rows grouped by table, business unit and reason."""
        groups = Counter((u.table, u.owning_business_unit, u.reason) for u in self.unmapped)
        return [{"table": t, "owning_business_unit": bu, "rows": n, "reason": r}
                for (t, bu, r), n in sorted(groups.items())]


def _key_columns(info: TableInfo) -> list[str]:
    """The natural key of the table's rows as dual-write matches them (catalogue integration keys)."""
    keys = [k for m in catalog.table_maps() if m.dataverse_table == info.entity_set for k in m.dataverse_key]
    return [k for k in dict.fromkeys(keys) if k in info.attributes]


def _target(tables: Tables, entity_set: str) -> Target:
    info = tables.info(entity_set)
    found = info.company_lookup()
    if found is None:
        raise StepError(f"table {entity_set} has no company lookup (msdyn_company → cdm_company): it is not "
                        "striped by company, so dual-write does not need it bootstrapped. Fix: remove it "
                        "from bootstrap.tables")
    return Target(info, *found)


def read_state(ctx: StepContext) -> BootstrapState:
    """Read business units, companies and every in-scope row whose company is empty.

    Raises StepError when the mapping is empty or names a company Dataverse does not have.
    """
    params, session, _ = environment(ctx)
    mapping = params.bootstrap.mapping
    if not mapping:
        raise StepError("bootstrap.mapping is empty: map each owning business unit to a company code, e.g. "
                        'bootstrap: {mapping: {"Contoso US": USMF}} ("" for tables without an owner)')
    dv = session.dataverse
    ids = {r["cdm_companycode"].upper(): r["cdm_companyid"] for r in companies(session)
           if r.get("cdm_companycode")}
    absent = sorted({code for code in mapping.values() if code not in ids})
    if absent:
        raise StepError(f"company {', '.join(absent)} of bootstrap.mapping has no cdm_companies row in "
                        f"Dataverse (it has {', '.join(sorted(ids)) or 'none'}). Fix: {ADD_COMPANY_FIX}")
    units = {r["businessunitid"]: r["name"]
             for r in dv.query("businessunits", select=["businessunitid", "name"])}
    checks = []
    unknown = sorted(set(mapping) - set(units.values()) - {""})
    if unknown:
        checks.append(Check("business units of the mapping", Status.WARNING,
                            f"not in Dataverse: {', '.join(unknown)}",
                            fix="check the names in bootstrap.mapping against Settings > Business units"))
    tables = Tables(dv)
    targets = {t: _target(tables, t) for t in params.bootstrap.tables}
    stamps: list[RowChange] = []
    unmapped: list[RowChange] = []
    for target in targets.values():
        for change in _changes(dv, target, units, mapping, ids):
            (stamps if change.company_code else unmapped).append(change)
    checks.append(Check("rows without a company", Status.PASSED,
                        f"{len(stamps) + len(unmapped)} rows in {', '.join(targets)} have an empty company: "
                        f"{len(stamps)} mapped, {len(unmapped)} cannot be mapped"))
    return BootstrapState(targets, stamps, unmapped, checks)


def _changes(dv: DataverseClient, target: Target, units: dict[str, str], mapping: dict[str, str],
             ids: dict[str, str]) -> Iterator[RowChange]:
    info = target.info
    keys = _key_columns(info)
    owned = OWNING_BU in info.attributes
    name = info.primary_name if info.primary_name in info.attributes else None
    select = [info.primary_id, target.lookup.column, *(["_owningbusinessunit_value"] if owned else []),
              *([name] if name else []), *keys]
    for row in dv.query(info.entity_set, select=list(dict.fromkeys(select)),
                        filter=f"{target.lookup.column} eq null"):
        unit = units.get(row.get("_owningbusinessunit_value") or "", "") if owned else ""
        code = mapping.get(unit)
        reason = ""
        if code is None:
            reason = (f"owning business unit '{unit}' is not in bootstrap.mapping" if owned else
                      'the table has no owning business unit and bootstrap.mapping has no "" entry')
        key = "|".join(str(row[k]) for k in keys if row.get(k))
        yield RowChange(info.entity_set, row[info.primary_id], key, str(row.get(name) or "") if name else "",
                        unit, code or "", ids.get(code or "", ""), str(row.get(target.lookup.column) or ""),
                        reason)


def _write_rows(ctx: StepContext, name: str, rows: Iterable[RowChange]) -> Path:
    return ctx.write_csv(name, (asdict(r) for r in rows), list(RowChange.COLUMNS))


def _unmapped_check(state: BootstrapState, csv_name: str) -> Check:
    if not state.unmapped:
        return Check("unmapped rows", Status.PASSED, "every row without a company is mapped")
    units = sorted({u.owning_business_unit or "(none)" for u in state.unmapped})
    return Check("unmapped rows", Status.WARNING,
                 f"{len(state.unmapped)} rows stay without a company (owning business units: "
                 f"{', '.join(units)}); listed in {csv_name}",
                 fix="map these business units in bootstrap.mapping if their rows belong to a company; "
                     "rows without a company are not synced by dual-write", doc=BOOTSTRAP_DOC)


@register
class BootstrapSimulate(Step):
    """Plan the company of every Dataverse row without one; writes a CSV, changes nothing.

    Example:
        >>> # r = BootstrapSimulate().execute(ctx)
        >>> # r.evidence_files → [".../bootstrap-simulation.csv"]; r.tables["planned"][0]
        >>> # {"table": "accounts", "company": "USMF", "rows": 40}
        >>> BootstrapSimulate.name
        'bootstrap-simulate'
    """

    name = "bootstrap-simulate"
    title = "Bootstrap company data: simulate"
    doc_url = BOOTSTRAP_DOC
    read_only = True

    def check(self, ctx: StepContext) -> Finding:
        state = read_state(ctx)
        return Finding(not state.stamps, state.summary(), todo=state, checks=state.checks)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step: execute never acts")

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        state: BootstrapState = finding.todo
        path = _write_rows(ctx, SIMULATION_CSV, [*state.stamps, *state.unmapped])
        checks = [*state.checks, _unmapped_check(state, path.name)]
        planned = [{"table": k.split(" ")[0], "company": k.split(" ")[1], "rows": n}
                   for k, n in state.per_company().items()]
        return self.result(
            worst(checks), f"simulation: would {state.summary()}; nothing was written",
            checks=checks, tables={"planned": planned, "unmapped": state.unmapped_table()},
            counts={**state.per_company(), "to stamp": len(state.stamps), "unmapped": len(state.unmapped)},
            evidence_files=[str(path)],
            next_action="review the CSV, then run bootstrap-apply" if state.stamps else "")


# --- apply ----------------------------------------------------------------------------------------

@dataclass
class ApplyOutcome:
    """What bootstrap-apply did: rows stamped (per table and company), rows failed, whether it stopped."""

    limit: int
    applied: AppendCsv
    failures: AppendCsv
    stamped: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def succeeded(self, rows: Sequence[RowChange]) -> None:
        self.applied.write(asdict(r) for r in rows)
        with self._lock:
            self.stamped.update(f"{r.table} {r.company_code}" for r in rows)

    def fault(self, rows: Sequence[RowChange], error: ClientError) -> None:
        known = catalog.match_error(str(error))
        fix = known.remediation() if known else error.fix
        self.failures.write({**asdict(r), "error": str(error), "remediation": fix} for r in rows)
        with self._lock:
            self.failed += len(rows)
            if len(self.errors) < 5:
                self.errors.append(str(error))
            if self.failed > self.limit:
                self.stop.set()

    def files(self) -> list[Path]:
        return [f.path for f in (self.applied, self.failures) if f.written]


def _stamper(dv: DataverseClient, target: Target, outcome: ApplyOutcome) -> Callable[[list[RowChange]], None]:
    """Sends one chunk of a table's rows with UpdateMultiple, isolating the refused rows."""
    info = target.info
    bind = f"{target.nav}@odata.bind"

    def update(chunk: list[RowChange]) -> BulkResult:
        bodies = [{info.primary_id: r.row_id, bind: f"cdm_companies({r.company_id})"} for r in chunk]
        return dv.update_multiple(info.entity_set, bodies, errors="collect", logical_name=info.logical_name)

    def send(chunk: list[RowChange]) -> None:
        isolate(update, chunk, done=outcome.succeeded, failed=outcome.fault, stop=outcome.stop)

    return send


def apply(ctx: StepContext, state: BootstrapState) -> ApplyOutcome:
    """Stamp `state.stamps` in bulk, table by table; stops past `bootstrap.max_failed_rows` failures."""
    params, session, _ = environment(ctx)
    outcome = ApplyOutcome(params.bootstrap.max_failed_rows,
                           AppendCsv(ctx.evidence_dir / APPLIED_CSV, RowChange.COLUMNS[:-1]),
                           AppendCsv(ctx.evidence_dir / FAILED_CSV, FAILED_COLUMNS))
    try:
        for table, target in state.targets.items():
            rows = [s for s in state.stamps if s.table == table]
            if not rows or outcome.stop.is_set():
                continue
            bar = ctx.progress(f"bootstrap {table}", len(rows))
            try:
                run_chunks((r for r in rows if not outcome.stop.is_set()),
                           _stamper(session.dataverse, target, outcome),
                           chunk_size=params.options.batch_size, concurrency=params.options.concurrency,
                           progress=progress_of(bar), what=f"bootstrap of {table}")
            finally:
                bar.close()
    finally:
        outcome.applied.close()
        outcome.failures.close()
    return outcome


@register
class BootstrapApply(Step):
    """Stamp the Dataverse rows without a company, in bulk, from the real state. Irreversible.

    Example:
        >>> # r = BootstrapApply().execute(ctx)   # WAITING until confirmed
        >>> # r.counts → {"stamped": 294, "failed": 0, "remaining": 0, "unmapped": 6, …}
        >>> BootstrapApply.name
        'bootstrap-apply'
    """

    name = "bootstrap-apply"
    title = "Bootstrap company data: apply"
    doc_url = BOOTSTRAP_DOC
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        state = read_state(ctx)
        return Finding(not state.stamps, state.summary(), todo=state,
                       checks=[*state.checks, *_running_maps(ctx, state)])

    def act(self, ctx: StepContext, finding: Finding) -> None:
        finding.todo.outcome = apply(ctx, finding.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        before: BootstrapState = finding.todo
        after = read_state(ctx)
        outcome = before.outcome
        unmapped = _write_rows(ctx, UNMAPPED_CSV, after.unmapped) if after.unmapped else None
        checks = [*finding.checks, _unmapped_check(after, UNMAPPED_CSV)]
        files = [str(p) for p in [*(outcome.files() if outcome else []), *([unmapped] if unmapped else [])]]
        stamped = sum(outcome.stamped.values()) if outcome else 0
        failed = outcome.failed if outcome else 0
        counts = {**(dict(sorted(outcome.stamped.items())) if outcome else {}), "stamped": stamped,
                  "failed": failed, "remaining": len(after.stamps), "unmapped": len(after.unmapped)}
        tables = {"remaining": [{"table": k.split(" ")[0], "company": k.split(" ")[1], "rows": n}
                                for k, n in after.per_company().items()],
                  "unmapped": after.unmapped_table()}
        if outcome and outcome.stop.is_set():
            checks.append(Check(
                "fault threshold", Status.FAILED,
                f"{failed} rows failed, more than bootstrap.max_failed_rows ({outcome.limit}); stopped with "
                f"{len(after.stamps)} rows left. First errors: " + " | ".join(outcome.errors[:3]),
                fix=f"read {FAILED_CSV} for each failed row and its error, fix the cause, then run "
                    "bootstrap-apply again (it picks up where it stopped)", doc=BOOTSTRAP_DOC))
            return self.result(Status.FAILED, f"stopped after {failed} failed rows (limit {outcome.limit}); "
                               f"{stamped} rows stamped, {len(after.stamps)} left; see {FAILED_CSV}",
                               checks=checks, tables=tables, counts=counts, evidence_files=files)
        if after.stamps:
            checks.append(Check("rows stamped", Status.FAILED,
                                f"{len(after.stamps)} mapped rows still have no company ({failed} failed)",
                                fix=f"read {FAILED_CSV}, fix the cause, and run bootstrap-apply again"))
        else:
            checks.append(Check("rows stamped", Status.PASSED,
                                f"{stamped} rows stamped; no mapped row is left without a company"))
        status = worst(checks)
        summary = (f"{len(after.stamps)} rows still without company; see {FAILED_CSV}" if after.stamps else
                   f"stamped {stamped} rows" + (f"; {len(after.unmapped)} unmapped rows stay without company"
                                                if after.unmapped else ""))
        return self.result(status, summary, checks=checks, tables=tables, counts=counts, evidence_files=files)


def _running_maps(ctx: StepContext, state: BootstrapState) -> list[Check]:
    """Evidence when maps over the bootstrapped tables run: live sync writes each stamped row to F&O.

    Not a warning: the scenarios that bootstrap after the maps run set the maps' column defaults
    first (map-defaults), and a row F&O still refuses is not stamped, so it fails the step below
    ("rows stamped") with F&O's error in bootstrap-failed.csv.
    """
    _, _, admin = environment(ctx)
    names = [m.name for m in catalog.table_maps() if m.dataverse_table in state.targets]
    running = sorted(n for n, s in admin.map_states(names).items()
                     if s.state in ("Running", "Paused", "Resuming"))
    if not running or not state.stamps:
        return []
    return [Check("table maps already running", Status.PASSED,
                  f"{', '.join(running)} run: live sync writes every stamped row to F&O; a row F&O refuses "
                  f"is not stamped and is listed in {FAILED_CSV} with F&O's error", doc=BOOTSTRAP_DOC)]
