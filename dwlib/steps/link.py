"""Linking the environments: the Power Platform integration / dual-write link gate, and the reads
the company, legal-entity and preflight steps share.

Which legal entities a run covers (`scope`): a new F&O environment is connected for DAT by the
LCS setup ("A dual-write connection is established for DAT company data"); an existing one for
all its legal entities, of which the unwanted ones are removed. The parameters' `legal_entities`
are the scope; companies the run creates (`companies`) are added later by the add-company step.

Example:
    >>> from dwlib.params import load_params
    >>> p = load_params({"scenario": "new-existing", "legal_entities": ["USMF"],
    ...                  "companies": [{"code": "USMF", "name": "Contoso US"}],
    ...                  "environments": {"tenant_id": "t", "dataverse_url": "https://d",
    ...                                   "finops_url": "https://f"},
    ...                  "auth": {"method": "device_code", "client_id": "app"}})
    >>> s = scope(p)
    >>> s.codes, s.created, s.linked_by_setup, s.initial_sync
    (('DAT',), ('USMF',), ('DAT',), True)

    PowerPlatformIntegration().execute(ctx)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.clients.errors import HttpError
from dwlib.scenarios import scenario
from dwlib.vocab import StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Params

DEFAULT_COMPANY = "DAT"  # the company a new F&O environment is connected for
PP_DOC = ("https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/power-platform/"
          "enable-power-platform-integration")
LCS_DOC = DOCS_ROOT + "lcs-setup"
LEGAL_ENTITIES_DOC = DOCS_ROOT + "edit-legal-entity"
COMPANY_DOC = DOCS_ROOT + "company-data"
LINK_CHECK = "Power Platform integration"  # the name of the check `link_checks` starts with


@dataclass(frozen=True)
class Scope:
    """The legal entities of a run (see `scope`)."""

    codes: tuple[str, ...]  # in the dual-write connection once the legal-entities step ran
    created: tuple[str, ...]  # created in F&O and added to the connection by the company steps
    linked_by_setup: tuple[str, ...]  # what the LCS link connects (the rest is added or removed)
    initial_sync: bool  # whether the scenario runs an initial sync (40 legal entities at most)


def scope(params: Params) -> Scope:
    """The legal entities the run covers, from its scenario and parameters (StepError: none)."""
    sc = scenario(params.scenario)
    steps = {s.step for s in sc.steps}
    created = tuple(c.code for c in params.companies) if "create-company" in steps else ()
    others = [c for c in params.legal_entities if c not in created]
    new_finops = sc.finops != "existing"
    codes = tuple(dict.fromkeys([*([DEFAULT_COMPANY] if new_finops else []), *others]))
    if not codes:
        raise StepError(f"legal_entities is empty: scenario {sc.id} connects an existing F&O environment, "
                        "so list the legal entities (company codes) to keep in the dual-write connection")
    return Scope(codes, created, (DEFAULT_COMPANY,) if new_finops else codes, "initial-sync" in steps)


def limit_problem(count: int, initial_sync: bool) -> str | None:
    """Why `count` legal entities are too many for the connection (None when they fit)."""
    lim = catalog.limits()
    fix = catalog.known_error("too-many-legal-entities").fix
    if count > lim.live_sync_legal_entities:
        return (f"{count} legal entities: \"live synchronization has a limit of "
                f"{lim.live_sync_legal_entities} legal entities\" (dual-write-system-req). Fix: keep at "
                f"most {lim.live_sync_legal_entities} in legal_entities.")
    if initial_sync and count > lim.initial_sync_legal_entities:
        return (f"{count} legal entities: \"Initial writes are supported for up to "
                f"{lim.initial_sync_legal_entities} legal entities\" (edit-legal-entity); more make the "
                "initial sync fail with \"Exceeds the maximum partitions allowed for mapping DWM-…\". "
                f"Fix: {fix}")
    return None


def finops_legal_entities(session: Session) -> dict[str, dict[str, Any]]:
    """F&O `LegalEntities` by upper-case id."""
    rows = session.finops.query("LegalEntities", select=["LegalEntityId", "Name"])
    return {r["LegalEntityId"].upper(): r for r in rows}


def require_in_finops(session: Session, codes: Iterable[str], hint: str) -> dict[str, dict[str, Any]]:
    """F&O's legal entities; StepError naming the `codes` F&O lacks (with `hint` as the fix)."""
    known = finops_legal_entities(session)
    absent = [c for c in codes if c not in known]
    if absent:
        raise StepError(f"legal entities {', '.join(absent)} do not exist in finance and operations "
                        f"(it has {', '.join(sorted(known)) or 'none'}). Fix: {hint}")
    return known


