"""Troubleshoot dual-write: findings matched to the known-error catalogue, debug mode when asked, a bundle.

`troubleshoot-findings` reads what the dual-write page shows and documented reads can reach: every
table map's state, the initial-sync details of each map that is not Running (the error texts where
the admin can read them: the gateway; the portal shows them only in the workspace, so the step says
where), and whether debug mode (`IsDebugMode` of the project configurations) is on. Each finding's
text is looked up in the known-error catalogue (`dwlib/catalog/known_errors.yaml`) and shown with
its documented fix. Failed live-sync writes made in Dataverse are read where a documented route
reaches them: the Dataverse plug-in trace log (`plugintracelogs`, the dual-write runtime's plug-in,
newest first), once the organization's `plugintracelogsetting` is Exception or All (when it is Off,
the step says how to turn it on). The dual-write error log (`DualWriteErrorLog`) has no documented
OData route: the finding names its table-browser page.

`troubleshoot-debug` acts only when `troubleshoot.debug_minutes` asks for it and the consultant
confirms: it switches debug mode on (`IsDebugMode` = Yes on every project configuration, the write the
documented Excel add-in route makes through the data entity), holds for those minutes (at most 60)
while the consultant reproduces the problem, then switches it off again, also when the wait is
interrupted, and reads `IsDebugMode` again to verify. The verbose errors land in `DualWriteErrorLog`,
which has no documented OData route: the step names its table-browser page and the window's times.

`troubleshoot-bundle` writes a support bundle beside the run's evidence: a zip of the run record so
far, the evidence files and the HTTP calls of the run (method, URL without secrets, status, request
id), every text scrubbed of secrets and tokens; then scans every byte of the zip for them.

Example:
    >>> error_log_url("https://contoso.operations.dynamics.com/")
    'https://contoso.operations.dynamics.com/?mi=SysTableBrowser&tableName=DualWriteErrorLog'
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.errors import DwError
from dwlib.secrets import known_secrets, scrub
from dwlib.text import learn_url
from dwlib.vocab import MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .health import maps_in_scope, state_checks
from .maintenance import catch_up_check

TROUBLESHOOT_DOC = DOCS_ROOT + "dual-write-troubleshooting"
BUNDLE = "support-bundle.zip"
FINDING_COLUMNS = ["source", "map", "text", "known_error", "fix", "doc"]
PROJECTS = "DualWriteProjectConfigurations"
# The plug-in trace log (logging-tracing.md): the organization's setting, and the dual-write runtime's
# plug-ins as dual-write-troubleshooting.md names them (…DualWriteRuntime.Plugins.PreCommmitPlugin).
TRACE_SETTINGS = {0: "Off", 1: "Exception", 2: "All"}
TRACING_OFF = TRACE_SETTINGS[0]
TRACING_DOC = learn_url("en", "pa/logging-tracing")
TRACING_FIX = ("to see why live sync refuses writes made in Dataverse, set Settings > Administration > "
               "System Settings > Customization > plug-in and custom workflow activity tracing to Exception, "
               "reproduce, run this runbook again, then set it back to Off (the log uses storage)")
DUAL_WRITE_PLUGINS = "Microsoft.Dynamics.Integrator.DualWriteRuntime"
TRACE_ROWS = 50
DEBUG_ON, DEBUG_OFF = "Yes", "No"  # IsDebugMode as F&O OData carries a NoYes enum: by name
DEBUG_BY_HAND = ("set IsDebugMode = No on every project of the DualWriteProjectConfigurationEntity entity "
                 "(Excel add-in), then run the runbook again: verbose logging stays on until then")


def error_log_url(finops_url: str) -> str:
    """The table browser page of the dual-write error log (dual-write-troubleshooting.md)."""
    return f"{finops_url.rstrip('/')}/?mi=SysTableBrowser&tableName=DualWriteErrorLog"


def finding(source: str, map_name: str, text: str, phase: str | None = None) -> dict[str, Any]:
    """One finding, with the catalogue's known error and documented fix when the text is known (an
    error of `phase` first)."""
    known = catalog.match_error(text, phase)
    return {"source": source, "map": map_name, "text": scrub(text),
            "known_error": known.id if known else "", "fix": known.fix if known else "",
            "doc": known.doc_url if known else ""}


class _ReadOnly(Step):
    read_only = True

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step: execute never acts")


@register
class TroubleshootFindings(_ReadOnly):
    """Map states, initial-sync details and debug mode, each finding matched to a known error.

    Example:
        >>> TroubleshootFindings.read_only
        True
    """

    name = "troubleshoot-findings"
    title = "Troubleshoot: findings and their documented fixes"
    doc_url = TROUBLESHOOT_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        maps = maps_in_scope(params)
        checks, _ = state_checks(admin, maps)
        rows = []
        for name, state in admin.map_states(maps).items():
            if state.state == MapState.RUNNING:
                continue
            details = admin.initial_sync_details(name)
            rows += [finding("initial sync", name, e.message) for e in details.errors]
            if not details.errors:
                rows.append(finding("initial sync", name, f"{name} is {state.state} after its initial sync "
                                                          f"({details.status}); {details.note}".rstrip("; ")))
        debug = _debug_modes(session)
        checks.append(Check("debug mode (IsDebugMode)",
                            StepStatus.WARNING if debug else StepStatus.PASSED,
                            f"on for {', '.join(debug)}" if debug else "off in every project configuration",
                            fix="" if not debug else "set IsDebugMode back to No once the scenario is "
                                "reproduced: verbose logging stays on until then",
                            doc=TROUBLESHOOT_DOC))
        checks.append(Check("dual-write error log", StepStatus.SKIPPED,
                            f"no documented OData route: read it at "
                            f"{error_log_url(str(params.environments.finops_url))}",
                            fix="switch debug mode on for the project (IsDebugMode = Yes), reproduce, read "
                                "the log, switch it off", doc=TROUBLESHOOT_DOC))
        checks.append(catch_up_check(StepStatus.SKIPPED, "no documented read reaches them"))
        tracing = trace_setting(session)
        if tracing == TRACING_OFF:
            checks.append(Check("plug-in trace log", StepStatus.SKIPPED,
                                "off (organization setting Off): a live-sync write refused from Dataverse "
                                "leaves no trace", fix=TRACING_FIX, doc=TRACING_DOC))
        else:
            traces = live_sync_failures(session)
            rows += [finding("live sync (plug-in trace log)", _traced_map(maps, t.get("primaryentity")),
                             f"{t.get('createdon', '')} {t.get('messagename', '')} "
                             f"{t.get('primaryentity', '')}: {t.get('exceptiondetails', '')}", "live-sync")
                     for t in traces]
            checks.append(Check("plug-in trace log", StepStatus.PASSED,
                                f"{tracing}: {len(traces)} refused live-sync writes from Dataverse "
                                f"(the newest {TRACE_ROWS} at most)",
                                fix="set plug-in tracing back to Off once the problem is understood: the "
                                    "log uses the organization's storage", doc=TRACING_DOC))
        return Finding(True, "read-only", todo=rows, checks=checks)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        rows: list[dict[str, Any]] = finding.todo
        checks = list(finding.checks)
        for row in rows:
            checks.append(Check(f"{row['source']} {row['map']}", StepStatus.FAILED, row["text"],
                                fix=row["fix"] or "not in the known-error catalogue: search the text on "
                                                  "Microsoft Learn and the dual-write troubleshooting pages",
                                doc=row["doc"] or TROUBLESHOOT_DOC))
        csv = ctx.write_csv("troubleshoot-findings.csv", rows, FINDING_COLUMNS)
        known = sum(bool(r["known_error"]) for r in rows)
        status = worst(checks) if checks else StepStatus.PASSED
        # Findings are what the runbook is for: the run reports them, it does not stop on them.
        status = StepStatus.WARNING if status == StepStatus.FAILED else status
        return self.result(status, f"{len(rows)} findings, {known} of them known errors with their fix",
                           checks=checks, tables={"findings": rows},
                           counts={"findings": len(rows), "known_errors": known},
                           evidence_files=[str(csv)])


def _projects(session: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = list(session.finops.query(
        PROJECTS, select=["RecId", "ProjectName", "IsDebugMode"], cross_company=True))
    return rows


def trace_setting(session: Any) -> str:
    """The organization's plug-in trace log setting by name (Off, Exception, All). StepError on a value
    the documentation does not name."""
    rows = list(session.dataverse.query("organizations", select=["plugintracelogsetting"], top=1))
    value = rows[0].get("plugintracelogsetting") if rows else None
    if value not in TRACE_SETTINGS:
        known = ", ".join(f"{k} {v}" for k, v in TRACE_SETTINGS.items())
        raise StepError(f"the organization's plugintracelogsetting is {value!r}, which is none of the values "
                        f"logging-tracing.md documents ({known}): check the environment, and this runbook's "
                        "version")
    return TRACE_SETTINGS[value]


def live_sync_failures(session: Any) -> list[dict[str, Any]]:
    """The dual-write plug-in's failures in the Dataverse plug-in trace log, newest first."""
    return list(session.dataverse.query(
        "plugintracelogs", select=["createdon", "messagename", "primaryentity", "exceptiondetails"],
        filter=f"startswith(typename,'{DUAL_WRITE_PLUGINS}') and exceptiondetails ne null",
        orderby="createdon desc", top=TRACE_ROWS))


