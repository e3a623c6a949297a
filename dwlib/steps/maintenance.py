"""Around a maintenance window: record the map states, pause the running maps, wait for the end of
the window (a gate), resume with catch-up and watch the queue drain.

Pause keeps the changes of a Running map in a queue that is replayed in order on resume
(pause-for-maintenance). Its documented limits (`catalog.limits()`): a pause lasts at most one day
and the queue holds at most 1 GB; past either, further records are blocked until the map is
resumed and catches up, and changes can be lost. The steps check both and say so: the pause's age
from the time this run paused, or, for a pause from before the run, from when the maps' Dataverse
runtime configuration rows last changed (`modifiedon`: INFERRED to move with the state); and the
queue's size estimated from the Dataverse rows of the paused maps changed since then (the Queued
records tab, the real figure, has no API).

Example:
    >>> MapStates.name, PauseMaps.name, MaintenanceOver.name, ResumeMaps.name
    ('map-states', 'pause-maps', 'maintenance-over', 'resume-maps')
    >>> age_check(100, 86400).status, age_check(90000, 86400).status
    (<StepStatus.PASSED: 'passed'>, <StepStatus.FAILED: 'failed'>)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepResult, environment, register, worst

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import MapSnapshot

PAUSE_DOC = DOCS_ROOT + "pause-for-maintenance"
ALERTS_DOC = DOCS_ROOT + "errors-and-alerts"


def catch_up_check(status: StepStatus, evidence: str) -> Check:
    """Where a resumed map's catch-up errors are read and retried: no documented read reaches them,
    only the map's Catch-up errors tab (errors-and-alerts.md)."""
    return Check("catch-up errors", status,
                 "records the target refused while a map caught up after a pause stay on its Catch-up errors "
                 f"tab (kept one day); {evidence}",
                 fix="on the dual-write page open each map's Catch-up errors tab and select Retry All; Retry "
                     "status Completed means it went through", doc=ALERTS_DOC)
PAUSED_AT = "maintenance.paused_at"  # run_state: when this run paused the maps (ISO 8601, UTC)
WINDOW = "maintenance.maps"  # run_state: the maps of the window (Running or Paused when recorded)
WARN_AT = 0.75  # of a limit: alert before it is reached
LIVE = (MapState.RUNNING, MapState.PAUSED, MapState.RESUMING)


def _now() -> datetime:
    return datetime.now(UTC)


def window_maps(ctx: StepContext) -> list[str]:
    """The maps of the window: those map-states recorded, else the live ones now."""
    _, _, admin = environment(ctx)
    if WINDOW in ctx.run_state:
        return list(ctx.run_state[WINDOW])
    return [n for n, s in admin.map_states().items() if s.state in LIVE]


def window_states(ctx: StepContext) -> tuple[list[str], dict[str, MapSnapshot]]:
    """The maps of the window (`window_maps`) and their states now."""
    _, _, admin = environment(ctx)
    maps = window_maps(ctx)
    return maps, admin.map_states(maps)


def in_state(ctx: StepContext, state: MapState) -> tuple[list[str], dict[str, MapSnapshot]]:
    """The maps of the window that are in `state` now, and every window map's state."""
    maps, states = window_states(ctx)
    return [n for n in maps if states[n].state == state], states


def age_check(age_s: float, limit_s: int) -> Check:
    """The pause's age against its documented limit (one day): PASSED, WARNING near it, FAILED past it."""
    hours, limit_h = age_s / 3600, limit_s / 3600
    if age_s > limit_s:
        return Check("pause duration", StepStatus.FAILED,
                     f"paused for {hours:.1f} h, past the documented maximum of {limit_h:g} h: further "
                     "records are blocked and queued changes can be lost",
                     fix="resume now with catch-up, then reconcile both sides (verify) and bring what is "
                         "missing (initial sync rerun or migration)", doc=PAUSE_DOC)
    status = StepStatus.WARNING if age_s > WARN_AT * limit_s else StepStatus.PASSED
    return Check("pause duration", status, f"paused for {hours:.2f} h of at most {limit_h:g} h",
                 fix="resume before the limit" if status == StepStatus.WARNING else "", doc=PAUSE_DOC)


