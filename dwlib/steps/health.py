"""The dual-write health check, read-only, for nightly runs (`health-check` scenario, `dw batch`).

`health-configuration` performs the checks of Microsoft's own health check (the **Health check**
wizard of the Dual-write page, configuration-health-check.md) that documented reads can make, and
names its codes: DWDVEV1003 / DWFOEV1003 (the connection's companies against `cdm_company` and
against the F&O legal entities), DWDVEV1007 (a company without Default owning team) and the table
maps' states (a Paused map is a warning with the documented limits of a pause: one day, 1 GB of
queued records). APIHub connections (DWxxEV1001) and stale configuration (DWxxEV1004) are not
readable through documented APIs: SKIPPED, with the wizard to run for them.

`health-drift` counts and checksums every running map per company on both sides (the
reconciliation of `verify`), then compares with the previous health check of the same pair of
environments (its run record in the same runs directory): rows out of sync per map and company now
and since then. Above `health.max_drift_rows` (per map and company) the step fails, so `dw run`
exits 1; below, drift is a warning.

Example:
    >>> drift_rows({"map": "m", "company": "USMF", "missing_in_dataverse": 2, "missing_in_finops": 0,
    ...             "differing_rows": 1})
    3
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepResult, environment, register, worst
from .link import company_checks, connection_check, finops_legal_entities
from .support.dvmeta import Tables
from .support.reconcile import Reconciliation, Values, reconcile
from .support.rowmap import Lookups
from .verify import COLUMNS

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.params import Params

HEALTH_DOC = DOCS_ROOT + "configuration-health-check"
PAUSE_DOC = DOCS_ROOT + "pause-for-maintenance"
SCENARIO = "health-check"
DRIFT_STEP = "health-drift"
DRIFT_TABLE = "drift"
DRIFT_COLUMNS = ["map", "company", "finops_rows", "dataverse_rows", "out_of_sync", "previous_out_of_sync",
                 "since_previous", "status"]


def maps_in_scope(params: Params) -> list[str]:
    """The maps the parameters name, with the maps they depend on, in dependency order."""
    return catalog.dependency_order([t.name for t in params.table_maps])


def state_checks(admin: DualWriteAdmin, maps: Sequence[str]) -> tuple[list[Check], list[str]]:
    """One check per map's state, and the maps that sync (Running, or Paused: queued)."""
    checks, syncing = [], []
    for name, state in admin.map_states(maps).items():
        label = f"table map {name}"
        if state.state == MapState.RUNNING:
            checks.append(Check(label, StepStatus.PASSED, f"{state.state} ({state.source})"))
            syncing.append(name)
        elif state.state in (MapState.PAUSED, MapState.RESUMING):
            checks.append(Check(label, StepStatus.WARNING,
                                f"{state.state}: its changes queue ({state.source})",
                                fix="a pause lasts at most one day and queues at most 1 GB, after which "
                                    "changes can be lost: resume it (Catch up synchronization of queued "
                                    "records) and watch the Queued records and Catch-up errors tabs",
                                doc=PAUSE_DOC))
            syncing.append(name)
        else:
            checks.append(Check(label, StepStatus.FAILED, f"{state.state}: no live sync ({state.source})",
                                fix="run the map (Run, without initial sync when both sides hold the data); "
                                    "if it fails, the troubleshoot runbook reads why",
                                doc=DOCS_ROOT + "enable-entity-map"))
    return checks, syncing


def code_checks(ctx: StepContext) -> list[Check]:
    """The codes of Microsoft's health check that documented reads can check."""
    params, session, admin = environment(ctx)
    codes = [c.upper() for c in params.legal_entities]
    conn = admin.connection_legal_entities()
    checks = [_named("DWDVEV1003 / DWFOEV1003", connection_check(admin, codes))]
    in_finops = finops_legal_entities(session)
    extra = sorted(set(conn.codes or ()) - set(in_finops))
    checks.append(Check("DWFOEV1003 connection companies in F&O",
                        StepStatus.FAILED if extra else StepStatus.PASSED,
                        f"not F&O legal entities: {', '.join(extra)}" if extra
                        else f"every company of the connection is an F&O legal entity ({conn.source})",
                        fix="remove the mismatched companies from the configuration, or Reset the link",
                        doc=HEALTH_DOC))
    for check in company_checks(session, codes):
        owner = "Default owning team" in check.evidence or check.name.startswith("company ")
        checks.append(_named("DWDVEV1003 / DWDVEV1007" if owner else "DWDVEV1007", check))
    unreadable = ("the APIHub connections (DWDVEV1001, DWFOEV1001) and stale runtime configuration "
                  "(DWDVEV1004, DWFOEV1004) have no documented read")
    checks.append(Check("DWxxEV1001 / DWxxEV1004", StepStatus.SKIPPED, unreadable,
                        fix="run Health check on the Dual-write page (Action Pane) for these",
                        doc=HEALTH_DOC))
    return checks


def _named(code: str, check: Check) -> Check:
    return Check(f"{code} {check.name}", check.status, check.evidence, check.fix, check.doc or HEALTH_DOC)


class _ReadOnly(Step):
    """A health-check step: check and verify read; there is nothing to act on."""

    read_only = True

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step: execute never acts")


