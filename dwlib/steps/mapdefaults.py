"""Default value transforms of table maps ("Customizing mappings"), from `table_maps[].defaults`.

An explicit option, not the documented path: a column mapping can carry a *Default* transform,
the value written when the source value is empty. Existing Dataverse accounts have no customer
group, and F&O's Customers V3 requires one; the documented path gives the rows their group in
Dataverse (the bootstrap's `bootstrap.customer_group`, or the F&O customer's with the
account-number method), but some consultants prefer a default `CUSTOMERGROUPID` on the map. That
customises a standard map (it must be carried through upgrades of the map), so the result says
so. Maps must be stopped to be edited ("Before you change table mappings, they must be stopped
(not running). Otherwise, your changes won't be saved."): a Running map is stopped, edited, and run
again with the initial sync skipped (nothing to copy: it was running).

`apply_defaults` is used by the `table-maps` step (before it runs the maps) and the `map-defaults`
step (which no scenario lists: run it on its own when wanted).

Example:
    params: table_maps: [{name: Customers V3 (accounts), defaults: {CUSTOMERGROUPID: "30"}}]
    MapDefaults().execute(ctx).checks[0].evidence
    "CUSTOMERGROUPID = '30' (Running)"
    >>> MapDefaults.name
    'map-defaults'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.clients.dualwrite import DualWriteAdminError
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepResult, environment, register, worst

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.params import Params

CUSTOMIZING_DOC = DOCS_ROOT + "customizing-mappings"
WHY = ("explicit option table_maps[].defaults: customises a standard map (not needed on the documented "
       "path, where the bootstrap gives the Dataverse rows what F&O requires)")
Defaults = dict[str, dict[str, str]]  # map name → F&O column (upper case) → value


def wanted_defaults(params: Params) -> Defaults:
    """The Default transforms the parameters give, by catalogue map name.

    wanted_defaults(params) → {'Customers V3 (accounts)': {'CUSTOMERGROUPID': '30'}}
    """
    names = {catalog.table_map(t.name).name for t in params.table_maps if t.defaults}
    return {n: params.column_defaults(n) for n in sorted(names)}


def missing_defaults(admin: DualWriteAdmin, wanted: Defaults) -> Defaults:
    """Of `wanted`, the transforms the maps do not carry yet (read from the applied maps).

    missing_defaults(ctx.admin, wanted_defaults(params)) → {} once they are set
    """
    out: Defaults = {}
    for name, defaults in wanted.items():
        have = {c.upper(): str(v) for c, v in admin.column_defaults(name).items()}
        todo = {c: v for c, v in defaults.items() if have.get(c) != v}
        if todo:
            out[name] = todo
    return out


def apply_defaults(admin: DualWriteAdmin, todo: Defaults) -> None:
    """Set the transforms of `todo`: a Running map is stopped, edited and run again with the
    initial sync skipped; a Not running map is only edited (whoever runs it later syncs it).

    apply_defaults(ctx.admin, {"Customers V3 (accounts)": {"CUSTOMERGROUPID": "30"}})
    """
    for name, defaults in todo.items():
        state = admin.map_states([name])[name].state
        if state not in (MapState.RUNNING, MapState.NOT_RUNNING):
            raise DualWriteAdminError(
                f"'{name}' is {state}: its column mappings can be changed only when it is stopped, and "
                "only a Running map can be stopped",
                fix="wait until it is Running (or resume it), then run the step again",
            )
        if state == MapState.RUNNING:
            admin.stop([name])
        admin.set_column_defaults(name, defaults)
        if state == MapState.RUNNING:
            admin.run([name], initial_sync=False, include_related=False)


def defaults_checks(admin: DualWriteAdmin, wanted: Defaults) -> list[Check]:
    """One check per map: its Default transforms as the applied map shows them, and its state.

    defaults_checks(ctx.admin, wanted_defaults(params))[0].evidence
    → "CUSTOMERGROUPID = '30' (Running); explicit option table_maps[].defaults: customises …"
    """
    missing = missing_defaults(admin, wanted)
    states = admin.map_states(list(wanted)) if wanted else {}
    checks = []
    for name, defaults in wanted.items():
        text = ", ".join(f"{c} = '{v}'" for c, v in defaults.items())
        if name in missing:
            checks.append(Check(f"{name}: column defaults", StepStatus.FAILED,
                                f"missing {', '.join(missing[name])} (want {text})",
                                fix="open the map (stopped), add a Default transform to each column "
                                    "with the value, Save; then run the step again", doc=CUSTOMIZING_DOC))
        else:
            checks.append(Check(f"{name}: column defaults", StepStatus.PASSED,
                                f"{text} ({states[name].state}); {WHY}", doc=CUSTOMIZING_DOC))
    return checks


@register
class MapDefaults(Step):
    """Give table maps the Default value transforms of the parameters (`table_maps[].defaults`).

    Check: the transforms the applied maps (`msdyn_dualwriteentitymaps`) lack. Act: per map, stop
    it when Running, set the transforms (portal gate), run it again skipping the initial sync.
    Verify: every transform in place, the maps back in their state.

    Example:
        MapDefaults().execute(ctx).summary
        "column defaults in place: Customers V3 (accounts)"
        >>> MapDefaults.title
        'Set default values on table maps'
    """

    name = "map-defaults"
    title = "Set default values on table maps"
    doc_url = CUSTOMIZING_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, _, admin = environment(ctx)
        todo = missing_defaults(admin, wanted_defaults(params))
        summary = "; ".join(f"{n}: " + ", ".join(f"{c} = '{v}'" for c, v in d.items())
                            for n, d in todo.items())
        return Finding(not todo, f"set column defaults {summary}" if todo else "no column defaults to set",
                       todo=todo)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        apply_defaults(admin, finding.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, _, admin = environment(ctx)
        wanted = wanted_defaults(params)
        checks = defaults_checks(admin, wanted)
        status = worst(checks)
        summary = (f"column defaults in place: {', '.join(wanted)}" if wanted
                   else "the parameters set no column defaults")
        return self.result(status, summary if status != StepStatus.FAILED else "column defaults missing",
                           checks=checks)