def _traced_map(maps: list[str], table: str | None) -> str:
    """The maps in scope over Dataverse table `table` (logical name), or the table when none is."""
    over = [n for n in maps if catalog.table_map(n).dataverse_logical == table]
    return ", ".join(over) or str(table or "")


def _debug_modes(session: Any) -> list[str]:
    return sorted({r["ProjectName"] for r in _projects(session) if str(r.get("IsDebugMode")) == DEBUG_ON})


def _switch_debug(session: Any, value: str) -> int:
    """Set IsDebugMode to `value` on every project configuration not at it yet; how many changed."""
    rows = [r for r in _projects(session) if str(r.get("IsDebugMode")) != value]
    for row in rows:
        session.finops.update(PROJECTS, {"RecId": row["RecId"]}, {"IsDebugMode": value})
    return len(rows)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@register
class TroubleshootDebug(Step):
    """Debug mode for `troubleshoot.debug_minutes` (confirmed), then off again, whatever happens.

    Example:
        >>> TroubleshootDebug.name, TroubleshootDebug.read_only
        ('troubleshoot-debug', False)
    """

    name = "troubleshoot-debug"
    title = "Troubleshoot: debug mode for a bounded time"
    doc_url = TROUBLESHOOT_DOC

    def check(self, ctx: StepContext) -> Finding:
        params, _, _ = environment(ctx)
        minutes = params.troubleshoot.debug_minutes
        if not minutes:
            return Finding(True, "debug mode not asked (troubleshoot.debug_minutes: 0)", todo=minutes)
        return Finding(False, f"switch debug mode (IsDebugMode) on for {minutes:g} minute(s) while the "
                              f"scenario is reproduced, then off again", todo=minutes)

    def confirmation(self, ctx: StepContext, finding: Finding) -> str:
        return (f"Debug mode writes verbose errors, which can hold personal data, to the dual-write error "
                f"log of finance and operations for {finding.todo:g} minute(s); the step switches it off "
                f"again afterwards.")

    def act(self, ctx: StepContext, finding: Finding) -> None:
        params, session, admin = environment(ctx)
        log = error_log_url(str(params.environments.finops_url))
        window: dict[str, Any] = {"from": _now()}
        ctx.run_state[self.name] = window
        try:
            window["switched_on"] = _switch_debug(session, DEBUG_ON)
            ctx.say(f"Debug mode is on until {finding.todo:g} minute(s) have passed: reproduce the scenario "
                    f"now. The verbose errors land in the dual-write error log: {log}")
            admin.hold(finding.todo * 60)
        finally:
            window["to"] = _now()
            try:
                window["switched_off"] = _switch_debug(session, DEBUG_OFF)
            except DwError as exc:
                raise StepError(f"debug mode could not be switched off again ({exc}): "
                                f"{DEBUG_BY_HAND}") from exc

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, _ = environment(ctx)
        on = _debug_modes(session)
        window: dict[str, Any] = ctx.run_state.get(self.name, {}) if not finding.done else {}
        checks = [Check("debug mode off (IsDebugMode)", StepStatus.PASSED if not on else
                        StepStatus.WARNING if finding.done else StepStatus.FAILED,
                        f"on for {', '.join(on)}" if on else "off in every project configuration",
                        fix=DEBUG_BY_HAND if on else "", doc=TROUBLESHOOT_DOC)]
        if not window:
            return self.result(worst(checks), finding.summary, checks=checks)
        log = error_log_url(str(params.environments.finops_url))
        checks.append(Check("dual-write error log", StepStatus.SKIPPED,
                            f"debug mode was on from {window['from']} to {window['to']} (UTC): read the "
                            f"log's rows of that window at {log}", doc=TROUBLESHOOT_DOC))
        summary = f"debug mode was on for {finding.todo:g} minute(s) and is off again"
        return self.result(worst(checks), summary,
                           checks=checks, next_action=f"Read the dual-write error log at {log}",
                           counts={"switched_on": window.get("switched_on", 0),
                                   "switched_off": window.get("switched_off", 0)})


