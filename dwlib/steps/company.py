"""The companies of the run: the legal entities of the dual-write connection and their rows in
Dataverse, and the company sub-procedure of the setup guidance for existing Dataverse data
("Create a new company in the finance and operations app", then "Add the company to the
dual-write connection setup", before the bootstrap and the initial sync).

Linking creates no company in Dataverse: the Legal entities (cdm_companies) map brings them ("Enable
the Cdm_companies table map. This synchronizes companies from the Finance and Operations app to
Dataverse", bootstrap FAQ), for the legal entities of the connection. So `legal-entities` runs that
map (and its prerequisites, and the reference maps the bootstrap reads) with its initial sync, then
reads the connection's legal entities (its documented state, `admin.connection_legal_entities`) and
adds or flags the difference with the scope; the company checks read the connection, then the rows.

Adding a company (`legal-entities`, `add-company`) takes the documented route that fits
(`add_route`, edit-legal-entity): with initial writes, the running maps copy the new companies'
existing data at once (the Legal entities map their cdm_companies rows); skipping them when the
connection would exceed 40 legal entities (initial writes are not processed then) or when the
running maps' data of the new companies breaks the initial-sync limits (the plan migrates it).
When the rows still lack, the Legal entities map's initial sync runs again: a rerun is a full push
over every company of the connection (initial-sync-guidance), which for this map is the companies
themselves, compared and left alone where equal.

Example:
    params: companies: [{code: USMF, name: Contoso US, country: USA, currency: USD,
                         customer_groups: ["30"]}]
    LegalEntities().execute(ctx)  → the connection holds the scope; cdm_companies rows present
    CreateCompany().execute(ctx)  → creates USMF in F&O LegalEntities and its customer
                                    group 30 (needs confirmation)
    AddCompany().execute(ctx)     → Add legal entity USMF (initial writes as add_route says)
    >>> CreateCompany.irreversible, AddCompany.irreversible
    (True, True)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.clients.dualwrite import Instruction
from dwlib.scenarios import GUIDE
from dwlib.vocab import SETTLING_MAP_STATES, MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .initialsync import Watch
from .link import (
    LEGAL_ENTITIES_DOC,
    company_checks,
    connection_check,
    finops_legal_entities,
    limit_problem,
    require_in_finops,
    require_linkable,
    scope,
)
from .plan import effective_limits, initial_write_problems
from .support.reconcile import reconcile
from .tablemaps import PlannedMap, enable

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Company, Params

COMPANIES_MAP = "Legal entities (cdm_companies)"
CUSTOMER_GROUPS_MAP = "Customer groups (msdyn_customergroups)"
# states in which a map re-runs the initial write for added companies
LIVE = (MapState.RUNNING, MapState.PAUSED)


def reference_maps(params: Params) -> list[str]:
    """The maps whose rows must be in Dataverse before the bootstrap, prerequisites first: the Legal
    entities map, and the Customer groups map when the bootstrap gives rows their customer group
    (the Azure Data Factory bootstrap's prerequisite: "Company, Customer groups, Terms of payment"
    copied by the initial write).

    reference_maps(params)  → ['Legal entities (cdm_companies)']
    """
    wanted = [COMPANIES_MAP]
    if params.bootstrap.customer_group or params.bootstrap.method == "account-number":
        wanted.append(CUSTOMER_GROUPS_MAP)
    return catalog.dependency_order(wanted)


@dataclass(frozen=True)
class AddRoute:
    """How legal entities are added: with or without initial writes, and why."""

    skip_initial_writes: bool
    reason: str

    def check(self, codes: Sequence[str]) -> Check:
        how = "skipping initial writes" if self.skip_initial_writes else "with initial writes"
        return Check(f"add {', '.join(codes)}", StepStatus.PASSED, f"{how}: {self.reason}",
                     doc=LEGAL_ENTITIES_DOC)


def add_route(ctx: StepContext, codes: Sequence[str]) -> AddRoute:
    """The documented route for adding `codes` to the connection (edit-legal-entity): running and
    paused maps re-run the initial write for added companies unless it is skipped. Skipped when the
    connection would exceed 40 legal entities, or when the new companies' rows of a running map
    break the plan's limits (`initial_write_problems`, with the run's `plan.limits`).

    add_route(ctx, ["USMF"]).skip_initial_writes  → False (small data, maps running)
    """
    params, session, admin = environment(ctx)
    states = admin.map_states()
    live = [n for n, s in states.items() if s.state in LIVE]
    conn = admin.connection_legal_entities()
    total = len({*(conn.codes or scope(params).codes), *(c.upper() for c in codes)})
    lim = effective_limits(params)
    if not live:
        return AddRoute(False, "no table map runs, so nothing is copied now; each map's own initial sync "
                               "covers the new companies when it runs")
    if total > lim.initial_sync_legal_entities:
        limit = lim.initial_sync_legal_entities
        return AddRoute(True, f"the connection would hold {total} legal entities: \"If the total number of "
                              f"legal entities in the list is greater than {limit}, initial writes aren't "
                              "processed for the newly added legal entities\"; the Legal entities map's "
                              "initial sync runs again for their companies")
    # The plan's rules applied to the new companies' own rows of the running company-specific maps (a
    # plan made before they were in the connection does not count them; global maps copy nothing of
    # theirs, the Legal entities map one row each).
    striped = [n for n in live if catalog.table_map(n).company_specific]
    problems: list[str] = []
    for r in reconcile(session, striped, list(codes)):
        problems += [f"{r.map} {r.company}: {p}" for p in initial_write_problems(
            catalog.table_map(r.map), r.finops_rows, r.dataverse_rows, total, lim)]
    if problems:
        return AddRoute(True, "the running maps' data of the new companies does not fit an initial write ("
                              + "; ".join(problems) + "): migrate it, then run the maps skipping the "
                              "initial sync")
    return AddRoute(False, f"{', '.join(live)} run: they copy the new companies' existing rows at once, "
                           "within the initial-sync limits (the Legal entities map their cdm_companies rows)")


def lacking_companies(admin: DualWriteAdmin, codes: Sequence[str]) -> list[str]:
    """Of `codes`, those without a `cdm_companies` row in Dataverse."""
    have = set(admin.dataverse_companies())
    return [c for c in codes if c.upper() not in have]


def bring_companies(ctx: StepContext, maps: Sequence[str], codes: Sequence[str], *,
                    initial_writes: bool = False) -> list[str]:
    """Make the reference maps `maps` run (with their initial sync, F&O as master: the companies
    come from F&O) and the `cdm_companies` rows of `codes` exist; returns what was done.

    `initial_writes`: `codes` were just added with initial writes, whose copy is waited for before
    the Legal entities map's initial sync is run again for rows still lacking.
    """
    params, _, admin = environment(ctx)
    options = params.initial_sync
    watch = Watch(admin, time.monotonic() + options.timeout_s, options.poll_s, lambda _n: None)
    done: list[str] = []
    states = admin.map_states(maps)
    watch.until_settled([n for n in maps if states[n].state in SETTLING_MAP_STATES])
    states = admin.map_states(maps)
    start = [n for n in maps if states[n].state != MapState.RUNNING]
    if start:
        outcome = enable(admin, [PlannedMap(n, True, "finops") for n in start])
        watch.until_settled(outcome.attempted)
        if outcome.stopped:
            raise StepError(f"running {', '.join(start)} with the initial sync failed: {outcome.stopped}")
        done.append(f"ran {', '.join(start)} with the initial sync")
    elif initial_writes and lacking_companies(admin, codes):
        admin.wait_for("the initial write of the Legal entities map",
                       lambda: [f"cdm_companies row of {c}" for c in lacking_companies(admin, codes)])
    lacking = lacking_companies(admin, codes)
    if lacking and not start:
        admin.stop([COMPANIES_MAP])
        outcome = enable(admin, [PlannedMap(COMPANIES_MAP, True, "finops")])
        watch.until_settled(outcome.attempted)
        done.append(f"ran the initial sync of {COMPANIES_MAP} again for {', '.join(lacking)} (a full push of "
                    "the connection's companies: equal rows are left alone)")
    return done


def _states_check(admin: DualWriteAdmin, maps: Sequence[str]) -> Check:
    states = admin.map_states(maps)
    off = [f"{n} is {states[n].state}" for n in maps if states[n].state != MapState.RUNNING]
    if off:
        return Check("reference maps", StepStatus.FAILED, "; ".join(off),
                     fix="run them with their initial sync (Run dialog, master F&O), then run the step again",
                     doc=catalog.known_error("lookup-metadata").doc_url)
    return Check("reference maps", StepStatus.PASSED, f"Running: {', '.join(maps)}")


@dataclass
class ConnectionWork:
    """What the legal-entities step has to do."""

    maps: list[str]
    start: list[str]
    missing: list[str]
    extra: list[str]
    lacking: list[str]
    done: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    route: AddRoute | None = None

    def describe(self) -> str:
        parts = [f"run {', '.join(self.start)} with the initial sync"] if self.start else []
        parts += [f"add {', '.join(self.missing)} to the connection"] if self.missing else []
        parts += [f"remove {', '.join(self.extra)} from the connection"] if self.extra else []
        parts += [f"bring the cdm_companies rows of {', '.join(self.lacking)}"] if self.lacking else []
        return "; ".join(parts)


@register
class LegalEntities(Step):
    """The Legal entities map runs and the dual-write connection holds exactly the legal entities in
    scope, each with its `cdm_companies` row in Dataverse.

    Runs the Legal entities (cdm_companies) map and the reference maps the bootstrap reads
    (`reference_maps`) with their initial sync; reads the connection's legal entities; adds the
    missing ones (`add_route`) and asks to remove the others (Environment details > Legal
    entities); brings the rows still lacking. Refuses, before acting, more than 40 legal entities
    when the scenario runs an initial sync, or more than 250.

    Example:
        LegalEntities().execute(ctx).checks[-1].evidence
        "cdm_company USMF 'Contoso US': owner team 'USMF DW' in business unit 'USMF'"
        >>> LegalEntities.name
        'legal-entities'
    """

    name = "legal-entities"
    title = "Legal entities in the dual-write connection and in Dataverse"
    doc_url = LEGAL_ENTITIES_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        sc = scope(params)
        require_linkable(session, sc.codes, sc.initial_sync,
                         "correct legal_entities (companies this run creates go under companies)")
        maps = reference_maps(params)
        states = admin.map_states(maps)
        conn = admin.connection_legal_entities()
        extra = sorted(set(conn.codes or ()) - set(sc.codes) - set(sc.created))
        work = ConnectionWork(maps, [n for n in maps if states[n].state != MapState.RUNNING],
                              conn.missing(sc.codes), extra, lacking_companies(admin, sc.codes))
        pending = "" if conn.readable else "read after the Legal entities map runs"
        checks = [connection_check(admin, sc.codes, pending=pending)]
        return Finding(not work.describe(), work.describe() or "in scope and in Dataverse", todo=work,
                       checks=checks)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, _, admin = environment(ctx)
        work: ConnectionWork = finding.todo
        sc = scope(params)
        work.done += bring_companies(ctx, work.maps, [])
        conn = admin.connection_legal_entities()  # readable now that a map has its project
        missing = conn.missing(sc.codes)
        if missing:
            work.route = add_route(ctx, missing)
            admin.add_legal_entities(missing, skip_initial_writes=work.route.skip_initial_writes)
            work.added = missing
            work.done.append(f"added {', '.join(missing)}")
        extra = sorted(set(conn.codes or ()) - set(sc.codes) - set(sc.created))
        if extra:
            admin.notify(Instruction(
                "Remove legal entities from the dual-write connection",
                ["In F&O open Data management > Dual-write, then Environment details.",
                 f"On the Legal entities tab remove {', '.join(extra)} (not in legal_entities), then Save."],
                {}, "the connection's legal entities (PartitionMap of the map projects)"))
        work.done += bring_companies(ctx, work.maps, sc.codes,
                                     initial_writes=bool(work.route and not work.route.skip_initial_writes))

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, admin = environment(ctx)
        sc = scope(params)
        work: ConnectionWork = finding.todo
        checks = [_states_check(admin, work.maps), connection_check(admin, sc.codes)]
        if work.route is not None:
            checks.append(work.route.check(work.added))
        checks += company_checks(session, sc.codes)
        conn = admin.connection_legal_entities()
        extra = sorted(set(conn.codes or ()) - set(sc.codes) - set(sc.created))
        if extra:
            checks.append(Check(
                "legal entities outside the scope", StepStatus.WARNING,
                f"the connection also holds {', '.join(extra)} ({conn.source})",
                fix=f"remove {', '.join(extra)} in Environment details > Legal entities, or add them to "
                    "legal_entities", doc=LEGAL_ENTITIES_DOC))
        status = worst(checks)
        summary = f"connection legal entities: {', '.join(sc.codes)}"
        if work.done:
            summary += " — " + "; ".join(work.done)
        return self.result(status, summary + ("" if status == StepStatus.PASSED else f" ({status})"),
                           checks=checks, next_action=checks[-1].fix if extra else "")


def _companies(params: Params) -> list[Company]:
    """The run's companies to create; StepError when the scenario needs some and none are given."""
    created = set(scope(params).created)
    chosen = [c for c in params.companies if c.code in created]
    if not chosen:
        raise StepError(f"scenario {params.scenario} creates a company in F&O for the existing Dataverse "
                        "data, but the parameters list none. Fix: add it under companies, e.g. "
                        "companies: [{code: USMF, name: Contoso US}] (and the code to legal_entities)")
    return chosen


