"""Enable the table maps of the plan, in dependency order, with the master and initial sync per map.

This is "Enabling the Customers V3—Contacts table map" of the setup guidance applied to every map
of the plan: prerequisites first (legal entities, currencies, terms of payment, customer groups …
before Customers V3), each with its *Master for initial sync* and its *Initial Sync* check box
(cleared — skip initial sync — for maps whose data was migrated outside it, or that have nothing
to copy). Maps outside the plan are left alone. The Default value transforms of the parameters
(`table_maps[].defaults`, see `mapdefaults`) are set first (a Running map is stopped, edited and
run again skipping the initial sync). Enabling is a portal gate (the Run dialog) or the
gateway, through `ctx.admin.run`; only maps not Running yet are acted on, Paused ones are run
again (resumed).

A failed initial sync leaves its map Not running: the step then shows the top errors with the
catalogue's remediation and the rerun policy (`sync_failure_report`, shared with initial-sync).

Example:
    >>> [(g.initial_sync, len(g.names)) for g in run_groups([
    ...     PlannedMap("Currencies (transactioncurrencies)", True, "finops"),
    ...     PlannedMap("Legal entities (cdm_companies)", True, "finops"),
    ...     PlannedMap("Customers V3 (accounts)", False, "finops")])]
    [(True, 2), (False, 1)]

    TableMaps().execute(ctx).tables["table maps"][0]["state"]  → 'Running'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.clients.dualwrite import DualWriteAdminError
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepResult, environment, register, worst
from .mapdefaults import Defaults, apply_defaults, defaults_checks, missing_defaults, wanted_defaults
from .plan import plan_of

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin, MapSnapshot

ENABLE_DOC = DOCS_ROOT + "enable-entity-map"
ERRORS_DOC = DOCS_ROOT + "errors-and-alerts"
RERUN_POLICY = (
    "Fix the data as each remediation says, then rerun the initial sync: in the map's Initial sync "
    "details select Re-run execution (retries the whole execution, the failed records included), or "
    "run this step again (it runs the maps that are not running, with Initial Sync). Rerun execution "
    "without errors adds new data only and does not retry the failures. With change tracking on in "
    "F&O a rerun is an incremental push that does not resubmit error records, without it a full push "
    "(initial-sync-guidance). Only the top 5 errors are shown: the F&O Data management Job history "
    "(FinOps job name = execution group id) has them all."
)


@dataclass(frozen=True)
class PlannedMap:
    """A map the plan enables: with an initial sync (and which side is master) or skipping it."""

    name: str
    initial_sync: bool
    master: str = "dataverse"  # "dataverse" | "finops": decides conflicts only, never the direction
    moves_data: bool = True  # the run brings its rows to both sides (initial sync or migration)


@dataclass(frozen=True)
class RunGroup:
    """Consecutive maps (in dependency order) run in one Run dialog: same Initial Sync and master."""

    initial_sync: bool
    master: str
    names: list[str]


def planned_maps(ctx: StepContext) -> list[PlannedMap]:
    """The maps the plan enables, in dependency order (the plan step's result, or recomputed from
    the real state when the run resumed after the plan step).

    [(p.name, p.initial_sync, p.master) for p in planned_maps(ctx)][0]
    ('Currencies (transactioncurrencies)', True, 'finops')
    """
    enabled = {r.name: PlannedMap(r.name, r.initial_sync, r.master, r.moves_data) for r in plan_of(ctx)}
    return [enabled[n] for n in catalog.dependency_order(enabled, include_dependencies=False)]


def run_groups(maps: Sequence[PlannedMap]) -> list[RunGroup]:
    """Split `maps` (in run order) into Run dialogs: a new one wherever the mode changes."""
    groups: list[RunGroup] = []
    for m in maps:
        if groups and (groups[-1].initial_sync, groups[-1].master) == (m.initial_sync, m.master):
            groups[-1].names.append(m.name)
        else:
            groups.append(RunGroup(m.initial_sync, m.master, [m.name]))
    return groups


@dataclass
class EnableOutcome:
    """What `enable` did: maps it asked to run, those whose initial sync failed, why it stopped."""

    attempted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: str = ""


def enable(admin: DualWriteAdmin, maps: Sequence[PlannedMap]) -> EnableOutcome:
    """Run `maps` group by group, in order.

    It stops at the first group that fails or is not verified in time (e.g. still Initializing):
    the maps after it may depend on it. A map of that group whose state row changed and that is
    Not running again ran its initial sync and failed.

    outcome = enable(ctx.admin, planned_maps(ctx)); outcome.failed, outcome.stopped
    """
    out = EnableOutcome()
    for group in run_groups(maps):
        before = admin.map_states(group.names)
        out.attempted += group.names
        try:
            admin.run(group.names, initial_sync=group.initial_sync, master=group.master,
                      include_related=False)
        except DualWriteAdminError as exc:
            after = admin.map_states(group.names)
            out.failed = [n for n in group.names
                          if group.initial_sync and after[n].state == MapState.NOT_RUNNING
                          and after[n].version != before[n].version]
            out.stopped = str(exc)
            break
    return out


def sync_failure_report(
    admin: DualWriteAdmin, names: Sequence[str]
) -> tuple[list[Check], list[dict[str, Any]]]:
    """For maps whose initial sync failed: a check per top error (at most 5 per map) with the
    catalogue's remediation, and the remediation entries of the result.

    checks, remediation = sync_failure_report(admin, ["Customers V3 (accounts)"])
    remediation[0]["id"]  → 'double-quotes-in-data'
    """
    top = catalog.limits().top_errors
    checks: list[Check] = []
    remediation: list[dict[str, Any]] = []
    for name in names:
        details = admin.initial_sync_details(name)
        if not details.errors:
            checks.append(Check(f"{name}: initial sync", StepStatus.FAILED,
                                f"the map is {details.state}; last initial sync: {details.status}. "
                                f"{details.note}".strip(), fix=RERUN_POLICY, doc=ERRORS_DOC))
            continue
        for i, err in enumerate(details.errors[:top], 1):
            known = err.known or catalog.match_error(err.message, "initial-sync")
            where = " ".join(p for p in (err.legal_entity, err.record_id, err.field) if p)
            checks.append(Check(
                f"{name}: error {i} of {len(details.errors)}", StepStatus.FAILED,
                f"{where}: {err.message}" if where else err.message,
                fix=known.fix if known else "not a documented error: read the message, fix the data, "
                                            "then rerun the initial sync",
                doc=known.doc_url if known else ERRORS_DOC))
            remediation.append({
                "map": name, "error": err.message, "id": known.id if known else "",
                "meaning": known.meaning if known else "", "fix": known.fix if known else "",
                "doc": known.doc_url if known else ERRORS_DOC,
            })
    return checks, remediation


@dataclass
class MapWork:
    """The table-maps step's finding: the plan's maps, those to run, and what running them did."""

    plan: list[PlannedMap]
    todo: list[PlannedMap]
    defaults: Defaults = field(default_factory=dict)  # Default transforms the maps lack
    outcome: EnableOutcome = field(default_factory=EnableOutcome)


def state_row(p: PlannedMap, s: MapSnapshot) -> dict[str, Any]:
    """One row of the table-map table.

    >>> import json
    >>> from dwlib.clients.dualwrite import MapSnapshot
    >>> row = state_row(PlannedMap("Currencies (transactioncurrencies)", False),
    ...                 MapSnapshot("x", MapState.RUNNING))
    >>> json.dumps(row)[46:]
    '"initial_sync": "skipped", "master": "Dataverse", "state": "Running", "project": ""}'
    """
    return {"map": p.name, "initial_sync": "yes" if p.initial_sync else StepStatus.SKIPPED,
            "master": "F&O" if p.master == "finops" else "Dataverse", "state": s.state,
            "project": s.project or ""}


@register
class TableMaps(Step):
    """Enable the plan's table maps in dependency order, with master and initial sync per map.

    Check: the maps' states; the maps not Running (nor Initializing) are to run. Act: one Run
    dialog per run of maps with the same Initial Sync and master, in dependency order (gate or
    gateway). Verify: every map Running — or Initializing, when its initial sync still runs (the
    initial-sync step watches it); a map back at Not running failed its initial sync: its top
    errors, remediation and the rerun policy are shown.

    Example:
        TableMaps().execute(ctx).summary  → '6 table maps Running'
        >>> TableMaps.name
        'table-maps'
    """

    name = "table-maps"
    title = "Enable the table maps"
    doc_url = ENABLE_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, _, admin = environment(ctx)
        plan = planned_maps(ctx)
        states = admin.map_states([p.name for p in plan])
        todo = [p for p in plan if states[p.name].state not in (MapState.RUNNING, MapState.INITIALIZING)]
        defaults = missing_defaults(admin, wanted_defaults(params))
        checks = [Check(p.name, StepStatus.PASSED if p not in todo else StepStatus.WARNING,
                        f"{states[p.name].state}", fix="" if p not in todo else "run it") for p in plan]
        parts = [f"set column defaults of {', '.join(defaults)}"] if defaults else []
        if todo:
            parts.append("run " + ", ".join(
                f"{p.name} ({'initial sync, master ' + p.master if p.initial_sync else 'skip initial sync'})"
                for p in todo))
        return Finding(not parts, "; ".join(parts) or "every planned map runs",
                       todo=MapWork(plan, todo, defaults), checks=checks)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        work: MapWork = finding.todo
        apply_defaults(admin, work.defaults)  # before a map runs: edits need it stopped
        work.outcome = enable(admin, work.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, _, admin = environment(ctx)
        work: MapWork = finding.todo
        plan = work.plan
        defaults = defaults_checks(admin, wanted_defaults(params))
        states = admin.map_states([p.name for p in plan])
        rows = [state_row(p, states[p.name]) for p in plan]
        failed = [n for n in work.outcome.failed if states[n].state == MapState.NOT_RUNNING]
        waiting = [p.name for p in plan
                   if states[p.name].state not in (MapState.RUNNING, MapState.INITIALIZING)
                   and p.name not in failed]
        syncing = [p.name for p in plan if states[p.name].state == MapState.INITIALIZING]
        counts = {"maps": len(plan), "running": sum(s.running for s in states.values()),
                  "initializing": len(syncing)}
        tables = {"table maps": rows}
        if failed:
            checks, remediation = sync_failure_report(admin, failed)
            return self.result(StepStatus.FAILED, f"initial sync failed for {', '.join(failed)}",
                               checks=checks, tables=tables, counts=counts, remediation=remediation,
                               next_action=RERUN_POLICY)
        if worst(defaults) == StepStatus.FAILED:
            return self.result(StepStatus.FAILED, "column defaults missing", tables=tables, counts=counts,
                               checks=defaults, next_action="Set the column defaults the checks name, then "
                                                            "run this step again.")
        if waiting:
            stopped = work.outcome.stopped
            return self.result(
                StepStatus.FAILED, f"not running: {', '.join(waiting)}", tables=tables, counts=counts,
                checks=[Check(n, StepStatus.FAILED, states[n].state + (f" ({stopped})" if stopped else ""),
                              fix="run the map as the instructions say (Run dialog), then run this "
                                  "step again", doc=ENABLE_DOC) for n in waiting],
                next_action="Run the maps still not running (in the order of the table), then run "
                            "this step again.")
        summary = f"{counts['running']} table maps Running"
        if syncing:
            summary += (f"; initial sync still running for {', '.join(syncing)} "
                        "(the initial-sync step watches it)")
        return self.result(StepStatus.PASSED, summary, tables=tables, counts=counts,
                           checks=[Check(r["map"], StepStatus.PASSED, f"{r['state']} ({r['initial_sync']} "
                                         f"initial sync, master {r['master']})") for r in rows] + defaults)