@register
class HealthConfiguration(_ReadOnly):
    """Microsoft's health-check codes and the table maps' states, read-only.

    Example:
        >>> HealthConfiguration.read_only
        True
    """

    name = "health-configuration"
    title = "Health check: configuration and table map states"
    doc_url = HEALTH_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, _, admin = environment(ctx)
        states, _ = state_checks(admin, maps_in_scope(params))
        return Finding(True, "read-only", checks=code_checks(ctx) + states)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        status = worst(finding.checks)
        bad = [c for c in finding.checks if c.status in (StepStatus.FAILED, StepStatus.WARNING)]
        counts = {"checks": len(finding.checks), "failed": sum(c.status == StepStatus.FAILED for c in bad),
                  "warnings": sum(c.status == StepStatus.WARNING for c in bad)}
        summary = (f"{len(finding.checks)} checks: {counts['failed']} failed, {counts['warnings']} warnings"
                   + (f" ({', '.join(c.name for c in bad)})" if bad else ""))
        return self.result(status, summary, checks=finding.checks, counts=counts)


def drift_rows(row: Mapping[str, Any]) -> int:
    """Rows out of sync in one reconciliation row: missing on either side, or with differing values."""
    return int(row["missing_in_dataverse"]) + int(row["missing_in_finops"]) + int(row["differing_rows"])


def environments_of(params: Params) -> dict[str, str]:
    return {"dataverse_url": str(params.environments.dataverse_url).rstrip("/"),
            "finops_url": str(params.environments.finops_url).rstrip("/")}


def previous_check(runs: Path, pair: Mapping[str, str], current: str) -> dict[str, Any] | None:
    """The latest earlier health-check record in `runs` for the same environments (not the record
    named `current`: this run's)."""
    found = []
    for path in runs.glob("*.json"):
        if path.stem == current:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("scenario") != SCENARIO:
            continue
        env = data.get("environments") or {}
        if {k: str(env.get(k, "")).rstrip("/") for k in pair} != dict(pair):
            continue
        if any(s.get("id") == DRIFT_STEP and (s.get("tables") or {}).get(DRIFT_TABLE)
               for s in data.get("steps") or []):
            found.append(data)
    return max(found, key=lambda d: str(d.get("started")), default=None)


@dataclass
class Drift:
    rows: list[Reconciliation]
    previous: dict[str, Any] | None
    table: list[dict[str, Any]] = field(default_factory=list)


@register
class HealthDrift(_ReadOnly):
    """Counts and checksums per company per map on both sides, and the drift since the previous check.

    Example:
        >>> HealthDrift.name
        'health-drift'
    """

    name = DRIFT_STEP
    title = "Health check: counts, checksums and drift"
    doc_url = DOCS_ROOT + "dual-write-troubleshooting-live-sync"

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        _, syncing = state_checks(admin, maps_in_scope(params))
        values = Values(Tables(session.dataverse), Lookups(session.dataverse), params.column_defaults,
                        params.verify.sample_keys)
        rows = reconcile(session, syncing, [c.upper() for c in params.legal_entities], values=values)
        previous = previous_check(ctx.evidence_dir.parent, environments_of(params),
                                  ctx.evidence_dir.name.removesuffix("-evidence"))
        return Finding(True, "read-only", todo=Drift(rows, previous))

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, _, _ = environment(ctx)
        work: Drift = finding.todo
        limit = params.health.max_drift_rows
        before = _previous_rows(work.previous)
        checks, table, counts = [], [], {}
        for r in work.rows:
            row = r.row(params.verify.sample_keys)
            now = drift_rows(row)
            earlier = before.get((row["map"], row["company"]))
            status = (StepStatus.PASSED if now == 0 else StepStatus.WARNING if now <= limit
                      else StepStatus.FAILED)
            table.append({"map": row["map"], "company": row["company"], "finops_rows": row["finops_rows"],
                          "dataverse_rows": row["dataverse_rows"], "out_of_sync": now,
                          "previous_out_of_sync": "" if earlier is None else earlier,
                          "since_previous": "" if earlier is None else now - earlier,
                          "status": str(status)})
            counts[f"out of sync: {row['map']} {row['company']}"] = now
            if status != StepStatus.PASSED:
                checks.append(Check(f"drift {row['map']} {row['company']}", status,
                                    f"{now} rows out of sync (missing in Dataverse "
                                    f"{row['missing_in_dataverse']}, missing in F&O "
                                    f"{row['missing_in_finops']}, values differ {row['differing_rows']}; "
                                    f"the threshold is {limit})"
                                    + ("" if earlier is None else f"; {earlier} at the previous check"),
                                    fix="see health-reconciliation.csv and the troubleshoot runbook; rows "
                                        "changed while a map did not run come across with a rerun of its "
                                        "initial sync for that company",
                                    doc=self.doc_url))
        total = sum(int(t["out_of_sync"]) for t in table)
        counts |= {"maps_companies": len(table), "out_of_sync_rows": total}
        since = ""
        if work.previous is not None:
            earlier_total = sum(before.values())
            counts["since_previous_check"] = total - earlier_total
            since = f"; {total - earlier_total:+d} since the check of {work.previous.get('started')}"
        else:
            since = "; no earlier health check of these environments in this runs directory"
        if not table:
            checks.append(Check("reconciliation", StepStatus.WARNING,
                                "no table map syncs: nothing to compare",
                                fix="run the maps, or name them in table_maps", doc=self.doc_url))
        csv = ctx.write_csv("health-reconciliation.csv",
                            [r.row(params.verify.sample_keys) for r in work.rows], COLUMNS)
        status = worst(checks) if checks else StepStatus.PASSED
        return self.result(status, f"{total} rows out of sync in {len(table)} map × company{since}",
                           checks=checks, tables={DRIFT_TABLE: table}, counts=counts,
                           evidence_files=[str(csv)])


def _previous_rows(previous: Mapping[str, Any] | None) -> dict[tuple[str, str], int]:
    if previous is None:
        return {}
    step = next(s for s in previous["steps"] if s.get("id") == DRIFT_STEP)
    return {(t["map"], t["company"]): int(t["out_of_sync"]) for t in step["tables"][DRIFT_TABLE]}
