"""Preflight: the dual-write health check, done from outside with documented reads only.

Each check passes, warns or fails, with the evidence read and the documented fix: both
environments reachable and signed in; the Power Platform integration (same F&O URL and tenant);
the dual-write solutions at the required versions and the application users; `cdm_companies`
without duplicate codes or blank names; the legal entities in scope within the limits (40 with an
initial sync, 250 live); the root business unit's default team. It never writes, also when run
again or in a dry run.

What the LCS dual-write setup adds (the integration, the solutions, the app users, the
`cdm_companies` table) is not a problem while it is missing and a later step of the scenario (the
power-platform-integration step) sets it up: such a check is SKIPPED with "not installed yet".
Once dual-write is linked a missing part fails; without a later step to add it, it warns. A
solution installed at a version older than required, or a disabled app user, is a real problem:
a warning before the link, a failure after it.

Example:
    >>> # result = Preflight().execute(ctx)
    >>> # [(c.name, str(c.status)) for c in result.checks][:2]
    >>> # [('Dataverse reachable', 'passed'), ('F&O reachable', 'passed')]
    >>> Preflight.read_only
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.clients.errors import ClientError
from dwlib.scenarios import scenario

from .base import Check, Finding, Status, Step, StepContext, StepError, StepResult, register
from .link import (
    LINK_CHECK,
    PP_DOC,
    PowerPlatformIntegration,
    companies,
    dataverse_rows,
    environment,
    finops_legal_entities,
    limit_problem,
    link_checks,
    scope,
    solution_versions,
    worst,
)

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Params

REQUIREMENTS_DOC = DOCS_ROOT + "requirements-and-prerequisites"
SECURITY_DOC = DOCS_ROOT + "security-roles"
DATAVERSE_CHECKS = ["Power Platform integration", "dual-write solutions", "application users",
                    "cdm_companies", "legal entities", "root business unit default team"]
LIMITS_DOC = DOCS_ROOT + "sync-limits"


def _reachable(name: str, read: str, call: Callable[[], str], fix: str) -> Check:
    """`call()` reads and describes what it read; a client error becomes a FAILED check with the
    client's own fix."""
    try:
        seen = call()
    except ClientError as exc:
        return Check(name, Status.FAILED, f"{read}: {exc}", fix=exc.fix or fix, doc=REQUIREMENTS_DOC)
    return Check(name, Status.PASSED, f"{read}: {seen}")


def _whoami(session: Session) -> str:
    who = session.dataverse.whoami()
    return f"user {who.get('UserId')} in organization {who.get('OrganizationId')}"


@dataclass(frozen=True)
class Setup:
    """How far dual-write is set up, and whether a later step of the scenario sets it up.

    >>> Setup(linked=False, later=True).missing(), Setup(linked=True, later=True).missing()
    (<Status.SKIPPED: 'skipped'>, <Status.FAILED: 'failed'>)
    """

    linked: bool  # table maps applied: dual-write is configured and linked
    later: bool  # the power-platform-integration step comes after preflight in this scenario

    def missing(self) -> Status:
        """A part the LCS setup adds is absent: pending (SKIPPED) when a later step adds it."""
        if self.linked:
            return Status.FAILED
        return Status.SKIPPED if self.later else Status.WARNING

    def problem(self) -> Status:
        """A part is there but wrong (old version, disabled): the setup does not repair it."""
        return Status.FAILED if self.linked else Status.WARNING

    def check(self, name: str, status: Status, evidence: str, fix: str, doc: str) -> Check:
        """A check of a setup part; a pending one says which step installs it, with nothing to fix."""
        if status == Status.SKIPPED:
            return Check(name, status, f"{evidence}; {NOT_YET}", doc=doc)
        return Check(name, status, evidence, fix=fix, doc=doc)


NOT_YET = (f"not installed yet: the {PowerPlatformIntegration.name} step installs it (LCS dual-write "
           "setup)")


def _setup(params: Params, admin: DualWriteAdmin) -> Setup:
    steps = [ref.step for ref in scenario(params.scenario).steps]
    after = steps[steps.index(Preflight.name) + 1:] if Preflight.name in steps else steps
    return Setup(linked=bool(admin.applied_maps()), later=PowerPlatformIntegration.name in after)


def _link_checks(params: Params, admin: DualWriteAdmin, setup: Setup) -> list[Check]:
    link = admin.power_platform_link()
    checks = link_checks(params, link)
    if link is None and setup.later:
        return [Check(LINK_CHECK, Status.SKIPPED, f"{checks[0].evidence}; not set up yet: the "
                      f"{PowerPlatformIntegration.name} step sets it up (LCS Environment details > Power "
                      "Platform Integration > Setup)", doc=PP_DOC)]
    return checks


