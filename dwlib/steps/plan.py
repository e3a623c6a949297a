"""The plan: per table map, initial sync, migration outside it, or skip — from the real volumes.

`decide` is the decision matrix of "Initial sync guidance" (initial-sync-guidance.md, 01/15/2026)
as a pure function. The matrix uses strict "<" and ">" around 70,000 and 500,000 rows, so the
boundaries are undefined; we take the conservative side: exactly at a limit means migrate.
"Volume" is the largest row count of the map in one legal entity on either side, because the
500,000 limit is "per run per legal entity" and the initial sync runs per legal entity. The 70,000
rule of single-threaded tables is about the import into F&O ("don't push more than 70,000 rows
from Dataverse to finance and operations"), so it looks at the Dataverse side only (`to_finops`).

`build_plan` counts the rows of every map per legal entity on both sides (the same eligibility
verify uses: key set, source / reversed filter true, company set on the Dataverse side), applies
`decide` per map, then the global constraints before an initial sync:

- more than 40 legal entities in the connection → migrate (initial writes support 40);
- 10 or more lookups (the catalogue's `failing_lookups`; "10 or more lookups" fail the Dataverse
  export) while Dataverse has rows for the map → migrate (or split the lookups);
- double quotes in mapped text ("Double quotes in data break parsing") → migrate (or remove them);
- a migrated map's prerequisites are migrated too (not Legal entities, which linking creates):
  the migrate step runs before any map is enabled, and migrated rows need the rows they refer to.

The plan lists the maps in dependency order with the master for the initial sync (the
parameters' `initial_sync_master`, else F&O when it holds rows, else Dataverse — the docs'
default) and an estimated duration, with the throughput it assumes beside it (`basis`):

- initial sync: "it scales to 100 records a minute", one legal entity at a time (Learn training
  module "Error handling", `THROUGHPUT_DOC`; the dual-write pages give no rate);
- migration into Dataverse: at most 6,000 requests per 5 minutes per user (service protection
  limits) with 1,000 rows per UpsertMultiple → 20,000 rows/s, an upper bound, not a measured rate;
- migration into F&O (DMF import): no documented throughput — ASSUMED as slow as the initial sync;
- every row is assumed to cross (no row already on the other side).

Example:
    >>> d = decide("existing", "existing", True, single_threaded=True, volume=70_000, to_finops=70_000)
    >>> d.action, d.actions
    ('migrate', ('bootstrap Dataverse data', 'migrate outside the initial sync', 'enable, skip initial sync'))
    >>> decide("existing", "existing", True, single_threaded=True, volume=90_000, to_finops=10).action
    'initial-sync'
    >>> decide("new", "new", False, single_threaded=False, volume=0, to_finops=0).action
    'skip'

    rows = build_plan(ctx); [(r.name, r.action, r.master) for r in rows]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.scenarios import scenario
from dwlib.vocab import LIVE_MAP_STATES, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register
from .link import scope
from .support import eligibility
from .support.dvmeta import Tables
from .support.reconcile import COMPANY_LOOKUP, company_ids, count

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Params

PLAN_DOC = DOCS_ROOT + "initial-sync-guidance"
PLAN_CSV = "plan.csv"
INELIGIBLE_CSV = "plan-ineligible-rows.csv"
State = Literal["new", "existing"]
Action = Literal["initial-sync", "migrate", "skip"]

# The matrix's actions, worded for the plan table.
CREATE_FO_COMPANY = "create the company in F&O"
BOOTSTRAP_DV = "bootstrap Dataverse data"
MIGRATE_TO_FO = "migrate the data into F&O"
MIGRATE_TO_DV = "migrate the data into Dataverse"
MIGRATE_OUTSIDE = "migrate outside the initial sync"
RUN_INITIAL = "run the initial sync"
ACTIVATE_SKIP = "enable, skip initial sync"

DEFAULT_MAPS = ("Legal entities (cdm_companies)", "Currencies (transactioncurrencies)",
                "Customer groups (msdyn_customergroups)", "Terms of payment (msdyn_paymentterms)",
                "Customers V3 (accounts)", "Customers V3 (contacts)")
# Its rows come from its own initial sync, run by the legal-entities step before the plan.
LINKED_BY_DUAL_WRITE = "Legal entities (cdm_companies)"

# Throughput model of the estimate (see the module docstring).
THROUGHPUT_DOC = ("https://learn.microsoft.com/en-us/training/modules/extensions-finance-operations-power-"
                  "platform/error-handling")
LIMITS_DOC = "https://learn.microsoft.com/en-us/power-apps/developer/data-platform/api-limits"
INITIAL_SYNC_ROWS_PER_S = 100 / 60  # "scales to 100 records a minute" (THROUGHPUT_DOC)
MIGRATE_DATAVERSE_ROWS_PER_S = 6000 / 300 * 1000  # service protection limit × UpsertMultiple size
MIGRATE_FINOPS_ROWS_PER_S = INITIAL_SYNC_ROWS_PER_S  # ASSUMED: no documented DMF import rate
BASIS = {
    "initial-sync": f"100 records a minute, one legal entity at a time (documented: {THROUGHPUT_DOC})",
    "migrate": ("into Dataverse at most 20,000 rows/s (service protection limits × 1,000 rows per "
                f"UpsertMultiple, an upper bound: {LIMITS_DOC}); into F&O ASSUMED 100 records a minute "
                "(no documented DMF import rate)"),
    "skip": "nothing to move",
}


@dataclass(frozen=True)
class Decision:
    """What the matrix says for one map: its actions in order and which matrix row said so."""

    actions: tuple[str, ...]
    matrix_row: str

    @property
    def action(self) -> Action:
        """The plan's action: migrate (outside the initial sync), initial sync, or skip it."""
        if MIGRATE_OUTSIDE in self.actions:
            return "migrate"
        return "initial-sync" if RUN_INITIAL in self.actions else "skip"


