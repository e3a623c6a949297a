"""After a database refresh or copy: detect the stale dual-write configuration, stop the maps,
Reset link (the documented clean-up), so that the setup steps can relink and rerun the maps.

What a refresh leaves (operations-facts.md §1): the copied F&O project configurations
(`DualWriteProjectConfigurations`) still name the source's Dataverse environment, the copied maps
may still show Running, and the connection is the source's. The documented fix for a restored or
copied pair ("Backup and restore", relink-environments) is to stop all maps, clean the F&O key
tables and the Dataverse runtime configurations, and reset the connection; Reset link does all of
that in one action (reset.md). It restores the connection from the Power Platform integration, so
it can relink only when that integration names this pair: otherwise the run stops with the reason.

Example:
    >>> DetectRefresh.name, StopAllMaps.name, ResetLink.name
    ('detect-refresh', 'stop-all-maps', 'reset-link')
"""

from __future__ import annotations

from dwlib.catalog.errors import DOCS_ROOT
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .link import link_checks, scope

RELINK_DOC = DOCS_ROOT + "relink-environments"
RESET_DOC = DOCS_ROOT + "reset"


def stale_check(ctx: StepContext) -> Check:
    """Whether F&O holds project configurations of another Dataverse environment (a refresh's trace)."""
    _, _, admin = environment(ctx)
    stale = admin.stale_configuration()
    if not stale:
        return Check("dual-write configuration", StepStatus.PASSED,
                     "every project configuration names this Dataverse environment (or there is none)")
    shown = "; ".join(stale[:5]) + (f"; … {len(stale) - 5} more" if len(stale) > 5 else "")
    return Check("dual-write configuration", StepStatus.WARNING,
                 f"{len(stale)} project configurations name another Dataverse environment: {shown}",
                 fix="stop the maps and Reset link (the next steps), as relink-environments prescribes "
                     "after a backup and restore", doc=RELINK_DOC)


@register
class DetectRefresh(Step):
    """Read only: does the link point at the right pair, and is the dual-write configuration stale?

    FAILS, with the reason, when the refresh cannot be relinked: the Power Platform integration is
    missing or names another F&O environment (Reset link would connect that one; reset.md
    scenarios 2 and 3). Otherwise PASSES and says whether the following steps have to relink.

    Example:
        Usage: `DetectRefresh().execute(ctx).summary` → `'refreshed: 6 project configurations name …'`.
        >>> DetectRefresh.read_only
        True
    """

    name = "detect-refresh"
    title = "Detect a refreshed or copied environment"
    doc_url = RELINK_DOC
    read_only = True

    def check(self, ctx: StepContext) -> Finding:
        params, _, admin = environment(ctx)
        checks = link_checks(params, admin.power_platform_link())
        for c in checks:
            if c.name == checks[0].name and c.status != StepStatus.PASSED:
                c.status = StepStatus.FAILED
                c.fix = ("Reset link restores the dual-write connection from the Power Platform integration, "
                         "so it cannot relink this pair until that integration names it: in LCS set up the "
                         "Power Platform integration of this F&O environment with this Dataverse environment "
                         "(or correct environments.*), then run again. " + c.fix)
                c.doc = RESET_DOC
        if worst(checks) != StepStatus.FAILED:
            checks.append(stale_check(ctx))
        return Finding(True, "", checks=checks)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step")

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        checks = finding.checks
        if worst(checks) == StepStatus.FAILED:
            return self.result(StepStatus.FAILED, "the refresh cannot be relinked: "
                               + "; ".join(c.evidence for c in checks if c.status == StepStatus.FAILED),
                               checks=checks)
        stale = checks[-1].status != StepStatus.PASSED
        summary = ("refreshed: the dual-write configuration is stale; the next steps stop the maps, Reset "
                   "link and relink" if stale else "the dual-write configuration belongs to this pair: "
                   "nothing to reset (the setup steps check the maps)")
        return self.result(StepStatus.PASSED, summary, checks=checks)


@register
class StopAllMaps(Step):
    """Stop every Running map of a stale configuration (Reset link needs all maps stopped).

    Done when the configuration is not stale (nothing to reset) or no map runs. A Paused, Resuming
    or Initializing map cannot be stopped: the step fails with the fix.

    Example:
        >>> StopAllMaps.title
        'Stop all table maps before Reset link'
    """

    name = "stop-all-maps"
    title = "Stop all table maps before Reset link"
    doc_url = RESET_DOC

    def check(self, ctx: StepContext) -> Finding:
        _, _, admin = environment(ctx)
        if not admin.stale_configuration():
            return Finding(True, "no stale configuration: nothing to stop for a reset", todo=None)
        states = admin.map_states()
        busy = [f"{n} is {s.state}" for n, s in states.items()
                if s.state not in (MapState.RUNNING, MapState.NOT_RUNNING)]
        if busy:
            raise StepError(f"{'; '.join(busy)}: Stop is available only for Running maps. Fix: wait for "
                            "an initial sync to end, resume a Paused map (catch up), then run this step "
                            "again; or select Force Reset in the Reset link wizard")
        running = [n for n, s in states.items() if s.state == MapState.RUNNING]
        return Finding(not running, f"stop {', '.join(running)}" if running else "no map runs", todo=running)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        admin.stop(finding.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        if finding.todo is None:  # nothing to reset: the maps stay as they are
            return self.result(StepStatus.PASSED, finding.summary)
        _, _, admin = environment(ctx)
        states = admin.map_states()
        running = [f"{n} is {s.state}" for n, s in states.items() if s.state != MapState.NOT_RUNNING]
        checks = [Check("maps stopped", StepStatus.FAILED if running else StepStatus.PASSED,
                        "; ".join(running) or f"all {len(states)} maps Not running",
                        fix="stop them on the dual-write page (Stop)" if running else "", doc=RESET_DOC)]
        summary = (f"stopped {', '.join(finding.todo)}" if finding.todo else finding.summary)
        return self.result(worst(checks), summary, checks=checks)


@register
class ResetLink(Step):
    """Gate: Reset link and Apply Solution, when the configuration is stale. Irreversible.

    Reset link clears the F&O key tables and the Dataverse runtime configurations and restores the
    connection from the Power Platform integration with the run's legal entities (reset.md); Apply
    Solution brings the maps back. Verified by no project configuration naming another Dataverse
    environment and the maps applied. The legal-entities, plan and table-maps steps then relink.

    Example:
        >>> ResetLink.irreversible
        True
    """

    name = "reset-link"
    title = "Reset link (clean up the copied configuration)"
    doc_url = RESET_DOC
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        check = stale_check(ctx)
        return Finding(check.status == StepStatus.PASSED, "Reset link and Apply Solution"
                       if check.status != StepStatus.PASSED else "no stale configuration", checks=[check])

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, _, admin = environment(ctx)
        admin.reset_link(scope(params).codes)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        _, _, admin = environment(ctx)
        checks = [stale_check(ctx)]
        if checks[0].status != StepStatus.PASSED:
            checks[0].status = StepStatus.FAILED
        maps = admin.applied_maps()
        checks.append(Check("table maps applied", StepStatus.PASSED if maps else StepStatus.FAILED,
                            f"{len(maps)} table maps in msdyn_dualwriteentitymaps",
                            fix="" if maps else "select Apply Solution on the dual-write page",
                            doc=RESET_DOC))
        status = worst(checks)
        summary = ("the link is reset: the next steps relink the maps" if status == StepStatus.PASSED
                   else "the reset is not complete")
        return self.result(status, summary, checks=checks)