def size_check(estimate: int, limit: int) -> Check:
    """The queue's estimated size against the documented 1 GB."""
    status = (StepStatus.FAILED if estimate > limit else StepStatus.WARNING if estimate > WARN_AT * limit
              else StepStatus.PASSED)
    return Check("queue size", status,
                 f"about {estimate:,} bytes queued from Dataverse (estimate: the rows of the paused maps "
                 f"changed since the pause) of at most {limit:,}; the Queued records tab shows the real "
                 "total",
                 fix="" if status == StepStatus.PASSED
                 else "resume now with catch-up: past 1 GB further records are blocked", doc=PAUSE_DOC)


def queue_estimate(ctx: StepContext, maps: list[str], since: str) -> int:
    """Bytes of the Dataverse rows of `maps` changed since `since` (what their queues hold at least)."""
    _, session, _ = environment(ctx)
    tables = {catalog.table_map(n).dataverse_table for n in maps}
    return sum(len(json.dumps(r)) for t in sorted(tables)
               for r in session.dataverse.query(t, filter=f"modifiedon ge {since}"))


def paused_since(ctx: StepContext, paused: list[str]) -> str | None:
    """When the first of `paused` paused, as its Dataverse runtime configuration row last changed
    (`modifiedon`, which moves with the state): a pause from before this run (a run resumed after the
    window). None when no row says it."""
    _, _, admin = environment(ctx)
    stamps = [s.changed_on for s in admin.map_states(paused).values() if s.changed_on]
    return min(stamps) if stamps else None


def pause_checks(ctx: StepContext, paused: list[str]) -> list[Check]:
    """The documented limits of a pause, for the maps of `paused` (none when nothing is paused)."""
    if not paused:
        return []
    lim = catalog.limits()
    since = ctx.run_state.get(PAUSED_AT) or paused_since(ctx, paused)
    if since is None:
        return [Check("pause duration", StepStatus.WARNING, "paused before this run: when is not known here",
                      fix="read the Activity log of each map on the dual-write page; resume within one day",
                      doc=PAUSE_DOC)]
    age = (_now() - datetime.fromisoformat(since)).total_seconds()
    return [age_check(age, lim.pause_max_seconds),
            size_check(queue_estimate(ctx, paused, since), lim.pause_max_bytes)]


LIMIT_CHECKS = ("pause duration", "queue size")


def going_on(checks: list[Check]) -> StepStatus:
    """The status of a step whose job is to go on to the resume: a pause past its limit is reported
    (WARNING, the run does not end green) but does not stop the run, since resuming is the fix."""
    status = worst(c for c in checks if c.name not in LIMIT_CHECKS)
    limits = worst(c for c in checks if c.name in LIMIT_CHECKS)
    return StepStatus.WARNING if status == StepStatus.PASSED and limits != StepStatus.PASSED else status


def _states_table(states: dict[str, MapState]) -> list[dict[str, str]]:
    return [{"map": n, "state": str(s)} for n, s in states.items()]


@register
class MapStates(Step):
    """Read only: record every map's state before the window (table and evidence CSV); the maps of
    the window are those Running or Paused now.

    Example:
        >>> MapStates.read_only
        True
    """

    name = "map-states"
    title = "Record the table map states"
    doc_url = PAUSE_DOC
    read_only = True

    def check(self, ctx: StepContext) -> Finding:
        _, _, admin = environment(ctx)
        states = {n: s.state for n, s in admin.map_states().items()}
        ctx.run_state[WINDOW] = [n for n, s in states.items() if s in LIVE]
        return Finding(True, "", todo=states)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step")

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        rows = _states_table(finding.todo)
        path = ctx.write_csv("map-states.csv", rows, ["map", "state"])
        live = ctx.run_state[WINDOW]
        summary = (f"{len(live)} maps live ({', '.join(live)})" if live
                   else "no map is Running or Paused: nothing to pause")
        return self.result(StepStatus.PASSED, summary, tables={"map states": rows},
                           evidence_files=[str(path)],
                           counts={"maps": len(rows), "live": len(live)})