def missing_groups(session: Session, companies: list[Company]) -> list[tuple[str, str]]:
    """(company, CustomerGroupId) of the parameters' `customer_groups` that F&O lacks (companies F&O
    lacks lack all of theirs).

    missing_groups(session, params.companies) → [('USMF', '30')] before create-company
    """
    out: list[tuple[str, str]] = []
    for c in companies:
        if not c.customer_groups:
            continue
        rows = session.finops.query("CustomerGroups", select=["CustomerGroupId"], company=c.code)
        have = {str(r["CustomerGroupId"]).lower() for r in rows}
        out += [(c.code, g) for g in c.customer_groups if g.lower() not in have]
    return out


def missing_currencies(session: Session, companies: list[Company]) -> list[str]:
    """The companies' accounting currencies F&O lacks (a new F&O has only DAT's): F&O refuses a
    legal entity whose currency is not in its Currencies table.

    missing_currencies(session, params.companies) → ['GBP', 'EUR'] in a new F&O
    """
    wanted = dict.fromkeys(c.currency.upper() for c in companies if c.currency)
    rows = session.finops.query("Currencies", select=["CurrencyCode"])
    have = {str(r["CurrencyCode"]).upper() for r in rows}
    return [code for code in wanted if code not in have]


def _currency_row(session: Session, code: str) -> dict[str, str]:
    """An F&O Currencies row for `code`, named as Dataverse names it when it has the currency, so
    that the Currencies map finds both sides alike."""
    rows = list(session.dataverse.query("transactioncurrencies", select=["currencyname"],
                                        filter=f"isocurrencycode eq '{code}'"))
    return {"CurrencyCode": code, "Name": str(rows[0].get("currencyname") or code) if rows else code}