def decide(
    finops: State,
    dataverse: State,
    has_data: bool,
    *,
    single_threaded: bool,
    volume: int,
    to_finops: int,
    limits: catalog.Limits | None = None,
) -> Decision:
    """The initial-sync decision matrix for one map (pure).

    `volume` is the map's largest row count in one legal entity (either side), `to_finops` its
    largest Dataverse row count in one legal entity (what would go Dataverse → F&O, the direction
    the 70,000 rule of single-threaded tables is about); `limits` default to the documented ones.
    At exactly a limit the conservative answer (migrate) is given.

    >>> decide("new", "existing", True, single_threaded=False, volume=499_999, to_finops=0).action
    'initial-sync'
    >>> decide("existing", "new", True, single_threaded=False, volume=500_000, to_finops=0).matrix_row
    'existing F&O / new Dataverse, 500,000 rows or more'
    """
    lim = limits or catalog.limits()
    big, st_big = lim.initial_sync_rows_per_legal_entity, lim.single_threaded_dataverse_to_finops_rows
    threading = "single-threaded" if single_threaded else "multi-threaded"
    migrate = (MIGRATE_OUTSIDE, ACTIVATE_SKIP)
    if finops == "new" and dataverse == "new":
        if not has_data:
            return Decision((ACTIVATE_SKIP,), "new F&O / new Dataverse, no data")
        if volume >= big:
            return Decision(migrate, f"new F&O / new Dataverse with data, {big:,} rows or more")
        into = MIGRATE_TO_FO if single_threaded else MIGRATE_TO_DV
        return Decision((into, RUN_INITIAL), f"new F&O / new Dataverse with data, {threading}, "
                                             f"fewer than {big:,} rows")
    if finops == "existing" and dataverse == "new":
        if volume >= big:
            return Decision(migrate, f"existing F&O / new Dataverse, {big:,} rows or more")
        return Decision((RUN_INITIAL,), f"existing F&O / new Dataverse, fewer than {big:,} rows")
    prefix = (CREATE_FO_COMPANY, BOOTSTRAP_DV) if finops == "new" else (BOOTSTRAP_DV,)
    sides = f"{finops} F&O / existing Dataverse"
    if volume >= big:  # past 500,000 every map migrates, whichever side holds the rows
        return Decision((*prefix, *migrate), f"{sides}, {threading}, {big:,} rows or more")
    if single_threaded and to_finops >= st_big:
        return Decision((*prefix, *migrate),
                        f"{sides}, single-threaded, {st_big:,} rows or more from Dataverse to F&O")
    limit = (f"fewer than {st_big:,} rows from Dataverse to F&O" if single_threaded
             else f"fewer than {big:,} rows")
    return Decision((*prefix, RUN_INITIAL), f"{sides}, {threading}, {limit}")


def scenario_states(scenario_id: str) -> tuple[State, State]:
    """The matrix's (F&O, Dataverse) states of a scenario: F&O "new with data" is new.

    >>> scenario_states("new-data-existing")
    ('new', 'existing')
    """
    sc = scenario(scenario_id)
    return ("existing" if sc.finops == "existing" else "new"), sc.dataverse


