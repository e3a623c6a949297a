"""Preflight: the dual-write health check, done from outside with documented reads only.

Each check passes, warns or fails, with the evidence read and the documented fix: both
environments reachable and signed in; the Power Platform integration (same F&O URL and tenant);
the versions (F&O 10.0.9 / platform update 33 from Lifecycle Services, Dataverse 9.1.0000.11732
from `RetrieveVersion`); not a trial and the same geography (Power Platform admin API); the
dual-write solutions at the required versions, no Prospect to cash solution, the dual-write plug-in
steps enabled; the application users and their security roles, the F&O-side Microsoft Entra
applications; `cdm_companies` without duplicate or blank names; the legal entities in scope within
the limits (40 with an initial sync, 250 live); the root business unit's default team and its
roles; the Language locale of F&O's DMF source data formats, which the initial sync needs en-us
("Troubleshoot issues during initial synchronization": numbers written in another locale fail).
A check that cannot read what it checks warns, saying how to check by hand; it never
passes. It never writes, also when run again or in a dry run.

What the LCS dual-write setup adds (the integration, the solutions, the app users, the
`cdm_companies` table) is not a problem while it is missing and a later step of the scenario (the
power-platform-integration step) sets it up: such a check is SKIPPED with "not installed yet".
Once dual-write is linked a missing part fails; without a later step to add it, it warns. A
solution installed at a version older than required, or a disabled app user, is a real problem:
a warning before the link, a failure after it.

Example:
    result = Preflight().execute(ctx)
    [(c.name, str(c.status)) for c in result.checks][:2]
    [('Dataverse reachable', 'passed'), ('F&O reachable', 'passed')]
    >>> Preflight.read_only
    True
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.catalog.locales import INITIAL_SYNC_LOCALE, LOCALE_DOC, LOCALE_FIX
from dwlib.clients.dualwrite.base import same_url
from dwlib.clients.errors import ClientError
from dwlib.clients.platform import release_of
from dwlib.scenarios import scenario
from dwlib.vocab import StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .link import (
    LINK_CHECK,
    PP_DOC,
    PowerPlatformIntegration,
    companies,
    dataverse_rows,
    finops_legal_entities,
    limit_problem,
    link_checks,
    roles_check,
    roles_of,
    scope,
    solution_versions,
)
from .support.dmf_package import source_formats

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Params

REQUIREMENTS_DOC = DOCS_ROOT + "requirements-and-prerequisites"
SECURITY_DOC = DOCS_ROOT + "security-roles"
DATAVERSE_CHECKS = ["Power Platform integration", "Dataverse version", "dual-write solutions",
                    "Prospect to cash", "dual-write plug-in steps", "application users", "cdm_companies",
                    "legal entities", "root business unit default team"]
SYSREQ_DOC = DOCS_ROOT + "dual-write-system-req"
PLATFORM_DOC = ("https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/power-platform/"
                "enable-power-platform-integration")
LIMITS_DOC = DOCS_ROOT + "sync-limits"
DMF_LOCALE = "DMF language locale"


def _reachable(name: str, read: str, call: Callable[[], str], fix: str) -> Check:
    """`call()` reads and describes what it read; a client error becomes a FAILED check with the
    client's own fix."""
    try:
        seen = call()
    except ClientError as exc:
        return Check(name, StepStatus.FAILED, f"{read}: {exc}", fix=exc.fix or fix, doc=REQUIREMENTS_DOC)
    return Check(name, StepStatus.PASSED, f"{read}: {seen}")


def _whoami(session: Session) -> str:
    who = session.dataverse.whoami()
    return f"user {who.get('UserId')} in organization {who.get('OrganizationId')}"