@register
class PauseMaps(Step):
    """Pause the Running maps of the window (their changes queue), then check the pause's limits.

    Example:
        >>> PauseMaps.title
        'Pause the running table maps'
    """

    name = "pause-maps"
    title = "Pause the running table maps"
    doc_url = PAUSE_DOC

    def check(self, ctx: StepContext) -> Finding:
        running, _ = in_state(ctx, MapState.RUNNING)
        return Finding(not running, f"pause {', '.join(running)}" if running else "nothing runs",
                       todo=running)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        ctx.run_state[PAUSED_AT] = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        admin.pause(finding.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        paused, states = in_state(ctx, MapState.PAUSED)
        checks = [Check(n, StepStatus.PASSED if n in paused else StepStatus.FAILED, str(states[n].state),
                        fix="" if n in paused else "pause it (Pause is available only for Running maps)",
                        doc=PAUSE_DOC) for n in states]
        checks += pause_checks(ctx, paused)
        summary = (f"paused {', '.join(paused)}: their changes queue until resumed (at most one day, 1 GB)"
                   if paused else "no map to pause")
        return self.result(worst(checks), summary, checks=checks, counts={"paused": len(paused)})


@register
class MaintenanceOver(Step):
    """Gate: go on only when the maintenance is over. The consultant confirms it (the Confirm button,
    or headless `options.confirm_irreversible`); verified by both environments answering. Done when
    no map of the window is Paused (resumed already).

    Example:
        >>> MaintenanceOver.name
        'maintenance-over'
    """

    name = "maintenance-over"
    title = "The maintenance is over"
    doc_url = PAUSE_DOC

    def check(self, ctx: StepContext) -> Finding:
        paused, _ = in_state(ctx, MapState.PAUSED)
        return Finding(not paused, "the maintenance of both environments is over: resume the paused maps "
                       f"({', '.join(paused)})" if paused else "no map is paused", todo=paused,
                       checks=pause_checks(ctx, paused))

    def confirmation(self, ctx: StepContext, finding: Finding) -> str:
        return ("Confirm only when the maintenance of finance and operations and Dataverse has finished: "
                "the next step resumes the maps.")

    def act(self, ctx: StepContext, finding: Finding) -> None:
        return None  # the consultant's confirmation is the act

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        _, _, admin = environment(ctx)
        down = admin.answering()
        answer = Check("environments answer", StepStatus.FAILED if down else StepStatus.PASSED,
                       "; ".join(down) or "Dataverse and finance and operations answer",
                       fix="wait for the maintenance to finish, then run again" if down else "")
        checks = [*finding.checks, answer]
        return self.result(going_on(checks),
                           "the maintenance is over" if not down else "an environment does not answer yet",
                           checks=checks)


@register
class ResumeMaps(Step):
    """Resume the paused maps of the window with catch-up and wait until the queue has drained (the
    map Running again). Catch-up errors have no API: the result says where to retry them, and the
    verify step's reconciliation shows any record that did not arrive.

    Example:
        >>> ResumeMaps.title
        'Resume the maps and catch up'
    """

    name = "resume-maps"
    title = "Resume the maps and catch up"
    doc_url = PAUSE_DOC

    def check(self, ctx: StepContext) -> Finding:
        _, _, admin = environment(ctx)
        maps = window_maps(ctx)
        states = admin.map_states(maps)
        todo = [n for n in maps if states[n].state in (MapState.PAUSED, MapState.RESUMING)]
        return Finding(not todo, f"resume {', '.join(todo)} with catch-up" if todo else "nothing is paused",
                       todo=todo, checks=pause_checks(ctx, todo))

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        paused = [n for n in finding.todo if admin.map_states([n])[n].state == MapState.PAUSED]
        if paused:
            admin.resume(paused)  # verified once every map is Running: its queue has drained
        admin.wait_for("catch-up", lambda: [f"{n} is {s.state}"
                                            for n, s in admin.map_states(finding.todo).items()
                                            if s.state != MapState.RUNNING])

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        _, _, admin = environment(ctx)
        maps = window_maps(ctx)
        states = admin.map_states(maps)
        checks = [*finding.checks]
        checks += [Check(n, StepStatus.PASSED if s.state == MapState.RUNNING else StepStatus.FAILED,
                         str(s.state),
                         fix="" if s.running else "resume it (catch up) on the dual-write page",
                         doc=PAUSE_DOC)
                   for n, s in states.items()]
        if finding.todo:
            checks.append(catch_up_check(StepStatus.PASSED, "the verify step reconciles both sides"))
        summary = (f"resumed {', '.join(finding.todo)}: queues drained, live sync again" if finding.todo
                   else "no map was paused")
        return self.result(going_on(checks), summary, checks=checks)