def require_linkable(session: Session, codes: Sequence[str], initial_sync: bool, hint: str) -> None:
    """StepError when `codes` exceed the connection's limits or F&O lacks any of them (`hint`: the fix).

    Example:
        require_linkable(session, ("USMF",), True, "correct legal_entities")  → None
    """
    problem = limit_problem(len(codes), initial_sync)
    if problem:
        raise StepError(problem)
    require_in_finops(session, codes, hint)


def dataverse_rows(session: Session, entity_set: str, **options: Any) -> list[dict[str, Any]]:
    """Rows of a Dataverse table; [] when the table does not exist (dual-write not installed)."""
    try:
        return list(session.dataverse.query(entity_set, **options))
    except HttpError as exc:
        if exc.status == 404:
            return []
        raise


def companies(session: Session) -> list[dict[str, Any]]:
    """The `cdm_companies` rows (code, name, default owning team)."""
    columns = ["cdm_companyid", "cdm_companycode", "cdm_name", "_cdm_defaultowningteam_value"]
    return dataverse_rows(session, "cdm_companies", select=columns)


def roles_of(session: Session, *, user: str = "", team: str = "") -> list[str]:
    """Names of the security roles of a system user or a team."""
    table, column, key = (("systemuserrolescollection", "systemuserid", user) if user
                          else ("teamrolescollection", "teamid", team))
    ids = {r["roleid"] for r in dataverse_rows(session, table, select=["roleid"],
                                               filter=f"{column} eq {key}")}
    names = {r["roleid"]: r["name"] for r in dataverse_rows(session, "roles", select=["roleid", "name"])}
    return sorted(names[i] for i in ids if i in names)


def roles_check(name: str, roles: list[str], fix: str, doc: str, *,
                none: StepStatus = StepStatus.FAILED) -> Check:
    """System Administrator, or both dual-write roles (security-roles.md); else a warning (no role at
    all: `none`)."""
    req = catalog.requirements()
    have = {r.lower() for r in roles}
    ok = req.system_administrator.lower() in have or all(r.lower() in have for r in req.dual_write_roles)
    evidence = f"roles: {', '.join(roles) or 'none'}"
    if ok:
        return Check(name, StepStatus.PASSED, evidence)
    return Check(name, StepStatus.WARNING if roles else none, evidence, fix=fix, doc=doc)


def company_checks(session: Session, codes: Sequence[str]) -> list[Check]:
    """Per code (a legal entity of the connection): its `cdm_companies` row, which the Legal entities
    (cdm_companies) map brings, with the business unit and "<CODE> DW" owner team dual-write creates
    for it (company-data.md)."""
    rows = {(r.get("cdm_companycode") or "").upper(): r for r in companies(session)}
    dv = session.dataverse
    out = []
    for code in codes:
        name = f"company {code} in Dataverse"
        row = rows.get(code)
        if row is None:
            out.append(Check(name, StepStatus.FAILED, f"no cdm_companies row with cdm_companycode {code}",
                             fix=f"the Legal entities (cdm_companies) map brings it once {code} is in the "
                                 "connection: run that map with its initial sync (or, when it runs, add "
                                 f"{code} without skipping initial writes): the legal-entities step does it",
                             doc=COMPANY_DOC))
            continue
        team_id = row.get("_cdm_defaultowningteam_value")
        if not team_id:
            out.append(Check(name, StepStatus.FAILED, f"cdm_company {code} '{row.get('cdm_name')}' has no "
                             "Default owning team", fix="set the company's Default owning team (the "
                             f"'{code} DW' team dual-write creates); it cannot stay empty", doc=COMPANY_DOC))
            continue
        team = dv.get("teams", team_id, select=["name", "_businessunitid_value"])
        bu = dv.get("businessunits", team["_businessunitid_value"], select=["name"])
        evidence = (f"cdm_company {code} '{row.get('cdm_name')}': owner team '{team['name']}' in business "
                    f"unit '{bu['name']}'")
        expected = f"{code} DW"
        if team["name"] == expected:
            out.append(Check(name, StepStatus.PASSED, evidence))
        else:
            out.append(Check(name, StepStatus.WARNING, f"{evidence}, not '{expected}'",
                             fix=f"make sure the owner team has the dual-write runtime and app user roles "
                                 f"(dual-write creates '{expected}' for this)", doc=COMPANY_DOC))
        roles = " and ".join(catalog.requirements().dual_write_roles)
        out.append(roles_check(f"roles of the owning team of {code}", roles_of(session, team=team_id),
                               f"give team '{team['name']}' the {roles} roles and roles for the tables in "
                               "scope (or System Administrator): rows it owns fail otherwise",
                               DOCS_ROOT + "security-roles"))
    return out