@dataclass(frozen=True)
class Setup:
    """How far dual-write is set up, and whether a later step of the scenario sets it up.

    >>> Setup(linked=False, later=True).missing(), Setup(linked=True, later=True).missing()
    (<StepStatus.SKIPPED: 'skipped'>, <StepStatus.FAILED: 'failed'>)
    """

    linked: bool  # table maps applied: dual-write is configured and linked
    later: bool  # the power-platform-integration step comes after preflight in this scenario

    def missing(self) -> StepStatus:
        """A part the LCS setup adds is absent: pending (SKIPPED) when a later step adds it."""
        if self.linked:
            return StepStatus.FAILED
        return StepStatus.SKIPPED if self.later else StepStatus.WARNING

    def problem(self) -> StepStatus:
        """A part is there but wrong (old version, disabled): the setup does not repair it."""
        return StepStatus.FAILED if self.linked else StepStatus.WARNING

    def check(self, name: str, status: StepStatus, evidence: str, fix: str, doc: str) -> Check:
        """A check of a setup part; a pending one says which step installs it, with nothing to fix."""
        if status == StepStatus.SKIPPED:
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
        return [Check(LINK_CHECK, StepStatus.SKIPPED, f"{checks[0].evidence}; not set up yet: the "
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
            out.append(Check(f"solutions: {package}", StepStatus.PASSED,
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
            out.append(Check(name, StepStatus.PASSED, f"App user with id {user.application_id} exists "
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
        return Check("cdm_companies", StepStatus.SKIPPED, "no cdm_companies rows: " + (
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
        return Check("cdm_companies", StepStatus.FAILED,
                     f"{evidence} — linking fails with \"Saving connection set failed! An item with the same "
                     "key has already been added.\"", fix=known.fix, doc=known.doc_url)
    codes = sorted((r.get("cdm_companycode") or "").upper() for r in rows)
    return Check("cdm_companies", StepStatus.PASSED,
                 f"{len(rows)} companies, no duplicate or blank names"
                 + (f": {', '.join(codes)}" if rows else ""))


def _scope_checks(params: Params, session: Session) -> list[Check]:
    try:
        sc = scope(params)
    except StepError as exc:
        return [Check("legal entities in scope", StepStatus.FAILED,
                      str(exc), doc=DOCS_ROOT + "connection-setup")]
    known = finops_legal_entities(session)
    final = list(dict.fromkeys([*sc.codes, *sc.created]))
    problem = limit_problem(len(final), sc.initial_sync)
    lim = catalog.limits()
    within = (f"{len(final)} legal entities ({', '.join(final)}); limits {lim.initial_sync_legal_entities} "
              f"with an initial sync, {lim.live_sync_legal_entities} live"
              + ("" if sc.initial_sync else " (no initial sync)"))
    out = [Check("legal-entity count", StepStatus.FAILED if problem else StepStatus.PASSED, problem or within,
                 doc=LIMITS_DOC)]
    absent = [c for c in sc.codes if c not in known]
    out.append(Check(
        "legal entities in F&O", StepStatus.FAILED if absent else StepStatus.PASSED,
        (f"not in F&O: {', '.join(absent)}; " if absent else "")
        + f"F&O has {len(known)}: {', '.join(sorted(known))}"
        + (f"; created by the run: {', '.join(sc.created)}" if sc.created else ""),
        fix="correct legal_entities; a company this run creates goes under companies" if absent else "",
        doc=DOCS_ROOT + "connection-setup"))
    return out


def _root_team_check(session: Session, setup: Setup) -> Check:
    name = "root business unit default team"
    roots = dataverse_rows(session, "businessunits", select=["businessunitid", "name"],
                           filter="_parentbusinessunitid_value eq null")
    root = roots[0]["businessunitid"] if roots else None
    teams = dataverse_rows(session, "teams", select=["teamid", "name"],
                           filter=f"isdefault eq true and _businessunitid_value eq {root}") if root else []
    if not teams:
        return Check(name, StepStatus.FAILED, "no default team of the root business unit found",
                     fix="the root business unit's default team becomes the default owner of rows dual-write "
                         "integrates: it must exist, with read permission on all dual-write tables",
                     doc=SECURITY_DOC)
    roles = roles_of(session, team=teams[0]["teamid"])
    seen = (f"team '{teams[0]['name']}' of root business unit '{roots[0]['name']}', roles: "
            f"{', '.join(roles) or 'none'}")
    if not roles:
        # The dual-write tables come with the setup: before it, the role to give is not there yet.
        fix = ("give it a role with read permission on all dual-write tables (it becomes the default owner "
               "of the rows dual-write integrates)")
        return setup.check(name, setup.missing(), seen, fix=fix, doc=SECURITY_DOC)
    return Check(name, StepStatus.PASSED, seen)


def release_ok(build: str, req: catalog.Requirements) -> bool:
    """Whether an F&O application version meets the documented minimum: a build number (four
    parts) against 10.0.383.20013, a release label (three parts, 10.0.N) against 10.0.9.

    >>> req = catalog.requirements()
    >>> release_ok("10.0.1935.92", req), release_ok("10.0.38", req), release_ok("10.0.383.1", req)
    (True, True, False)
    """
    have = release_of(build)
    need = release_of(req.finops_build if len(have) >= 4 else req.finops_release)
    return have >= need


def _finops_version_check(params: Params, session: Session) -> Check:
    """F&O's version from Lifecycle Services (the documented read of the application build)."""
    req, env, name = catalog.requirements(), params.environments, "F&O version"
    by_hand = (f"check in F&O (Help > About) or LCS that the application is {req.finops_release} (build "
               f"{req.finops_build}) and platform update 33 or later")
    if not session.platform.lcs_configured or env.lcs_project_id is None or env.lcs_environment_id is None:
        return Check(name, StepStatus.WARNING, "not read: environments.lcs_project_id and lcs_environment_id "
                     "are not set", fix=f"set them (LCS API, environment metadata), or {by_hand}",
                     doc=SYSREQ_DOC)
    try:
        meta = session.platform.finops_environment(env.lcs_project_id, env.lcs_environment_id)
        build = str(meta.get("CurrentApplicationBuildVersion") or "")
        ok = release_ok(build, req)
    except ClientError as exc:
        return Check(name, StepStatus.WARNING, f"not read: {exc}", fix=exc.fix or by_hand, doc=SYSREQ_DOC)
    evidence = (f"LCS: application build {build}, platform {meta.get('CurrentPlatformVersion')}, "
                f"{meta.get('EnvironmentType')}")
    if not ok:
        return Check(name, StepStatus.FAILED,
                     f"{evidence}: older than {req.finops_release} ({req.finops_build})",
                     fix=f"update F&O to {req.finops_release} / platform update 33 or later (PU37 for the "
                         "5-minute export fix, 10.0.30 / PU54 for Reset link)", doc=SYSREQ_DOC)
    return Check(name, StepStatus.PASSED, f"{evidence}: {req.finops_release} ({req.finops_build}) or later")


def _dataverse_version_check(session: Session) -> Check:
    req, name = catalog.requirements(), "Dataverse version"
    try:
        version = session.dataverse.version()
        ok = release_of(version) >= release_of(req.dataverse_version)
    except ClientError as exc:
        return Check(name, StepStatus.WARNING,
                     f"not read: {exc}", fix="check the version in the Power Platform "
                     f"admin center: {req.dataverse_version} or later", doc=SYSREQ_DOC)
    if not ok:
        return Check(name, StepStatus.FAILED,
                     f"RetrieveVersion: {version}, older than {req.dataverse_version}",
                     fix=f"update the Dataverse environment to {req.dataverse_version} or later",
                     doc=SYSREQ_DOC)
    return Check(name, StepStatus.PASSED, f"RetrieveVersion: {version} ({req.dataverse_version} or later)")


def _platform_checks(params: Params, session: Session) -> list[Check]:
    """Not a trial, and the same geography, from the Power Platform admin API."""
    names, req = ("not a trial environment", "same geography"), catalog.requirements()
    try:
        environments = session.platform.environments()
    except ClientError as exc:
        return [Check(n, StepStatus.WARNING, f"not read: {exc}",
                      fix=exc.fix + "; or check in the Power Platform admin center", doc=PLATFORM_DOC)
                for n in names]
    env = params.environments

    def props(e: dict[str, Any]) -> dict[str, Any]:
        return e.get("properties") or {}

    dataverse = [e for e in environments if same_url(
        str((props(e).get("linkedEnvironmentMetadata") or {}).get("instanceUrl") or ""), env.dataverse_url)]
    finops = [e for e in environments if e not in dataverse and same_url(
        str((props(e).get("linkedAppMetadata") or {}).get("url") or ""), env.finops_url)] or [
        e for e in dataverse if props(e).get("linkedAppMetadata")]
    if not dataverse or not finops:
        missing = ("Dataverse environment" if not dataverse
                   else "Power Platform environment of the F&O environment")
        return [Check(n, StepStatus.WARNING, f"not read: the admin API lists no {missing}",
                      fix="sign in with a Power Platform administrator; or check in the admin center",
                      doc=PLATFORM_DOC) for n in names]
    trial = [e for e in finops if props(e).get("environmentSku") == req.trial_sku]
    sku = ", ".join(str(props(e).get("environmentSku")) for e in finops)
    out = [Check(names[0], StepStatus.FAILED, f"the F&O environment's Power Platform SKU is {sku}",
                 fix="dual-write is not supported on F&O trial instances: use a sandbox or production "
                     "environment", doc=SYSREQ_DOC) if trial else
           Check(names[0], StepStatus.PASSED, f"the F&O environment's Power Platform SKU is {sku}")]
    where = {"Dataverse": dataverse[0].get("location"), "F&O": finops[0].get("location")}
    seen = f"Dataverse in {where['Dataverse']}, F&O in {where['F&O']}"
    out.append(Check(names[1], StepStatus.PASSED, seen) if where["Dataverse"] == where["F&O"] else Check(
        names[1], StepStatus.FAILED, seen,
        fix="\"Power Platform environment geography must be the same logical geography\" as the F&O "
            "environment: use a Dataverse environment in its geography", doc=PLATFORM_DOC))
    return out


def _prospect_to_cash_check(session: Session) -> Check:
    pattern = re.compile(catalog.requirements().prospect_to_cash, re.IGNORECASE)
    found = [f"{r['uniquename']} ({r.get('friendlyname')})" for r in session.dataverse.solutions()
             if pattern.search(f"{r.get('uniquename') or ''} {r.get('friendlyname') or ''}")]
    if found:
        return Check("Prospect to cash", StepStatus.FAILED, f"installed: {', '.join(found)}",
                     fix="Prospect to cash can't run side by side with dual-write: uninstall it (migrate its "
                         "data first: 'Migrate Prospect to cash data from Data Integrator to dual-write')",
                     doc=SYSREQ_DOC)
    return Check("Prospect to cash", StepStatus.PASSED, "no Prospect to cash solution installed")


def _plugin_check(session: Session, setup: Setup) -> Check:
    """"The dual-write registration and runtime plugins are enabled": every step of both assemblies."""
    name, problems, absent, steps_seen = "dual-write plug-in steps", [], [], 0
    for assembly in catalog.requirements().plugin_assemblies:
        found = dataverse_rows(session, "pluginassemblies", select=["pluginassemblyid", "name"],
                               filter=f"name eq '{assembly}'")
        if not found:
            absent.append(assembly)
            continue
        types = dataverse_rows(session, "plugintypes", select=["plugintypeid", "typename"],
                               filter=f"_pluginassemblyid_value eq {found[0]['pluginassemblyid']}")
        for t in types:
            steps = dataverse_rows(session, "sdkmessageprocessingsteps", select=["name", "statecode"],
                                   filter=f"_plugintypeid_value eq {t['plugintypeid']}")
            steps_seen += len(steps)
            problems += [f"{assembly}: step '{s['name']}' is disabled" for s in steps
                         if s.get("statecode") != 0]
    if absent:
        return setup.check(name, setup.missing(), f"not registered: {', '.join(absent)}",
                           fix="install Dual Write Core (it brings the assemblies)", doc=REQUIREMENTS_DOC)
    if problems:
        return setup.check(name, setup.problem(), "; ".join(problems),
                           fix="enable every step of the dual-write plug-in assemblies (Plug-in Registration "
                               "tool, or reinstall Dual Write Core)", doc=REQUIREMENTS_DOC)
    assemblies = ", ".join(catalog.requirements().plugin_assemblies)
    return Check(name, StepStatus.PASSED, f"{steps_seen} steps of {assemblies} enabled")


def _app_user_roles_checks(session: Session, setup: Setup) -> list[Check]:
    out = []
    req = catalog.requirements()
    for user in (u for u in catalog.app_users() if u.side == "dataverse"):
        rows = dataverse_rows(session, "systemusers", select=["systemuserid"],
                              filter=f"applicationid eq {user.application_id} and isdisabled eq false")
        if rows:  # missing or disabled users are the application-user check's
            fix = (f"give it {req.system_administrator} (\"The user is not a member of the organization\" "
                   f"otherwise), or the {' and '.join(req.dual_write_roles)} roles")
            out.append(roles_check(f"roles of application user {user.application_id}",
                                   roles_of(session, user=rows[0]["systemuserid"]), fix,
                                   catalog.known_error("user-not-member").doc_url, none=setup.problem()))
    return out


def _finops_apps_check(admin: DualWriteAdmin, setup: Setup) -> Check:
    """The F&O-side Microsoft Entra applications: no documented read from outside. Before the link
    the LCS setup registers them; once linked, a running map shows dual-write works with them."""
    name = "F&O Microsoft Entra applications"
    apps = ", ".join(u.application_id for u in catalog.app_users() if u.side == "finops")
    by_hand = (f"check in F&O System administration > Setup > Microsoft Entra ID applications that {apps} "
               "are there, each with an enabled user")
    if not setup.linked:
        return setup.check(name, setup.missing(), f"{apps}: not readable from outside", fix=by_hand,
                           doc=REQUIREMENTS_DOC)
    running = sorted(n for n, s in admin.map_states().items() if s.running)
    if running:
        return Check(name, StepStatus.PASSED, f"{apps}: not readable from outside; dual-write is linked (the "
                     f"link's health check requires them) and {len(running)} maps run with them "
                     f"({running[0]}, …)",
                     doc=REQUIREMENTS_DOC)
    return Check(name, StepStatus.WARNING,
                 f"{apps}: not readable from outside, and no map runs to show them at "
                 "work", fix=by_hand, doc=REQUIREMENTS_DOC)


def _dmf_locale_check(session: Session) -> Check:
    """Every DMF file format in en-us: the initial sync's numbers are read as en-us."""
    by_hand = ("check in F&O: Data management > Source data formats > each file format > Regional settings: "
               "Language locale en-us")
    try:
        formats = [f for f in source_formats(session.finops) if (f.get("Type") or "File") == "File"]
    except ClientError as exc:
        return Check(DMF_LOCALE, StepStatus.WARNING, f"not read: {exc}", fix=by_hand, doc=LOCALE_DOC)
    other = [f"{f['SourceName']} ({f['LanguageLocale']})" for f in formats
             if (f.get("LanguageLocale") or "").lower() not in ("", INITIAL_SYNC_LOCALE)]
    unset = [str(f["SourceName"]) for f in formats if not f.get("LanguageLocale")]
    fix = LOCALE_FIX.format(format=", ".join(f.split(" (")[0] for f in other) or ", ".join(unset))
    if other:
        return Check(DMF_LOCALE, StepStatus.FAILED, f"source data formats in another Language locale than "
                     f"{INITIAL_SYNC_LOCALE}: {', '.join(other)}; the initial sync fails on their numbers "
                     "(\"Can't convert the literal … to the expected type 'Edm.Decimal'\")", fix=fix,
                     doc=LOCALE_DOC)
    if unset:
        return Check(DMF_LOCALE, StepStatus.WARNING, f"source data formats that name no Language locale (DMF "
                     f"then uses its user's): {', '.join(unset)}", fix=fix, doc=LOCALE_DOC)
    return Check(DMF_LOCALE, StepStatus.PASSED,
                 f"every file format's Language locale is {INITIAL_SYNC_LOCALE} "
                 f"({', '.join(str(f['SourceName']) for f in formats)})")


def _skipped(names: list[str], why: str) -> list[Check]:
    return [Check(n, StepStatus.SKIPPED, f"not checked: {why}") for n in names]


@register
class Preflight(Step):
    """The dual-write health check from outside: every check with evidence and the documented fix.

    Overall FAILED if any check fails, WARNING if any warns, else PASSED (checks of what a later
    step sets up are SKIPPED until then). Read-only.

    Example:
        Preflight().execute(ctx).summary  → "13 checks: 8 passed, 5 skipped, 0 warnings, 0 failed"
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
        fixes = [f"{c.name}: {c.fix}" for c in checks if c.status == StepStatus.FAILED and c.fix]
        return self.result(
            status, f"{len(checks)} checks: {count[StepStatus.PASSED]} passed, "
                    f"{count[StepStatus.SKIPPED]} skipped, {count[StepStatus.WARNING]} warnings, "
                    f"{count[StepStatus.FAILED]} failed", checks=checks,
            next_action="; ".join(fixes))

    def _checks(self, params: Params, session: Session, admin: DualWriteAdmin) -> list[Check]:
        dv_check = _reachable("Dataverse reachable", "WhoAmI", lambda: _whoami(session),
                              "check environments.dataverse_url and the app's application user")
        fo_check = _reachable("F&O reachable", "LegalEntities",
                              lambda: f"{len(finops_legal_entities(session))} legal entities",
                              "check environments.finops_url and the app's Microsoft Entra ID application")
        checks = [dv_check, fo_check, _finops_version_check(params, session),
                  *_platform_checks(params, session)]
        if dv_check.status == StepStatus.FAILED:
            return checks + _skipped(DATAVERSE_CHECKS, "Dataverse is not reachable")
        setup = _setup(params, admin)
        checks += _link_checks(params, admin, setup)
        checks.append(_dataverse_version_check(session))
        versions = solution_versions(session)
        core = catalog.required_solutions([])  # Dual Write Core alone: it brings cdm_companies
        checks += _solution_checks(versions, setup)
        checks += [_prospect_to_cash_check(session), _plugin_check(session, setup)]
        checks += _app_user_checks(session, setup)
        checks += _app_user_roles_checks(session, setup)
        checks.append(_finops_apps_check(admin, setup))
        checks.append(_company_rows_check(session, any(v for s, v in versions if s in core), setup))
        checks += (_scope_checks(params, session) if fo_check.status == StepStatus.PASSED
                   else _skipped(["legal entities"], "F&O is not reachable"))
        checks.append(_dmf_locale_check(session) if fo_check.status == StepStatus.PASSED
                      else _skipped([DMF_LOCALE], "F&O is not reachable")[0])
        checks.append(_root_team_check(session, setup))
        return checks