@dataclass
class CompanyWork:
    """What create-company has to do: currencies, then companies, then customer groups to create."""

    companies: list[Company]
    groups: list[tuple[str, str]]
    currencies: list[str]


@register
class CreateCompany(Step):
    """Create the run's companies (legal entities) in F&O, with the customer groups the parameters
    give them (a new company has no reference data; Customers V3 needs a customer group) and, first,
    their accounting currencies when F&O lacks them; only the missing ones. Irreversible.

    Example:
        result = CreateCompany().execute(ctx)   # WAITING until confirmed, then PASSED
        result.checks[0].evidence  → "LegalEntities USMF 'Contoso US'"
        >>> CreateCompany.name
        'create-company'
    """

    name = "create-company"
    title = "Create the company in finance and operations"
    doc_url = f"{GUIDE}#new-existing"
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        params, session, _ = environment(ctx)
        known = finops_legal_entities(session)
        chosen = _companies(params)
        missing = [c for c in chosen if c.code not in known]
        groups = missing_groups(session, chosen)
        currencies = missing_currencies(session, missing)
        todo = [f"create {c.code} '{c.name}' in F&O LegalEntities" for c in missing]
        todo += [f"customer group {g} in {code}" for code, g in groups]
        todo += [f"currency {code} in F&O Currencies" for code in currencies]
        return Finding(not todo, "; ".join(todo), todo=CompanyWork(missing, groups, currencies))

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, session, _ = environment(ctx)
        work: CompanyWork = finding.todo
        # Each create names its key: one that failed on the way (429, a lost connection) is settled
        # by looking the row up, so it is retried without ever making a second one.
        for code in work.currencies:
            session.finops.create("Currencies", _currency_row(session, code), key={"CurrencyCode": code})
        for company in work.companies:
            row = {"LegalEntityId": company.code, "Name": company.name}
            if company.country:
                row["AddressCountryRegionId"] = company.country.upper()
            if company.currency:
                row["AccountingCurrency"] = company.currency.upper()
            session.finops.create("LegalEntities", row, key={"LegalEntityId": company.code})
        for code, group in work.groups:
            key = {"dataAreaId": code.lower(), "CustomerGroupId": group}
            row = {**key, "Description": f"Customer group {group}"}
            session.finops.create("CustomerGroups", row, key=key)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, _ = environment(ctx)
        known = finops_legal_entities(session)
        chosen = _companies(params)
        checks = [_company_check(c, known.get(c.code), self.doc_url) for c in chosen]
        absent = missing_groups(session, [c for c in chosen if c.code in known])
        checks += [_groups_check(c, [g for code, g in absent if code == c.code])
                   for c in chosen if c.code in known and c.customer_groups]
        ctx.run_state["companies_created"] = [c.code for c in chosen if c.code in known]
        status = worst(checks)
        return self.result(status, f"companies in F&O: {', '.join(ctx.run_state['companies_created'])}"
                           if status != StepStatus.FAILED else "a company is missing in F&O", checks=checks)