def _solution_checks(versions: list[tuple[catalog.RequiredSolution, str | None]],
                     setup: Setup) -> list[Check]:
    out = []
    for package, items in groupby(versions, key=lambda pair: pair[0].package):
        pairs = list(items)
        old = [f"{s.uniquename} {v} (needs {s.required_version}+)" for s, v in pairs
               if v and not s.satisfied_by(v)]
        absent = [f"{s.uniquename} not installed" for s, v in pairs if not v]
        if old or absent:
            status = setup.problem() if old else setup.missing()
            out.append(setup.check(f"solutions: {package}", status, "; ".join(old + absent),
                                   fix="LCS Dual-write application > Configure installs them; otherwise "
                                       f"install '{package}' from AppSource, then Apply Solution in the "
                                       "dual-write workspace",
                                   doc=DOCS_ROOT + "separated-solutions"))
        else:
            out.append(Check(f"solutions: {package}", Status.PASSED,
                             "; ".join(f"{s.uniquename} {v}" for s, v in pairs)))
    return out


def _app_user_checks(session: Session, setup: Setup) -> list[Check]:
    out = []
    for user in (u for u in catalog.app_users() if u.side == "dataverse"):
        rows = dataverse_rows(session, "systemusers", select=["fullname", "isdisabled"],
                              filter=f"applicationid eq {user.application_id}")
        enabled = [r for r in rows if not r.get("isdisabled")]
        name = f"application user {user.application_id}"
        if enabled:
            out.append(Check(name, Status.PASSED, f"App user with id {user.application_id} exists "
                                                  f"('{enabled[0].get('fullname')}')"))
        else:
            seen, status = ("disabled", setup.problem()) if rows else ("missing", setup.missing())
            out.append(setup.check(
                name, status, f"{user.name} ({user.application_id}) is {seen} in Dataverse",
                fix="the LCS dual-write setup creates it; otherwise create the application user in Power "
                    "Platform admin center with a role that has Create/Read/Write/Delete on the dual-write "
                    "tables", doc=REQUIREMENTS_DOC))
    return out


def _code(row: dict[str, Any]) -> str:
    return row.get("cdm_companycode") or "(no code)"


def _company_rows_check(session: Session, installed: bool, setup: Setup) -> Check:
    rows = companies(session)
    if not rows and not installed:
        # The table comes with Dual Write Core; its solution check says whether that is a problem.
        return Check("cdm_companies", Status.SKIPPED, "no cdm_companies rows: " + (
            NOT_YET if setup.later and not setup.linked else "not checked: Dual Write Core is not installed"))
    # "Dual-write doesn't support multiple companies with the same name" (initial-setup troubleshooting):
    # names are compared, trimmed and case-insensitively; blank names are the other documented cause.
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if (r.get("cdm_name") or "").strip():
            by_name.setdefault(r["cdm_name"].strip().lower(), []).append(r)
    duplicates = sorted(
        f"'{min(same, key=_code)['cdm_name'].strip()}' ({', '.join(sorted(map(_code, same)))})"
        for same in by_name.values() if len(same) > 1)
    blank = sorted(_code(r) for r in rows if not (r.get("cdm_name") or "").strip())
    if duplicates or blank:
        known = catalog.known_error("duplicate-company")
        evidence = "; ".join(
            ([f"duplicate names: {', '.join(duplicates)}"] if duplicates else [])
            + ([f"blank names: {', '.join(blank)}"] if blank else []))
        return Check("cdm_companies", Status.FAILED,
                     f"{evidence} — linking fails with \"Saving connection set failed! An item with the same "
                     "key has already been added.\"", fix=known.fix, doc=known.doc_url)
    codes = sorted((r.get("cdm_companycode") or "").upper() for r in rows)
    return Check("cdm_companies", Status.PASSED,
                 f"{len(rows)} companies, no duplicate or blank names"
                 + (f": {', '.join(codes)}" if rows else ""))


