"""Run the initial sync of the plan's maps and watch it to a terminal state.

The plan marks maps "initial sync"; their initial write copies the existing rows both ways, per
legal entity, before live sync. A map ends **Running** when it succeeded, or back at **Not
running** when it failed ("If the status is Not running, errors occurred during initial
synchronization"): then the top errors (at most 5, as the dual-write workspace shows) come with
the catalogue's remediation and the rerun policy.

The step converges on the real state:

- Initializing maps are watched (map states polled every `initial_sync.poll_s` up to
  `initial_sync.timeout_s`, with progress);
- maps not running (the table-maps step did not start them, or their initial sync failed before)
  are run with Initial Sync, in dependency order, with the plan's master;
- Running maps whose rows do not reconcile for the companies in scope (counts and keys per
  company, as verify compares them) get their initial sync again: rows written while no initial
  sync covered them are synced only by an initial sync. The map is stopped and run again with
  Initial Sync (the documented state machine: Running → Stop → Not running → Run). That rerun
  cannot be limited to the companies that need it: an initial sync covers every legal entity of
  the connection, and a rerun is a full push (incremental only with F&O change tracking, which
  cannot be read from outside; initial-sync-guidance). So the step says which companies need it
  and which it touches, and refuses when the full push breaks the limits in a company that does
  not need it (`rerun_problems`): then migrate the needing companies' rows instead. Rows already
  equal on both sides are compared and left alone.

Example:
    InitialSync().execute(ctx).tables["initial sync"]  → per map and company: counts, state
    >>> InitialSync.name
    'initial-sync'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.vocab import SETTLING_MAP_STATES, MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .link import scope
from .plan import effective_limits, volume_problems
from .support.reconcile import Reconciliation, reconcile
from .tablemaps import (
    RERUN_POLICY,
    PlannedMap,
    enable,
    planned_maps,
    sync_failure_report,
)

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin, MapSnapshot

GUIDANCE_DOC = DOCS_ROOT + "initial-sync-guidance"


@dataclass
class SyncWork:
    """What the check found, and (after act) what happened."""

    maps: list[PlannedMap]
    companies: list[str]
    watch: list[str]
    start: list[PlannedMap]
    rerun: list[PlannedMap]
    attempted: list[str] = field(default_factory=list)  # started (or watched) by this step
    failed: list[str] = field(default_factory=list)  # their initial sync ran and failed
    stopped: str = ""

    def describe(self) -> str:
        parts = []
        if self.watch:
            parts.append(f"watch {', '.join(self.watch)}")
        if self.start:
            parts.append(f"run with initial sync {', '.join(p.name for p in self.start)}")
        if self.rerun:
            parts.append(f"run the initial sync again for {', '.join(p.name for p in self.rerun)} "
                         f"(rows of {', '.join(self.companies)} not in sync)")
        return "; ".join(parts)


def sync_companies(ctx: StepContext) -> list[str]:
    """The companies an initial sync covers: those in scope (and created by the run) that Dataverse
    has (the Legal entities map brought their rows).

    sync_companies(ctx)  → ['DAT', 'USMF']
    """
    params, _, admin = environment(ctx)
    sc = scope(params)
    present = set(admin.dataverse_companies())
    return [c for c in dict.fromkeys([*sc.codes, *sc.created]) if c in present]


def rerun_note(companies: Sequence[str], behind: dict[str, list[str]]) -> str:
    """Why a rerun touches more companies than need it (initial-sync-guidance).

    >>> rerun_note(["USMF", "GBSI"], {"Customers V3 (accounts)": ["GBSI"]})[:61]
    'Customers V3 (accounts): GBSI need it; the rerun touches USMF'
    """
    return "; ".join(
        f"{m}: {', '.join(need)} need it; the rerun touches {', '.join(companies)} — an initial sync covers "
        "every legal entity of the connection and a rerun is a full push (incremental only with F&O change "
        "tracking), so it cannot be limited to these companies; rows already equal are left alone"
        for m, need in behind.items())


def rerun_problems(rows: Sequence[Reconciliation], behind: dict[str, list[str]],
                   limits: catalog.Limits) -> list[str]:
    """Why the full push of a rerun would fail in a company that does not even need it (its volume)."""
    out = []
    for r in rows:
        if r.map in behind and r.company not in behind[r.map]:
            out += [f"{r.map} {r.company}: {p}" for p in volume_problems(
                catalog.table_map(r.map), r.finops_rows, r.dataverse_rows, limits)]
    return out


class Watch:
    """Polls map states until no map in `names` is initializing, or the deadline passes."""

    def __init__(self, admin: DualWriteAdmin, deadline: float, poll_s: float,
                 progress: Callable[[int], None]) -> None:
        self.admin, self.deadline, self.poll_s, self.progress = admin, deadline, poll_s, progress

    def until_settled(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        if not names:
            return {}
        pending = set(names)
        while True:
            states = self.admin.map_states(names)
            done = {n for n in pending if states[n].state not in SETTLING_MAP_STATES}
            if done:
                self.progress(len(done))
                pending -= done
            if not pending or time.monotonic() >= self.deadline:
                return states
            time.sleep(self.poll_s)


@register
class InitialSync(Step):
    """Start and watch the initial sync of the plan's maps; top errors with remediation on failure.

    Example:
        result = InitialSync().execute(ctx)
        result.status, result.counts  → PASSED, {'maps': 5, 'running': 5, ...}
        >>> InitialSync.title
        'Run and watch the initial sync'
    """

    name = "initial-sync"
    title = "Run and watch the initial sync"
    doc_url = GUIDANCE_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        maps = [p for p in planned_maps(ctx) if p.initial_sync]
        companies = sync_companies(ctx)
        states = admin.map_states([p.name for p in maps])
        running = [p for p in maps if states[p.name].state == MapState.RUNNING]
        rows = reconcile(session, [p.name for p in running], companies)
        behind_by_map: dict[str, list[str]] = {}
        for r in rows:
            if not r.ok:
                behind_by_map.setdefault(r.map, []).append(r.company)
        behind = set(behind_by_map)
        problems = rerun_problems(rows, behind_by_map, effective_limits(params))
        if problems:
            note = rerun_note(companies, behind_by_map)
            raise StepError(f"these maps need their initial sync again ({note}), but the full push "
                            "breaks the initial-sync limits where it is not needed: "
                            + "; ".join(problems) + ". Fix: migrate the rows of the companies that need it "
                            "(migrate step) and keep the maps running")
        work = SyncWork(
            maps=maps,
            companies=companies,
            watch=[p.name for p in maps if states[p.name].state in SETTLING_MAP_STATES],
            start=[p for p in maps if states[p.name].state not in (MapState.RUNNING, *SETTLING_MAP_STATES)],
            rerun=[p for p in running if p.name in behind],
        )
        checks = [Check(p.name, StepStatus.PASSED if p not in work.start and p not in work.rerun
                        and p.name not in work.watch else StepStatus.WARNING,
                        states[p.name].state + (" — rows not in sync" if p in work.rerun else ""))
                  for p in maps]
        if behind_by_map:
            checks.append(Check("initial sync run again", StepStatus.PASSED,
                                rerun_note(companies, behind_by_map),
                                doc=GUIDANCE_DOC))
        done = not (work.watch or work.start or work.rerun)
        return Finding(done, work.describe() or "every initial sync is complete and reconciled",
                       todo=work, checks=checks)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, _, admin = environment(ctx)
        work: SyncWork = finding.todo
        options = params.initial_sync
        total = len(work.watch) + len(work.start) + len(work.rerun)
        bar = ctx.progress("initial sync (maps)", total)
        watch = Watch(admin, time.monotonic() + options.timeout_s, options.poll_s, bar.update)
        try:
            names = [p.name for p in work.maps]
            watch.until_settled(work.watch)
            work.attempted += work.watch  # one that failed while watched is reported, not rerun
            if work.rerun:
                admin.stop([p.name for p in work.rerun])
            # Repeat while maps finish: a dependency still initializing held back what follows it.
            while time.monotonic() < watch.deadline:
                states = admin.map_states(names)
                todo = [p for p in work.maps
                        if states[p.name].state not in (MapState.RUNNING, *SETTLING_MAP_STATES)
                        and p.name not in work.attempted]
                if not todo:
                    break
                outcome = enable(admin, todo)
                work.attempted += outcome.attempted
                work.failed += outcome.failed
                work.stopped = outcome.stopped
                settled = watch.until_settled(outcome.attempted)
                if outcome.stopped and not any(settled[n].state in SETTLING_MAP_STATES
                                               for n in outcome.attempted):
                    break  # a failure or a gate nobody did: verify reports it
        finally:
            bar.close()

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, admin = environment(ctx)
        work: SyncWork = finding.todo
        maps = work.maps
        if not maps:
            return self.result(StepStatus.SKIPPED, "the plan runs no initial sync (maps skip it or are "
                               "migrated outside it)")
        states = admin.map_states([p.name for p in maps])
        running = [p.name for p in maps if states[p.name].state == MapState.RUNNING]
        rows = reconcile(session, running, work.companies)
        table = [self._row(r, states) for r in rows]
        table += [{"map": p.name, "company": "", "state": states[p.name].state} for p in maps
                  if p.name not in running]
        counts = {"maps": len(maps), "running": len(running),
                  "rows_finops": sum(r.finops_rows for r in rows),
                  "rows_dataverse": sum(r.dataverse_rows for r in rows)}
        tables = {"initial sync": table}
        # Failed: seen failing by `enable`, or watched from Initializing to Not running.
        failed = [p.name for p in maps if states[p.name].state == MapState.NOT_RUNNING
                  and (p.name in work.failed or p.name in work.watch)]
        if failed:
            checks, remediation = sync_failure_report(admin, failed)
            return self.result(StepStatus.FAILED, f"initial sync failed: {', '.join(failed)}", checks=checks,
                               tables=tables, counts=counts, remediation=remediation,
                               next_action=RERUN_POLICY)
        checks = [self._state_check(p.name, states[p.name], params.initial_sync.timeout_s, work.stopped)
                  for p in maps]
        checks += [c for c in finding.checks if c.name == "initial sync run again"]
        checks += [Check(f"{r.map} {r.company}", StepStatus.FAILED,
                         f"F&O {r.finops_rows} rows, Dataverse {r.dataverse_rows}; missing in Dataverse "
                         f"{len(r.missing_in_dataverse)}, in F&O {len(r.missing_in_finops)}",
                         fix="run this step again (it reruns the initial sync of the map); if the rows "
                             "still differ, the verify step lists every missing key", doc=GUIDANCE_DOC)
                   for r in rows if not r.ok]
        status = worst(checks)
        summary = (f"initial sync complete for {len(running)} maps, rows reconciled for "
                   f"{', '.join(work.companies)}" if status == StepStatus.PASSED
                   else "initial sync not complete")
        return self.result(status, summary, checks=checks, tables=tables, counts=counts,
                           next_action="" if status == StepStatus.PASSED else
                           "Run this step again once the maps are Running; see the checks for each map.")

    @staticmethod
    def _row(r: Reconciliation, states: dict[str, MapSnapshot]) -> dict[str, Any]:
        return {"map": r.map, "company": r.company, "state": states[r.map].state,
                "finops_rows": r.finops_rows, "dataverse_rows": r.dataverse_rows,
                "in_sync": "yes" if r.ok else "no"}

    @staticmethod
    def _state_check(name: str, state: MapSnapshot, timeout_s: float, stopped: str) -> Check:
        if state.state == MapState.RUNNING:
            return Check(name, StepStatus.PASSED, "Running: initial sync complete")
        if state.state in SETTLING_MAP_STATES:
            return Check(name, StepStatus.FAILED, f"still {state.state} after {timeout_s:g} s",
                         fix="the initial sync is still running: run this step again to keep watching "
                             "(or raise initial_sync.timeout_s)", doc=GUIDANCE_DOC)
        return Check(name, StepStatus.FAILED, f"{state.state}" + (f": {stopped}" if stopped else ""),
                     fix="run the map with Initial Sync after the maps before it run (Run dialog), then "
                         "run this step again", doc=catalog.known_error("lookup-metadata").doc_url)