def _company_check(company: Company, row: dict[str, Any] | None, doc: str) -> Check:
    name = f"company {company.code} in F&O"
    if row is None:
        return Check(name, StepStatus.FAILED, f"LegalEntities has no {company.code}",
                     fix="create it in F&O (Organization administration > Legal entities > New), then run "
                         "the step again", doc=doc)
    if row.get("Name") != company.name:
        return Check(name, StepStatus.WARNING,
                     f"LegalEntities {company.code} is named '{row.get('Name')}', not '{company.name}'",
                     fix="it existed already: check it is the company meant for the Dataverse data, or "
                         "choose another code")
    return Check(name, StepStatus.PASSED, f"LegalEntities {company.code} '{row.get('Name')}'")


def _groups_check(company: Company, absent: list[str]) -> Check:
    name = f"customer groups of {company.code}"
    if absent:
        return Check(name, StepStatus.FAILED, f"CustomerGroups {', '.join(absent)} missing in {company.code}",
                     fix="create them in F&O (Accounts receivable > Setup > Customer groups), then run "
                         "the step again")
    groups = ", ".join(company.customer_groups)
    return Check(name, StepStatus.PASSED, f"CustomerGroups {groups} in {company.code}")


@register
class AddCompany(Step):
    """Add the created companies to the dual-write connection, by the route that fits. Irreversible.

    `add_route` decides whether to skip the initial writes (edit-legal-entity): with them, the
    running maps copy the new companies' existing data at once (the Legal entities map their
    `cdm_companies` rows, the Customer groups map their groups); skipped when they would not be
    processed (more than 40 legal entities) or when the data breaks the initial-sync limits. Then the
    companies' rows are made present (`bring_companies`): the bootstrap needs them. Verified by the
    connection's legal entities and each company's row with its "<CODE> DW" owner team.

    Example:
        AddCompany().execute(ctx).checks[1].evidence
        "with initial writes: Legal entities (cdm_companies), … run: they copy …"
        >>> AddCompany.name
        'add-company'
    """

    name = "add-company"
    title = "Add the company to the dual-write connection"
    doc_url = LEGAL_ENTITIES_DOC
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        codes = [c.code for c in _companies(params)]
        require_in_finops(session, codes, "run the create-company step first")
        conn = admin.connection_legal_entities()
        problem = limit_problem(len({*(conn.codes or ()), *codes}), scope(params).initial_sync)
        if problem:
            raise StepError(problem)
        missing = conn.missing(codes) if conn.readable else codes
        lacking = lacking_companies(admin, codes)
        todo = ([f"add {', '.join(missing)} to the dual-write connection"] if missing else []) + (
            [f"bring the cdm_companies rows of {', '.join(lacking)}"] if lacking and not missing else [])
        return Finding(not todo, "; ".join(todo) or "in the connection and in Dataverse",
                       todo=_Added(missing))

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, _, admin = environment(ctx)
        work: _Added = finding.todo
        if work.codes:
            work.route = add_route(ctx, work.codes)
            admin.add_legal_entities(work.codes, skip_initial_writes=work.route.skip_initial_writes)
        codes = [c.code for c in _companies(params)]
        work.done = bring_companies(ctx, reference_maps(params), codes,
                                    initial_writes=bool(work.route and not work.route.skip_initial_writes))

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, admin = environment(ctx)
        work: _Added = finding.todo
        codes = [c.code for c in _companies(params)]
        checks = [connection_check(admin, codes)]
        if work.route is not None:
            checks.append(work.route.check(work.codes))
        checks += company_checks(session, codes)
        status = worst(checks)
        summary = (f"in the dual-write connection and in Dataverse: {', '.join(codes)}"
                   if status != StepStatus.FAILED
                   else "a company is missing in the connection or in Dataverse")
        return self.result(status, summary + "".join(f"; {d}" for d in work.done), checks=checks)


@dataclass
class _Added:
    """What add-company adds, the route it took, and what it did for the companies' rows."""

    codes: list[str]
    route: AddRoute | None = None
    done: list[str] = field(default_factory=list)