def _scope_checks(params: Params, session: Session) -> list[Check]:
    try:
        sc = scope(params)
    except StepError as exc:
        return [Check("legal entities in scope", Status.FAILED, str(exc), doc=DOCS_ROOT + "connection-setup")]
    known = finops_legal_entities(session)
    final = list(dict.fromkeys([*sc.codes, *sc.created]))
    problem = limit_problem(len(final), sc.initial_sync)
    lim = catalog.limits()
    within = (f"{len(final)} legal entities ({', '.join(final)}); limits {lim.initial_sync_legal_entities} "
              f"with an initial sync, {lim.live_sync_legal_entities} live"
              + ("" if sc.initial_sync else " (no initial sync)"))
    out = [Check("legal-entity count", Status.FAILED if problem else Status.PASSED, problem or within,
                 doc=LIMITS_DOC)]
    absent = [c for c in sc.codes if c not in known]
    out.append(Check(
        "legal entities in F&O", Status.FAILED if absent else Status.PASSED,
        (f"not in F&O: {', '.join(absent)}; " if absent else "")
        + f"F&O has {len(known)}: {', '.join(sorted(known))}"
        + (f"; created by the run: {', '.join(sc.created)}" if sc.created else ""),
        fix="correct legal_entities; a company this run creates goes under companies" if absent else "",
        doc=DOCS_ROOT + "connection-setup"))
    return out


def _root_team_check(session: Session) -> Check:
    name = "root business unit default team"
    roots = dataverse_rows(session, "businessunits", select=["businessunitid", "name"],
                           filter="_parentbusinessunitid_value eq null")
    root = roots[0]["businessunitid"] if roots else None
    teams = dataverse_rows(session, "teams", select=["name"],
                           filter=f"isdefault eq true and _businessunitid_value eq {root}") if root else []
    if not teams:
        return Check(name, Status.FAILED, "no default team of the root business unit found",
                     fix="the root business unit's default team becomes the default owner of rows dual-write "
                         "integrates: it must exist, with read permission on all dual-write tables",
                     doc=SECURITY_DOC)
    return Check(name, Status.PASSED, f"team '{teams[0]['name']}' of root business unit '{roots[0]['name']}' "
                                      "(give it read permission on all dual-write tables; roles not checked)")


def _skipped(names: list[str], why: str) -> list[Check]:
    return [Check(n, Status.SKIPPED, f"not checked: {why}") for n in names]


@register
class Preflight(Step):
    """The dual-write health check from outside: every check with evidence and the documented fix.

    Overall FAILED if any check fails, WARNING if any warns, else PASSED (checks of what a later
    step sets up are SKIPPED until then). Read-only.

    Example:
        >>> # Preflight().execute(ctx).summary  → "13 checks: 8 passed, 5 skipped, 0 warnings, 0 failed"
        >>> Preflight.name
        'preflight'
    """

    name = "preflight"
    title = "Preflight: dual-write health check"
    doc_url = REQUIREMENTS_DOC
    read_only = True

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        return Finding(True, "health check", checks=self._checks(params, session, admin))

    def act(self, ctx: StepContext, finding: Finding) -> None:
        """Nothing: preflight only reads."""

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        checks = finding.checks
        count = Counter(c.status for c in checks)
        status = worst(checks)
        fixes = [f"{c.name}: {c.fix}" for c in checks if c.status == Status.FAILED and c.fix]
        return self.result(
            status, f"{len(checks)} checks: {count[Status.PASSED]} passed, {count[Status.SKIPPED]} skipped, "
                    f"{count[Status.WARNING]} warnings, {count[Status.FAILED]} failed", checks=checks,
            next_action="; ".join(fixes))

    def _checks(self, params: Params, session: Session, admin: DualWriteAdmin) -> list[Check]:
        dv_check = _reachable("Dataverse reachable", "WhoAmI", lambda: _whoami(session),
                              "check environments.dataverse_url and the app's application user")
        fo_check = _reachable("F&O reachable", "LegalEntities",
                              lambda: f"{len(finops_legal_entities(session))} legal entities",
                              "check environments.finops_url and the app's Microsoft Entra ID application")
        checks = [dv_check, fo_check]
        if dv_check.status == Status.FAILED:
            return checks + _skipped(DATAVERSE_CHECKS, "Dataverse is not reachable")
        setup = _setup(params, admin)
        checks += _link_checks(params, admin, setup)
        versions = solution_versions(session)
        core = catalog.required_solutions([])  # Dual Write Core alone: it brings cdm_companies
        checks += _solution_checks(versions, setup)
        checks += _app_user_checks(session, setup)
        checks.append(_company_rows_check(session, any(v for s, v in versions if s in core), setup))
        checks += (_scope_checks(params, session) if fo_check.status == Status.PASSED
                   else _skipped(["legal entities"], "F&O is not reachable"))
        checks.append(_root_team_check(session))
        return checks

