"""Review's output formats: the catalogue as a table, JSON or a standalone HTML page; one run as
text and as the tables its charts are drawn from; a comparison as text; and where the text goes.
A run's HTML report is `dwlib.report`, built on these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dwlib.record import call_totals, relative_to
from dwlib.render import badge, esc, fmt_seconds, result_text

from .runs import NOT_RUN, Run, live_status, steps_in_order


def _host(url: str | None) -> str:
    return (url or "").split("://", 1)[-1]


def _clip(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def catalogue_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The catalogue as the table people read: start, run, scenario, status, duration, Dataverse,
    steps done, the failing step and its error."""
    return pd.DataFrame([{
        "started": r["started"] or "", "run": (r["run_id"] or "")[:8], "scenario": r["scenario"],
        "status": r["status"], "duration": fmt_seconds(r["duration_s"]),
        "dataverse": _host(r["dataverse_url"]), "steps": f"{r['steps_done'] or 0}/{r['steps_planned'] or 0}",
        "failed step": r["failed_step"] or "", "error": _clip(r["error"], 90),
    } for r in rows], columns=["started", "run", "scenario", "status", "duration", "dataverse", "steps",
                               "failed step", "error"])


def catalogue_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The catalogue as a text table, with a count per status underneath.

    >>> print(catalogue_text([]))
    no runs found
    """
    if not rows:
        return "no runs found"
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{catalogue_frame(rows).to_string(index=False)}\n{len(rows)} runs: {tally}"


def catalogue_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """The catalogue as a JSON list of objects (every column of `CATALOGUE_COLUMNS`)."""
    return json.dumps(list(rows), indent=1, default=str)


# Scoped to .dw so the summary keeps its look inside nbconvert's page too.
CSS = """
.dw{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328}
.dw table{width:auto;border-collapse:collapse;margin:.5rem 0 1rem}.dw th,.dw td{border:1px solid #d0d7de;
padding:3px 8px;text-align:left !important;vertical-align:top;font-size:.9rem}.dw th{background:#f6f8fa}
.dw .dw-status{color:#fff;border-radius:4px;padding:1px 6px;font-weight:600}.dw code{font-size:.85rem}
#dw-summary{border:2px solid #d0d7de;border-radius:8px;padding:1rem;margin:1rem 0 2rem}
"""


def page(title: str, body: str) -> str:
    """A standalone HTML page (inline CSS, no scripts): opens anywhere without Jupyter or network."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><div class="dw">{body}</div></body></html>')


def _link(target: str | None, base: Path | None, text: str) -> str:
    if not target:
        return ""
    href = relative_to(target, base) if base else Path(target).as_uri()
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def catalogue_html(rows: Sequence[Mapping[str, Any]], base: Path | None = None) -> str:
    """The catalogue as a standalone HTML page; links to each run's report and notebook are
    relative to `base` (the directory the page is written to)."""
    body = []
    for r in rows:
        report = Path(r["record"]).with_suffix(".html") if r.get("record") else None
        links = " ".join(filter(None, [
            _link(str(report), base, "report") if report and report.is_file() else "",
            _link(r.get("notebook"), base, "notebook"), _link(r.get("record"), base, "record")]))
        body.append(
            f"<tr><td>{esc(r['started'])}</td><td><code>{esc((r['run_id'] or '')[:8])}</code></td>"
            f"<td>{esc(r['scenario'])}</td><td>{badge(r['status'])}</td>"
            f"<td>{esc(fmt_seconds(r['duration_s']))}</td><td>{esc(_host(r['dataverse_url']))}<br>"
            f"{esc(_host(r['finops_url']))}</td><td>{esc(r['failed_step'])}</td><td>{esc(r['error'])}</td>"
            f"<td>{links}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("started", "run", "scenario", "status", "duration",
                                              "environments", "failed step", "error", "files"))
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return page("Dual-write runs", f"<h1>Dual-write runs</h1><p>{len(rows)} runs</p>{table}")


def header_lines(run: Run) -> list[str]:
    """Who, what, where and when of a run, as text lines."""
    r = run.record
    env = r.get("environments") or {}
    observed = env.get("observed") or {}
    lib = r.get("dwlib") or {}
    revision = lib.get("git_revision") or "unknown revision"
    lines = [
        f"run {r['run_id']} — {r.get('scenario')}: {live_status(r)}"
        + (f" at step {r['failed_step']}" if r.get("failed_step") else ""),
        f"  started {r.get('started')}, ended {r.get('ended') or '—'} "
        f"({fmt_seconds(r.get('duration_s')) or '—'})" + ("; DRY RUN" if r.get("dry_run") else ""),
        f"  Dataverse {env.get('dataverse_url')} (organization {observed.get('organization_id') or '?'})",
        f"  finance and operations {env.get('finops_url')}",
        f"  tenant {observed.get('tenant_id') or env.get('tenant_id')}",
        f"  dwlib {lib.get('version')} ({revision}{', local edits' if lib.get('git_dirty') else ''})",
    ]
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    if run.from_notebook:
        lines.append(f"  (rebuilt from the notebook {run.notebook_path}: no record beside it)")
    else:
        notebook = f"; notebook {run.notebook_path}" if run.notebook_path else ""
        lines.append(f"  record {run.record_path}{notebook}")
    return lines


def show_text(run: Run) -> str:
    """One run step by step: header, every planned step's result (or `not run`), HTTP summary,
    evidence files."""
    lines = header_lines(run)
    for step_id, result in steps_in_order(run.record):
        lines.append("")
        lines.append(result_text(result) if result else f"[{NOT_RUN.upper()}] {step_id}")
    http = run.record.get("http") or {}
    lines += ["", f"HTTP: {http.get('calls', 0)} calls, {http.get('failed', 0)} answered ≥ 400, "
                  f"{http.get('retries', 0)} retries ({http.get('throttled_retries', 0)} throttled), "
                  f"{http.get('wait_s', 0.0)} s waited, {http.get('throttled_wait_s', 0.0)} s of it on "
                  f"throttling"]
    for entry in run.record.get("evidence") or []:
        lines.append(f"evidence {entry['path']} ({entry['bytes']:,} bytes, sha256 {entry['sha256'][:16]}…)")
    return "\n".join(lines)


def step_durations(record: Mapping[str, Any]) -> pd.DataFrame:
    """Seconds per step (steps not run are absent)."""
    return pd.DataFrame([{"step": s, "status": r["status"], "seconds": r.get("duration_s", 0.0)}
                         for s, r in steps_in_order(record) if r], columns=["step", "status", "seconds"])


def rows_per_company(record: Mapping[str, Any]) -> pd.DataFrame:
    """Rows per table map per company on both sides, from the last reconciliation the run made
    (verify's, else migrate's, else the initial sync's)."""
    for step in reversed(record.get("steps", [])):
        for rows in (step.get("tables") or {}).values():
            if rows and {"map", "company", "finops_rows", "dataverse_rows"} <= set(rows[0]):
                return pd.DataFrame([{k: row[k] for k in ("map", "company", "finops_rows", "dataverse_rows")}
                                     for row in rows])
    return pd.DataFrame(columns=["map", "company", "finops_rows", "dataverse_rows"])


def throttling(record: Mapping[str, Any]) -> pd.DataFrame:
    """Per step: calls, retries, throttled retries (429), seconds spent waiting on throttling and
    on other retries (5xx, dropped connections)."""
    out = []
    for step_id, r in steps_in_order(record):
        t = call_totals(r or {})
        out.append({"step": step_id, "calls": t["calls"], "retries": t["retries"],
                    "throttled": t["throttled_retries"], "throttled_wait_s": round(t["throttled_wait_s"], 3),
                    "other_wait_s": round(t["wait_s"] - t["throttled_wait_s"], 3)})
    return pd.DataFrame(out, columns=["step", "calls", "retries", "throttled", "throttled_wait_s",
                                      "other_wait_s"])


def comparison_text(c: Mapping[str, Any]) -> str:
    """A comparison (`compare`) as text: one section per kind of difference."""
    lines = [f"A: {c['a']['name']} ({c['a']['scenario']}, {c['a']['status']}, started {c['a']['started']})",
             f"B: {c['b']['name']} ({c['b']['scenario']}, {c['b']['status']}, started {c['b']['started']})"]
    sections = (("parameters", "key"), ("environments", "key"), ("steps", "step"))
    for name, key in sections:
        rows = c[name]
        lines.append(f"\n{name}: " + ("no differences" if not rows else f"{len(rows)} differ"))
        lines += [f"  {r[key]}: {json.dumps(r['a'], default=str)} → {json.dumps(r['b'], default=str)}"
                  for r in rows]
    lines.append("\ncounts: " + ("no differences" if not c["counts"] else f"{len(c['counts'])} differ"))
    for r in c["counts"]:
        diff = f" ({r['difference']:+,})" if r["difference"] is not None else ""
        lines.append(f"  {r['step']} {r['count']}: {r['a']} → {r['b']}{diff}")
    return "\n".join(lines)


def write_text(text: str, out: Path | None) -> None:
    """Print `text`, or write it to `out` (creating its directory)."""
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