def solution_versions(session: Session) -> list[tuple[catalog.RequiredSolution, str | None]]:
    """Each required dual-write solution with its installed version (None: not installed)."""
    installed = {r["uniquename"].lower(): r.get("version") for r in session.dataverse.solutions()}
    return [(s, next((installed[n.lower()] for n in s.names if n.lower() in installed), None))
            for s in catalog.required_solutions()]


def solution_problems(session: Session) -> list[str]:
    """The required dual-write solutions that are missing or older than required."""
    return [f"{s.uniquename} " + (f"{version} < {s.required_version}" if version else "not installed")
            for s, version in solution_versions(session) if not s.satisfied_by(version)]


def link_checks(params: Params, link: dict[str, Any] | None) -> list[Check]:
    """Whether `RetrieveFinanceAndOperationsIntegrationDetails` names our F&O URL and tenant."""
    name = LINK_CHECK
    if link is None:
        return [Check(name, StepStatus.WARNING,
                      "RetrieveFinanceAndOperationsIntegrationDetails: 0x80048d0b \"Dataverse instance isn't "
                      "integrated with finance and operations\"",
                      fix="the power-platform-integration step sets this up (LCS Environment details > "
                          "Power Platform Integration > Setup)", doc=PP_DOC)]
    expected = params.environments.finops_url
    actual = (link.get("Url") or "").rstrip("/")
    out = []
    if actual.lower() == expected.lower():
        out.append(Check(name, StepStatus.PASSED,
                         f"Dataverse is integrated with {actual} (Id {link.get('Id')})"))
    else:
        out.append(Check(
            name, StepStatus.FAILED, f"Dataverse is integrated with {actual}, not {expected} "
            "(environments.finops_url)",
            fix="a Dataverse environment links to one F&O environment. If this F&O environment moved (its "
                "URL changed), the link still names the old URL: relink it (LCS Power Platform Integration "
                "setup, then Reset link on the dual-write page). Otherwise check environments.dataverse_url "
                "and finops_url name the linked pair",
            doc=DOCS_ROOT + "relink-environments"))
    tenant = params.environments.tenant_id
    actual_tenant = str(link.get("TenantId") or "")
    if "." in tenant:  # a domain name: the integration reports the tenant's GUID
        out.append(Check("same tenant", StepStatus.WARNING,
                         f"integration tenant {actual_tenant}; environments.tenant_id is the domain {tenant}",
                         fix=f"set environments.tenant_id to {actual_tenant} if that is your tenant's id, "
                             "so the check can compare", doc=DOCS_ROOT + "dual-write-system-req"))
    elif actual_tenant.lower() == tenant.lower():
        out.append(Check("same tenant", StepStatus.PASSED, f"tenant {actual_tenant} on both sides"))
    else:
        out.append(Check("same tenant", StepStatus.FAILED,
                         f"the integration is in tenant {actual_tenant}, environments.tenant_id is {tenant}",
                         fix="\"Cross-tenant scenarios aren't currently supported\": both environments "
                             "must be in one Microsoft Entra tenant; correct environments.tenant_id or the "
                             "environments",
                         doc=DOCS_ROOT + "requirements-and-prerequisites"))
    return out