@dataclass
class Bundle:
    path: Path
    secrets: list[str]


@register
class TroubleshootBundle(_ReadOnly):
    """A support bundle (zip: record, evidence, the run's HTTP calls) that holds no secret.

    Example:
        >>> TroubleshootBundle.name
        'troubleshoot-bundle'
    """

    name = "troubleshoot-bundle"
    title = "Troubleshoot: support bundle"
    doc_url = TROUBLESHOOT_DOC

    def check(self, ctx: StepContext) -> Finding:
        stem = ctx.evidence_dir.name.removesuffix("-evidence")
        record = ctx.evidence_dir.parent / f"{stem}.json"
        path = ctx.evidence_dir / BUNDLE
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            if record.is_file():
                data = json.loads(record.read_text(encoding="utf-8"))
                zf.writestr("record.json", scrub(json.dumps(data, indent=2)))
                calls = [c for s in data.get("steps") or [] for c in s.get("calls") or []]
                zf.writestr("responses.json", scrub(json.dumps(calls, indent=2)))
            for file in sorted(ctx.evidence_dir.rglob("*")):
                if file.is_file() and file.name != BUNDLE:
                    zf.writestr(f"evidence/{file.relative_to(ctx.evidence_dir)}",
                                scrub(file.read_text(encoding="utf-8", errors="replace")))
        path.write_bytes(buffer.getvalue())
        return Finding(True, "read-only", todo=Bundle(path, known_secrets()))

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        bundle: Bundle = finding.todo
        raw = bundle.path.read_bytes()
        with zipfile.ZipFile(bundle.path) as zf:
            texts = b"".join(zf.read(n) for n in zf.namelist())
        leaked = [s for s in bundle.secrets if s and (s.encode() in raw or s.encode() in texts)]
        check = Check("no secret in the bundle", StepStatus.FAILED if leaked else StepStatus.PASSED,
                      f"{len(leaked)} secret(s) found" if leaked
                      else f"every byte scanned for {len(bundle.secrets)} secret(s) and token(s): none")
        return self.result(check.status, f"support bundle {bundle.path.name} ({len(raw):,} bytes)",
                           checks=[check], evidence_files=[str(bundle.path)],
                           counts={"bundle_bytes": len(raw)})