def effective_limits(params: Params) -> catalog.Limits:
    """The documented limits, with the test-only overrides of `plan.limits` applied."""
    overrides = {k: v for k, v in params.plan.limits.model_dump().items() if v is not None}
    return replace(catalog.limits(), **overrides)


def selected_maps(params: Params) -> list[str]:
    """The maps to plan, prerequisites included, in dependency order: `table_maps`, else the
    Customers V3 example's set. A name may be a catalogue name or id, or an F&O entity name
    ("Customers V3" stands for both of its maps); StepError for unknown names."""
    names = [t.name for t in params.table_maps] or DEFAULT_MAPS
    return catalog.dependency_order([m for name in names for m in resolve_map(name)])


def resolve_map(name: str) -> list[str]:
    """Catalogue names for a name in the parameters (a map's name or id, or its F&O entity).

    >>> resolve_map("Customers V3")
    ['Customers V3 (accounts)', 'Customers V3 (contacts)']
    """
    try:
        return [m.name for m in catalog.maps_named(name)]
    except catalog.CatalogError as exc:
        raise StepError(f"table_maps: {exc}") from None


@dataclass(frozen=True)
class PlanRow:
    """The plan for one map. Rows per legal entity: code → rows (`GLOBAL` for global maps).

    `action`: "initial-sync" (enable with the initial sync, `master` decides conflicts),
    "migrate" (the migrate step moves the data, then the map is enabled skipping the initial sync)
    or "skip" (enable skipping the initial sync: nothing to copy, or the parameters say so).
    """

    order: int
    name: str
    action: Action
    master: Literal["finops", "dataverse"]
    skip_initial_sync: bool
    state: str  # the map's state when planned (Not running, Running, …)
    single_threaded: bool
    lookups: int
    finops_rows: dict[str, int]
    dataverse_rows: dict[str, int]
    dataverse_without_company: int
    quoted_rows: int
    matrix_row: str
    reason: str
    estimate_s: float
    actions: tuple[str, ...] = field(default=())

    COLUMNS = ("order", "map", "action", "master", "skip_initial_sync", "state", "finops_rows",
               "dataverse_rows", "dataverse_without_company", "estimate", "estimate_basis", "reason")

    @property
    def estimate_basis(self) -> str:
        """The throughput the estimate assumes, and where it is documented (or that it is not)."""
        return BASIS[self.action]

    @property
    def initial_sync(self) -> bool:
        """Whether the map is enabled with its initial sync."""
        return self.action == "initial-sync"

    @property
    def migrated(self) -> bool:
        """Whether the migrate step moves the map's data (then the map skips its initial sync)."""
        return self.action == "migrate"

    @property
    def moves_data(self) -> bool:
        """Whether the run brings the map's rows to both sides (so verify reconciles them)."""
        return self.action != "skip"

    @property
    def volume(self) -> int:
        """The largest row count in one legal entity, on either side."""
        return max([*self.finops_rows.values(), *self.dataverse_rows.values(), 0])

    def row(self) -> dict[str, Any]:
        """The plan table's row (also the CSV's): counts per legal entity as `USMF 120, GBSI 60`."""
        out = {**asdict(self), "map": self.name}
        out["finops_rows"] = _per_company(self.finops_rows)
        out["dataverse_rows"] = _per_company(self.dataverse_rows)
        out["estimate"] = duration(self.estimate_s)
        out["estimate_basis"] = self.estimate_basis
        out["actions"] = " → ".join(self.actions)
        return {k: out[k] for k in (*self.COLUMNS, "matrix_row", "actions", "lookups", "quoted_rows")}