def connection_check(admin: DualWriteAdmin, codes: Sequence[str], *, pending: str = "") -> Check:
    """Whether the dual-write connection holds `codes` (its documented state: Environment details >
    Legal entities), read through `admin.connection_legal_entities`. Not readable: SKIPPED when
    `pending` names the step that reads it later, else a WARNING (a check that cannot run never
    passes)."""
    conn = admin.connection_legal_entities()
    name = "legal entities in the connection"
    if not conn.readable:
        status = StepStatus.SKIPPED if pending else StepStatus.WARNING
        return Check(name, status, f"{conn.source}: {conn.note}" + (f"; {pending}" if pending else ""),
                     fix="" if pending else "check Environment details > Legal entities in the dual-write "
                                            f"workspace: it must list {', '.join(codes)}",
                     doc=LEGAL_ENTITIES_DOC)
    missing = conn.missing(codes)
    seen = f"{conn.source}: {', '.join(conn.codes or ()) or 'none'}"
    if missing:
        return Check(name, StepStatus.FAILED, f"{seen}; missing {', '.join(missing)}",
                     fix=f"add {', '.join(missing)} (Environment details > Legal entities > Add legal "
                         "entity)",
                     doc=LEGAL_ENTITIES_DOC)
    return Check(name, StepStatus.PASSED, seen)


def dual_write_checks(session: Session, admin: DualWriteAdmin, codes: Sequence[str]) -> list[Check]:
    """Dual-write configured and linked: solutions installed, table maps applied, and the legal
    entities `codes` in the connection (read once a map has a project; the legal-entities step
    reads it after running the Legal entities map)."""
    problems = solution_problems(session)
    out = [Check("dual-write solutions", StepStatus.FAILED if problems else StepStatus.PASSED,
                 "; ".join(problems) if problems else f"{len(catalog.required_solutions())} required "
                 "solutions at the required versions",
                 fix="LCS Environment details > Power Platform Integration > Dual-write application > "
                     "Configure installs them", doc=LCS_DOC)]
    maps = admin.applied_maps()
    out.append(Check("table maps applied", StepStatus.PASSED if maps else StepStatus.FAILED,
                     f"{len(maps)} table maps in msdyn_dualwriteentitymaps",
                     fix="" if maps else "select Apply Solution in the dual-write workspace", doc=LCS_DOC))
    out.append(connection_check(admin, codes, pending="the legal-entities step reads it after running "
                                                      "the Legal entities (cdm_companies) map"))
    return out


@register
class PowerPlatformIntegration(Step):
    """Gate: Power Platform integration and the dual-write link (LCS), verified through Dataverse.

    Checks that Dataverse reports integration with the parameters' F&O URL and tenant, and that
    dual-write is configured (solutions, table maps) and linked (the legal entities the setup
    connects: DAT for a new F&O, the legal entities in scope for an existing one, as far as the
    connection can be read yet). Otherwise shows the LCS steps (Power Platform Integration > Setup;
    Dual-write application > Configure > Link) and polls until the state is verified. Linking
    creates no company in Dataverse: the legal-entities step runs the map that does. A link to
    another environment is reported, never changed.

    Example:
        PowerPlatformIntegration().execute(ctx).status  → StepStatus.PASSED after the consultant linked
        >>> PowerPlatformIntegration.name
        'power-platform-integration'
    """

    name = "power-platform-integration"
    title = "Power Platform integration and dual-write link"
    doc_url = LCS_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        sc = scope(params)
        require_linkable(session, sc.linked_by_setup, sc.initial_sync, "correct legal_entities")
        link = admin.power_platform_link()
        checks = link_checks(params, link)
        if worst(checks) == StepStatus.FAILED:
            # Linked elsewhere: not ours to change; verify reports both values and the fix.
            return Finding(True, "the Power Platform integration points elsewhere", checks=checks)
        dual_write = dual_write_checks(session, admin, sc.linked_by_setup)
        integrate, link_up = link is None, worst(dual_write) == StepStatus.FAILED
        what = (["set up the Power Platform integration"] if integrate else []) + (
            [f"configure dual-write and link it for {', '.join(sc.linked_by_setup)}"] if link_up else [])
        return Finding(not what, "; ".join(what) or "linked", todo=(integrate, link_up),
                       checks=checks + dual_write)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, _, admin = environment(ctx)
        integrate, link_up = finding.todo
        if integrate:
            admin.set_up_power_platform_integration()
        if link_up:
            admin.link(scope(params).linked_by_setup)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, admin = environment(ctx)
        checks = link_checks(params, admin.power_platform_link())
        if worst(checks) != StepStatus.FAILED:
            checks += dual_write_checks(session, admin, scope(params).linked_by_setup)
        status = worst(checks)
        summary = {StepStatus.PASSED: "Dataverse is integrated with F&O and dual-write is linked",
                   StepStatus.WARNING: "linked, with warnings",
                   StepStatus.FAILED: "the link is not as expected"}[status]
        return self.result(status, summary, checks=checks)
