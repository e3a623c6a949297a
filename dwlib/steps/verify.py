"""Verify the setup: reconcile counts, keys and values per company per map, then a live round trip.

Reconciliation covers the maps whose data the run moved (initial sync or migration): per company,
the rows dual-write syncs on each side (e.g. Customers V3 (accounts): F&O CustomersV3 with
PartyType Organization per dataAreaId against Dataverse accounts with `customertypecode eq 3` per
`msdyn_company`; Customers V3 (contacts): persons against sellable contacts; Legal entities
against `cdm_companies`; customer groups, terms of payment, currencies …). Values are compared
too: a checksum per side of every two-way mapped column (value maps applied, lookups by the key
of the row they refer to, numbers by value, text trimmed), computed page by page; when they
differ, a sample of the differing rows with both sides' values. The table shows the counts on
both sides, how many keys each side misses (with a sample), the checksums, how many rows differ
and a status per row; `verify-missing-keys.csv` lists every missing key,
`verify-differences.csv` the differing rows found (one line per column, both values),
`verify-reconciliation.csv` the table. Existing Dataverse rows that dual-write will not pick up (no
company, no key, outside the map's filter: `eligibility`) are counted per table, company and reason
and listed in `verify-ineligible-rows.csv`; they make the step a WARNING with the fix.

The live round trip (`dwlib.steps.support.roundtrip`) then creates a customer in F&O, waits for it in
Dataverse, changes it there, waits for the change in F&O, and deletes it on both sides. Those are
writes into the environments: against real ones (no `sandbox:`) the step waits for the run's
confirmation first, as irreversible steps do (`Step.confirmation`); a dry run never makes it. It runs
once per pair of environments (`verify.round_trip: once`, remembered in
`<runs dir>/.dw-state/round-trips.json`: the runs directory's own state, in a hidden folder so
nothing takes it for a run record), so a re-run of a finished runbook writes nothing; `always`
repeats it, `never` skips it. What a round trip killed before its clean-up left behind (its `DWRT-…`
customer, its temporary customer group) is deleted first, and the reconciliation made again without
it; with `never` it is only reported.

Example:
    result = Verify().execute(ctx)
    result.tables["reconciliation"][0]  → {'map': …, 'company': 'USMF', 'finops_rows': 40, …}
    result.evidence_files               → ['…/verify-reconciliation.csv', '…/verify-missing-keys.csv']
    >>> Verify.name
    'verify'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwlib.catalog.errors import DOCS_ROOT
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .initialsync import sync_companies
from .link import scope
from .support import eligibility
from .support.dvmeta import Tables
from .support.reconcile import Reconciliation, Values, company_ids, reconcile
from .support.roundtrip import ACCOUNTS, PREFIX, Leftover, RoundTrip, clean_up_leftover, leftovers, round_trip
from .support.rowmap import Lookups
from .tablemaps import planned_maps

if TYPE_CHECKING:
    from dwlib.params import Params

TROUBLESHOOT_DOC = DOCS_ROOT + "dual-write-troubleshooting-initial-sync"
STATE_DIR = ".dw-state"  # state of the runs directory that is not a run record
MARKER = "round-trips.json"
COLUMNS = ["map", "company", "finops_rows", "dataverse_rows", "missing_in_dataverse", "missing_in_finops",
           "sample_missing_in_dataverse", "sample_missing_in_finops", "columns_compared", "differing_rows",
           "sample_differing", "finops_checksum", "dataverse_checksum", "status", "note"]
DIFFERENCES_CSV = "verify-differences.csv"
INELIGIBLE_CSV = "verify-ineligible-rows.csv"
DIFFERENCE_COLUMNS = ["map", "company", "key", "column", "finops_value", "dataverse_value"]


@dataclass
class VerifyWork:
    """The finding: the reconciliation, and the round trip to make (None: none to make, and why)."""

    rows: list[Reconciliation]
    company: str | None
    company_id: str | None
    why_not: str = ""
    maps: list[str] = field(default_factory=list)  # the plan's maps (their tables are scanned)
    companies: list[str] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)  # the run's companies in the connection
    trip: RoundTrip | None = None
    notes: list[Check] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)  # of earlier round trips, to clean up
    ids: dict[str, str] = field(default_factory=dict)  # company code → cdm_companyid
    reconciled: list[str] = field(default_factory=list)  # the maps that moved data (reconciled)
    values: Values | None = None  # how the mapped columns' values are compared


def round_trips_file(ctx: StepContext) -> Path:
    """Where the round trips that passed are remembered, per pair of environments.

    >>> round_trips_file(StepContext.bare(Path("/runs/run-1-evidence")))
    PosixPath('/runs/.dw-state/round-trips.json')
    """
    return ctx.evidence_dir.parent / STATE_DIR / MARKER


def _environments(params: Params) -> str:
    return f"{params.environments.dataverse_url} {params.environments.finops_url}"


def _earlier_trip(ctx: StepContext, params: Params) -> dict[str, Any] | None:
    try:
        trips: dict[str, dict[str, Any]] = json.loads(round_trips_file(ctx).read_text())
        return trips.get(_environments(params))
    except (OSError, ValueError):
        return None


def _remember_trip(ctx: StepContext, params: Params, trip: RoundTrip) -> None:
    path = round_trips_file(ctx)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[_environments(params)] = {"company": trip.company, "account": trip.account,
                                    "passed_on": datetime.now(UTC).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2))


def _differing(column: str, finops: str, dataverse: str) -> str:
    return f"{column} F&O {finops or '(empty)'} ≠ Dataverse {dataverse or '(empty)'}"


def _trip_company(ctx: StepContext, companies: list[str], ids: dict[str, str]) -> str:
    params, session, _ = environment(ctx)
    linked = [c for c in companies if c in ids]
    wanted = params.verify.company
    if wanted is not None:
        if wanted not in linked:
            raise StepError(f"verify.company {wanted} is not a company of the dual-write connection in "
                            f"scope ({', '.join(linked) or 'none'}): choose one of them, or leave it null")
        return wanted
    for code in linked:
        if next(iter(session.finops.query("CustomerGroups", select=["CustomerGroupId"], company=code,
                                          top=1)), None):
            return code
    if not linked:
        raise StepError("no company of the run is in Dataverse (cdm_companies): run the link and "
                        "legal-entities steps first")
    return linked[0]


@register
class Verify(Step):
    """Reconcile counts and keys per company per map on both sides; live round trip, cleaned up.

    FAILS when counts or keys differ (with the fix and the CSV of missing keys) or when a direction
    of the round trip fails (naming it).

    Example:
        Verify().execute(ctx).counts  → {'rows_checked': 10, 'rows_failed': 0, 'missing_keys': 0, …}
        >>> Verify.title
        'Verify: reconcile both sides and a live round trip'
    """

    name = "verify"
    title = "Verify: reconcile both sides and a live round trip"
    doc_url = TROUBLESHOOT_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        plan = planned_maps(ctx)
        connected = sync_companies(ctx)
        companies = connected
        if self.options.get("companies") == "added":  # add-legal-entity: the added companies only
            companies = [c for c in connected if c in scope(params).created]
        values = Values(Tables(session.dataverse), Lookups(session.dataverse), params.column_defaults,
                        params.verify.sample_keys)
        reconciled = [p.name for p in plan if p.moves_data]
        rows = reconcile(session, reconciled, companies, values=values)
        failing = [r for r in rows if not r.ok]
        checks = [Check("reconciliation", StepStatus.FAILED if failing else StepStatus.PASSED,
                        f"{len(rows) - len(failing)} of {len(rows)} map × company rows reconcile (counts, "
                        "keys and the checksums of the mapped columns' values)")]
        work = VerifyWork(rows, None, None, maps=[p.name for p in plan], companies=list(companies),
                          ids=company_ids(session), reconciled=reconciled, values=values, connected=connected)
        mode = params.verify.round_trip
        work.leftovers = leftovers(session, work.ids)
        if work.leftovers and mode == "never":
            work.notes.append(Check("earlier round trips", StepStatus.WARNING,
                                    "left behind by a round trip that was stopped: "
                                    + "; ".join(map(str, work.leftovers)),
                                    fix="delete them by hand, or run verify with verify.round_trip: once, "
                                        "which deletes them first"))
            work.leftovers = []
        earlier = _earlier_trip(ctx, params) if mode == "once" else None
        enabled = {p.name for p in plan}
        if mode == "never":
            work.why_not = "off (verify.round_trip: never)"
        elif ACCOUNTS not in enabled:
            work.why_not = f"not possible: the plan does not enable {ACCOUNTS}"
            work.notes.append(Check("round trip", StepStatus.WARNING, work.why_not,
                                    fix=f"enable {ACCOUNTS} to prove live sync end to end"))
        elif earlier is not None:
            work.why_not = (f"passed on {earlier['passed_on']} in {earlier['company']} "
                            f"({earlier['account']}, cleaned up)")
            work.notes.append(Check("round trip", StepStatus.PASSED, work.why_not))
        elif admin.map_states([ACCOUNTS])[ACCOUNTS].state != MapState.RUNNING:
            work.notes.append(Check("round trip", StepStatus.FAILED, f"{ACCOUNTS} is not Running",
                                    fix="run the table-maps step first"))
            work.why_not = f"{ACCOUNTS} is not Running"
        else:
            work.company = _trip_company(ctx, companies, work.ids)
            work.company_id = work.ids[work.company]
        summary = (f"live round trip in {work.company} (create in F&O, change in Dataverse, clean up)"
                   if work.company else f"reconcile only; round trip {work.why_not}")
        if work.leftovers:
            summary = f"delete what earlier round trips left ({len(work.leftovers)}), then {summary}"
        return Finding(work.company is None and not work.leftovers, summary, todo=work,
                       checks=checks + work.notes)

    def confirmation(self, ctx: StepContext, finding: Finding) -> str:
        """The round trip writes into both environments: against real ones, like every other write
        the runbook asks about, it waits for the run's confirmation; a local sandbox is disposable."""
        params, _, _ = environment(ctx)
        work: VerifyWork = finding.todo
        if params.sandbox is not None:
            return ""
        if work.company is None:
            left = "; ".join(map(str, work.leftovers))
            return (f"Round trips that were stopped left test data ({PREFIX}-…) behind; it is deleted "
                    f"on both sides: {left}" if left else "")
        return (f"The live round trip writes into both environments: a test customer ({PREFIX}-…) is created "
                f"in finance and operations company {work.company}, changed in Dataverse, then deleted on "
                "both sides, and live sync hands it to whatever else listens there (plug-ins, flows, "
                "integrations). To reconcile only, set verify.round_trip: never.")

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, session, _ = environment(ctx)
        work: VerifyWork = finding.todo
        timing = {"timeout_s": params.verify.timeout_s, "poll_s": params.verify.poll_s}
        if work.leftovers:
            work.notes += [clean_up_leftover(session, left, work.ids[left.company], **timing)
                           for left in work.leftovers]
            # They were counted on both sides: reconcile again without them.
            work.rows = reconcile(session, work.reconciled, work.companies, values=work.values)
        if work.company is None:
            return
        assert work.company_id is not None
        work.trip = round_trip(session, work.company, work.company_id, **timing)
        if work.trip.ok:
            _remember_trip(ctx, params, work.trip)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, _ = environment(ctx)
        work: VerifyWork = finding.todo
        sample = params.verify.sample_keys
        table = [r.row(sample) for r in work.rows]
        recon_csv = ctx.write_csv("verify-reconciliation.csv", [r.row(sample) for r in work.rows], COLUMNS)
        missing_csv = ctx.write_csv("verify-missing-keys.csv",
                                    (m for r in work.rows for m in r.missing_rows()),
                                    ["map", "company", "missing_in", "key"])
        differences_csv = ctx.write_csv(DIFFERENCES_CSV, (x for r in work.rows for d in r.differences
                                                          for x in d.rows()), DIFFERENCE_COLUMNS)
        found, ineligible_csv = eligibility.report(ctx, session, work.maps, work.connected, INELIGIBLE_CSV)
        failing = [r for r in work.rows if not r.ok]
        checks = [self._row_check(r, missing_csv, differences_csv) for r in failing]
        checks += found.checks(ineligible_csv)
        checks += work.notes + (work.trip.stages if work.trip else [])
        if not work.rows:
            checks.append(Check("reconciliation", StepStatus.PASSED,
                                "no map moved data (maps went live with skip initial sync): nothing to "
                                "reconcile"))
        status = worst(checks)
        counts = {"rows_checked": len(work.rows), "rows_failed": len(failing),
                  "missing_keys": sum(len(r.missing_in_dataverse) + len(r.missing_in_finops)
                                      for r in work.rows),
                  "differing_rows": sum(r.differing for r in work.rows), "ineligible_rows": found.total,
                  "finops_rows": sum(r.finops_rows for r in work.rows),
                  "dataverse_rows": sum(r.dataverse_rows for r in work.rows)}
        trip = work.trip
        parts = [f"{len(work.rows) - len(failing)}/{len(work.rows)} reconciled"]
        if found.total:
            parts.append(f"{found.total} Dataverse rows dual-write will not pick up")
        if trip is None:
            parts.append(f"round trip {work.why_not}")
        else:
            parts.append("round trip passed" if trip.ok
                         else f"round trip failed ({trip.failed_direction or 'clean-up'})")
        return self.result(status, "; ".join(parts), checks=checks,
                           tables={"reconciliation": table, "ineligible": found.table()}, counts=counts,
                           evidence_files=[str(recon_csv), str(missing_csv), str(differences_csv),
                                           ineligible_csv],
                           next_action=self._next_action(failing, trip, missing_csv))

    @staticmethod
    def _row_check(r: Reconciliation, csv: Path, differences_csv: Path) -> Check:
        evidence = (f"F&O {r.finops_rows} rows, Dataverse {r.dataverse_rows}; missing in Dataverse "
                    f"{len(r.missing_in_dataverse)} (e.g. {', '.join(r.missing_in_dataverse[:3]) or '-'}), "
                    f"missing in F&O {len(r.missing_in_finops)} "
                    f"(e.g. {', '.join(r.missing_in_finops[:3]) or '-'})")
        if r.duplicates:
            evidence += f"; {r.duplicates} rows share a key with another row"
        if not r.values_ok:
            sample = "; ".join(f"{d.key}: " + ", ".join(_differing(c, a, b) for c, a, b in d.columns[:2])
                               for d in r.differences[:2])
            evidence += (f"; the values of {r.columns_compared} mapped columns differ (checksums F&O "
                         f"{r.finops_checksum}, Dataverse {r.dataverse_checksum})"
                         + (f": {r.differing} rows, e.g. {sample}" if r.differing else ""))
        if r.note:
            evidence += f"; {r.note}"
        return Check(f"{r.map} {r.company}", StepStatus.FAILED, evidence,
                     fix=f"check that the map is Running (table-maps step), then rerun its initial sync "
                         f"(initial-sync step, or Re-run execution in Initial sync details; the master "
                         f"decides which side's values win); every missing key is in {csv}, every differing "
                         f"row found, with both sides' values, in {differences_csv}", doc=TROUBLESHOOT_DOC)

    @staticmethod
    def _next_action(failing: list[Reconciliation], trip: RoundTrip | None, csv: Path) -> str:
        actions = []
        if failing:
            maps = sorted({r.map for r in failing})
            actions.append(f"Counts or keys differ for {', '.join(maps)}: check the map states, rerun the "
                           f"initial sync of those maps (run the initial-sync step again), then verify "
                           f"again. Missing keys: {csv}.")
        if trip is not None and not trip.ok:
            failed = next(c for c in trip.stages if c.status != StepStatus.PASSED)
            actions.append(f"The round trip failed at '{failed.name}': {failed.fix}")
        return " ".join(actions)