def _per_company(rows: Mapping[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in rows.items()) or "0"


def duration(seconds: float) -> str:
    """A readable duration.

    >>> duration(59), duration(3 * 3600 + 120), duration(0)
    ('59 s', '3 h 2 min', '0 s')
    """
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def estimate(action: Action, finops_rows: int, dataverse_rows: int) -> float:
    """Seconds for `action` to move `finops_rows` into Dataverse and `dataverse_rows` into F&O
    (the throughputs of `BASIS`).

    >>> estimate("initial-sync", 3_000, 3_000) / 3600  # 100 records a minute
    1.0
    >>> estimate("migrate", 20_000, 0), estimate("skip", 10, 10)
    (1.0, 0.0)
    """
    if action == "initial-sync":
        return (finops_rows + dataverse_rows) / INITIAL_SYNC_ROWS_PER_S
    if action == "migrate":
        return finops_rows / MIGRATE_DATAVERSE_ROWS_PER_S + dataverse_rows / MIGRATE_FINOPS_ROWS_PER_S
    return 0.0


# --- reading the environments ---------------------------------------------------------------------

_TEXT = ("String", "Memo")


def _quoted_rows(session: Session, tables: Tables, m: catalog.TableMap, codes: Sequence[str],
                 ids: Mapping[str, str]) -> int:
    """Rows the initial sync would export with a double quote in a mapped text column."""
    plain = [c for c in m.mappings if c.lookup is None and c.direction != "><"]
    count = 0
    if m.finops_entity_set:
        sample = list(session.finops.query(m.finops_entity_set, top=50, cross_company=True))
        text = [c.finops for c in plain if c.to_dataverse and c.finops
                and any(isinstance(r.get(c.finops), str) for r in sample)]
        if text:
            wildcard = " or ".join(f"{col} eq '*\"*'" for col in text)  # F&O: '*x*' is a wildcard
            select = list(dict.fromkeys([*m.finops_key, *(c.column for c in m.finops_conditions),
                                         *(["dataAreaId"] if m.company_specific else [])]))
            wanted = {c.lower() for c in codes}
            count += sum(1 for r in session.finops.query(m.finops_entity_set, select=select, filter=wildcard,
                                                           cross_company=True)
                         if all(c.matches(r) for c in m.finops_conditions)
                         and (not m.company_specific or str(r.get("dataAreaId", "")).lower() in wanted))
    info = tables.info(m.dataverse_table)
    text = [c.dataverse for c in plain if c.to_finops and c.dataverse
            and info.attributes.get(c.dataverse) in _TEXT]
    if text:
        clauses = [f"({m.dataverse_filter})"] if m.dataverse_filter else []
        clauses.append("(" + " or ".join(f"contains({col},'\"')" for col in text) + ")")
        if m.company_specific:
            in_scope = [ids[c.upper()] for c in codes if c.upper() in ids]
            if not in_scope:
                return count
            clauses.append("(" + " or ".join(f"{COMPANY_LOOKUP} eq {i}" for i in in_scope) + ")")
        found = session.dataverse.count_by(m.dataverse_table, filter=" and ".join(clauses))
        count += sum(int(r.get("count", 0)) for r in found)
    return count


def _without_company(session: Session, m: catalog.TableMap) -> int:
    """Dataverse rows of the map without a company: not eligible until bootstrapped."""
    if not m.company_specific:
        return 0
    clauses = [f"({m.dataverse_filter})"] if m.dataverse_filter else []
    found = session.dataverse.count_by(m.dataverse_table,
                                       filter=" and ".join([*clauses, f"{COMPANY_LOOKUP} eq null"]))
    return sum(int(r.get("count", 0)) for r in found)


def plan_companies(params: Params, linked: Iterable[str]) -> list[str]:
    """The legal entities the plan counts: the connection's, and those the run creates once they
    are in the connection (`linked`: the company codes Dataverse has); before that their data
    waits for the run's own initial sync of the new companies."""
    sc = scope(params)
    have = {c.upper() for c in linked}
    return list(dict.fromkeys([*sc.codes, *(c for c in sc.created if c.upper() in have)]))


def build_plan(ctx: StepContext) -> list[PlanRow]:
    """The plan from the real state of both environments (see the module docstring).

    Steps after the plan call this on a resumed run, where `ctx.run_state` has no plan.

    rows = build_plan(ctx); [r.name for r in rows if r.action == "migrate"]
    """
    params, session, admin = environment(ctx)
    finops_state, dataverse_state = scenario_states(params.scenario)
    lim = effective_limits(params)
    names = selected_maps(params)
    ids = company_ids(session)
    codes = plan_companies(params, ids)
    counts: dict[str, tuple[dict[str, int], dict[str, int]]] = defaultdict(lambda: ({}, {}))
    for found in count(session, names, codes):  # counts only: no key set is held
        counts[found.map] = (found.finops, found.dataverse)
    states = _states(admin, names)
    tables = Tables(session.dataverse)
    options = {n: t for t in params.table_maps for n in resolve_map(t.name)}
    rows = []
    for order, name in enumerate(names, 1):
        m = catalog.table_map(name)
        fo, dv = counts[name]
        quoted = _quoted_rows(session, tables, m, codes, ids)
        rows.append(_row(order, m, fo, dv, _without_company(session, m), quoted, states[name],
                         (finops_state, dataverse_state), lim, len(codes), options.get(name)))
    return _propagate(rows)


def _states(admin: DualWriteAdmin, names: Sequence[str]) -> dict[str, str]:
    return {n: s.state for n, s in admin.map_states(names).items()}


def blockers(*, legal_entities: int, lookups: int, dataverse_rows: int, quoted_rows: int,
             limits: catalog.Limits | None = None) -> list[str]:
    """Why a map cannot have its initial sync (the global constraints), as readable reasons.

    >>> blockers(legal_entities=41, lookups=9, dataverse_rows=5, quoted_rows=0)
    ['41 legal entities: initial writes support 40']
    >>> blockers(legal_entities=4, lookups=10, dataverse_rows=5, quoted_rows=0)[0][:35]
    '10 lookups on the Dataverse side (1'
    >>> blockers(legal_entities=4, lookups=11, dataverse_rows=0, quoted_rows=0)
    []
    """
    lim = limits or catalog.limits()
    out = []
    if legal_entities > lim.initial_sync_legal_entities:
        out.append(f"{legal_entities} legal entities: initial writes support "
                   f"{lim.initial_sync_legal_entities}")
    if lookups >= lim.failing_lookups and dataverse_rows:
        out.append(f"{lookups} lookups on the Dataverse side ({lim.failing_lookups} or more fail the export; "
                   "or split the lookups)")
    if quoted_rows:
        out.append(f"{quoted_rows} rows hold double quotes in mapped text (they break the initial sync's "
                   "parsing; or remove them)")
    return out


def volume_problems(m: catalog.TableMap, finops_rows: int, dataverse_rows: int,
                    limits: catalog.Limits | None = None) -> list[str]:
    """Why one legal entity's rows of map `m` are too many for its initial sync: 500,000 rows per
    legal entity per run, 70,000 into F&O for single-threaded maps.

    >>> volume_problems(catalog.table_map("Customers V3 (accounts)"), 10, 70_000)
    ['70,000 rows from Dataverse into F&O for a single-threaded map (limit 70,000)']
    >>> volume_problems(catalog.table_map("Customers V3 (contacts)"), 10, 70_000)
    []
    """
    lim = limits or catalog.limits()
    out = []
    if max(finops_rows, dataverse_rows) >= lim.initial_sync_rows_per_legal_entity:
        out.append(f"{max(finops_rows, dataverse_rows):,} rows in one legal entity (limit "
                   f"{lim.initial_sync_rows_per_legal_entity:,} per run)")
    if m.single_threaded and dataverse_rows >= lim.single_threaded_dataverse_to_finops_rows:
        out.append(f"{dataverse_rows:,} rows from Dataverse into F&O for a single-threaded map (limit "
                   f"{lim.single_threaded_dataverse_to_finops_rows:,})")
    return out


def initial_write_problems(m: catalog.TableMap, finops_rows: int, dataverse_rows: int, legal_entities: int,
                           limits: catalog.Limits | None = None) -> list[str]:
    """Why the initial write of map `m` for one legal entity with these row counts would fail: the
    volume limits and the global constraints (`blockers`, quotes aside).

    >>> initial_write_problems(catalog.table_map("Customers V3 (contacts)"), 10, 5, 2)
    []
    >>> initial_write_problems(catalog.table_map("Customers V3 (contacts)"), 10, 5, 41)
    ['41 legal entities: initial writes support 40']
    """
    lim = limits or catalog.limits()
    return volume_problems(m, finops_rows, dataverse_rows, lim) + blockers(
        legal_entities=legal_entities, lookups=m.lookup_count, dataverse_rows=dataverse_rows, quoted_rows=0,
        limits=lim)


def _row(order: int, m: catalog.TableMap, fo: dict[str, int], dv: dict[str, int], without: int, quoted: int,
         state: str, states: tuple[State, State], lim: catalog.Limits, companies: int,
         option: Any) -> PlanRow:
    volume = max([*fo.values(), *dv.values(), 0])
    d = decide(*states, volume > 0, single_threaded=m.single_threaded, volume=volume,
               to_finops=max([*dv.values(), 0]), limits=lim)
    reasons = [f"matrix: {d.matrix_row}"]
    action = d.action
    found = blockers(legal_entities=companies, lookups=m.lookup_count, dataverse_rows=sum(dv.values()),
                     quoted_rows=quoted, limits=lim) if action == "initial-sync" else []
    if found:
        action = "migrate"
        reasons.append("migrate instead: " + "; ".join(found))
    if action != "skip" and option is not None and option.skip_initial_sync:
        action = "skip"  # "data moved another way first": the consultant's call
        reasons.append("table_maps: skip_initial_sync")
    if without:
        reasons.append(f"{without} Dataverse rows have no company and are not synced until bootstrapped")
    if state in LIVE_MAP_STATES:
        reasons.append(f"already {state}")
    master: Literal["finops", "dataverse"] = (
        option.initial_sync_master if option is not None and option.initial_sync_master else
        "finops" if sum(fo.values()) else "dataverse")
    return PlanRow(order, m.name, action, master, action != "initial-sync", state, m.single_threaded,
                   m.lookup_count, fo, dv, without, quoted, d.matrix_row, "; ".join(reasons),
                   estimate(action, sum(fo.values()), sum(dv.values())), d.actions)


def _propagate(rows: list[PlanRow]) -> list[PlanRow]:
    """Migrate the prerequisites of migrated maps too (the rows they refer to must exist first)."""
    by_name = {r.name: r for r in rows}
    for r in reversed(rows):  # dependents come later: walk back so chains propagate
        if by_name[r.name].action != "migrate":
            continue
        for dep in catalog.related_maps(r.name):
            row = by_name.get(dep)
            if row is None or row.action == "migrate" or dep == LINKED_BY_DUAL_WRITE:
                continue
            by_name[dep] = replace(
                row, action="migrate", skip_initial_sync=True,
                reason=f"{row.reason}; migrate: prerequisite of {r.name}, which is migrated (its rows must "
                       "exist before the migrated rows refer to them)",
                estimate_s=estimate("migrate", sum(row.finops_rows.values()),
                                    sum(row.dataverse_rows.values())))
    return [by_name[r.name] for r in rows]


def plan_of(ctx: StepContext) -> list[PlanRow]:
    """The run's plan: the one the plan step published in `run_state`, else built from the real state."""
    found = ctx.run_state.get("plan")
    return list(found) if found is not None else build_plan(ctx)


@register
class PlanStep(Step):
    """Count rows per map and legal entity on both sides and decide per map; publishes the plan.

    The plan goes to `ctx.run_state["plan"]` (a list of `PlanRow`) and to `plan.csv`; the
    migrate, table-maps and initial-sync steps follow it.

    Example:
        r = PlanStep().execute(ctx); r.tables["plan"][0]["action"]
        >>> PlanStep.name, PlanStep.read_only
        ('plan', True)
    """

    name = "plan"
    title = "Plan the initial sync"
    doc_url = PLAN_DOC
    read_only = True

    def check(self, ctx: StepContext) -> Finding:
        rows = build_plan(ctx)
        actions = ", ".join(f"{r.name}: {r.action}" for r in rows)
        return Finding(True, actions, todo=rows)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step: execute never acts")

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, _ = environment(ctx)
        rows: list[PlanRow] = finding.todo
        ctx.run_state["plan"] = rows
        path = ctx.write_csv(PLAN_CSV, (r.row() for r in rows), list(rows[0].row()) if rows else ["map"])
        connected = plan_companies(params, company_ids(session))
        found, ineligible_csv = eligibility.report(ctx, session, [r.name for r in rows], connected,
                                                   INELIGIBLE_CSV)
        by_action = {a: [r.name for r in rows if r.action == a] for a in ("initial-sync", "migrate", "skip")}
        checks = [Check(r.name, StepStatus.PASSED, f"{r.action}: {r.reason}", doc=PLAN_DOC) for r in rows]
        checks += found.checks(ineligible_csv)
        total = sum(r.estimate_s for r in rows)
        summary = "; ".join(f"{a}: {len(maps)}" for a, maps in by_action.items() if maps)
        left_out = (f"; {found.total} existing Dataverse rows dual-write will not pick up (see "
                    f"{INELIGIBLE_CSV})" if found.total else "")
        return self.result(
            StepStatus.WARNING if found.total else StepStatus.PASSED,
            f"{len(rows)} maps — {summary}; estimated {duration(total)} (initial sync at the documented "
            f"100 records a minute; see estimate_basis){left_out}",
            checks=checks, tables={"plan": [r.row() for r in rows], "ineligible": found.table()},
            counts={**{a: len(maps) for a, maps in by_action.items()}, "estimate_s": round(total),
                    "ineligible_rows": found.total},
            evidence_files=[str(path), ineligible_csv],
            next_action="migrate: " + ", ".join(by_action["migrate"]) if by_action["migrate"] else "")
