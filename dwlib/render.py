"""Step results for people: an HTML rendering for Jupyter and a text form for headless logs.

Both work on the JSON form of a result (`StepResult.to_dict()`, as the run record stores it), so
a result renders the same live in a notebook and later from a record. Tables become pandas
DataFrames. This module sits at the bottom of the package: it imports nothing of `dwlib`.

Example:
    >>> print(result_text({"step": "plan", "title": "Plan the initial sync", "status": "passed",
    ...                    "summary": "2 maps", "duration_s": 1.5, "calls": [{}, {}]}))
    [PASSED] plan: Plan the initial sync (1.5 s, 2 calls)
      2 maps
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

PROGRESS_EVERY_S = 5.0
TEXT_ROWS = 20  # rows of a table shown in a headless log (the record keeps them all)
COLOURS = {
    "passed": "#1a7f37", "already_done": "#1a7f37", "skipped": "#6e7781", "waiting": "#9a6700",
    "warning": "#9a6700", "failed": "#cf222e",
}
MARKS = {"passed": "✓", "already_done": "✓", "skipped": "–", "waiting": "…", "warning": "!", "failed": "✗"}


class TextProgress:
    """Progress as printed lines, at most one every `PROGRESS_EVERY_S` (readable in Jupyter and in
    headless logs); a `dwlib.steps.base.ProgressFactory`.

    >>> p = TextProgress("rows", 4); p.update(2); p.close()
    rows: 2/4 (50%)
    """

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self._print()

    def close(self) -> None:
        self._print()

    def _print(self) -> None:
        self._last = time.monotonic()
        of = f"/{self.total:,} ({self.done / self.total:.0%})" if self.total else ""
        print(f"{self.label}: {self.done:,}{of}", flush=True)


def _label(status: str) -> str:
    return status.replace("_", " ").upper()


def _head(r: Mapping[str, Any]) -> str:
    calls = len(r.get("calls") or [])
    timing = f"{r.get('duration_s', 0.0):.1f} s, {calls} call{'s' if calls != 1 else ''}"
    return f"{r['step']}: {r.get('title', '')} ({timing})"


def _remediation_lines(r: Mapping[str, Any]) -> list[str]:
    out = []
    for rem in r.get("remediation") or []:
        parts = [rem.get("meaning", ""), f"Fix: {rem['fix']}" if rem.get("fix") else "", rem.get("doc", "")]
        out.append(" ".join(p for p in parts if p))
    return out


def frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A table of a result (list of row dicts) as a DataFrame, columns in first-seen order.

    >>> list(frame([{"map": "a", "rows": 1}, {"map": "b", "note": "x"}]).columns)
    ['map', 'rows', 'note']
    """
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pd.DataFrame(list(rows), columns=list(columns))


def result_text(r: Mapping[str, Any]) -> str:
    """The plain-text form of a result: status, summary, checks, tables, next action."""
    lines = [f"[{_label(r['status'])}] {_head(r)}", f"  {r.get('summary', '')}"]
    if r.get("error") and r["error"] != r.get("summary"):
        lines.append(f"  error: {r['error']}")
    for c in r.get("checks") or []:
        fix = f" — fix: {c['fix']}" if c.get("fix") and c["status"] not in ("passed", "already_done") else ""
        lines.append(f"  {MARKS.get(c['status'], '?')} {c['name']}: {c['evidence']}{fix}")
    for name, rows in (r.get("tables") or {}).items():
        lines.append(f"  {name} ({len(rows)} row{'s' if len(rows) != 1 else ''}):")
        if rows:
            shown = frame(rows[:TEXT_ROWS]).to_string(index=False)
            lines += [f"    {line}" for line in shown.splitlines()]
            if len(rows) > TEXT_ROWS:
                lines.append(f"    … {len(rows) - TEXT_ROWS} more in the run record")
    if r.get("counts"):
        lines.append("  counts: " + ", ".join(f"{k}={v:,}" for k, v in r["counts"].items()))
    lines += [f"  evidence: {f}" for f in r.get("evidence_files") or []]
    lines += [f"  remediation: {line}" for line in _remediation_lines(r)]
    if r.get("next_action"):
        lines.append(f"  next: {r['next_action']}")
    if r.get("doc_url"):
        lines.append(f"  docs: {r['doc_url']}")
    return "\n".join(lines)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _badge(status: str) -> str:
    colour = COLOURS.get(status, "#6e7781")
    return (f'<span style="background:{colour};color:#fff;border-radius:4px;padding:1px 6px;'
            f'font-weight:600">{_e(_label(status))}</span>')


def _link(url: str, text: str | None = None) -> str:
    return f'<a href="{_e(url)}" target="_blank" rel="noopener">{_e(text or url)}</a>' if url else ""


def _items(title: str, items: Iterable[str]) -> str:
    body = "".join(f"<li>{i}</li>" for i in items)
    return f"<p><b>{title}</b></p><ul>{body}</ul>" if body else ""


def result_html(r: Mapping[str, Any]) -> str:
    """The HTML form of a result, for Jupyter: badge, summary, checks, tables, next action."""
    parts = [f'<div class="dw-step-result" data-status="{_e(r["status"])}">',
             f"<p>{_badge(r['status'])} <b>{_e(_head(r))}</b></p>", f"<p>{_e(r.get('summary', ''))}</p>"]
    if r.get("error") and r["error"] != r.get("summary"):
        parts.append(f"<p><b>Error:</b> <code>{_e(r['error'])}</code></p>")
    checks = r.get("checks") or []
    if checks:
        rows = "".join(
            f"<tr><td>{_badge(c['status'])}</td><td>{_e(c['name'])}</td><td>{_e(c['evidence'])}</td>"
            f"<td>{_e(c.get('fix', ''))} {_link(c.get('doc', ''), 'docs')}</td></tr>" for c in checks)
        parts.append("<table><thead><tr><th>status</th><th>check</th><th>evidence</th><th>fix</th></tr>"
                     f"</thead><tbody>{rows}</tbody></table>")
    for name, rows in (r.get("tables") or {}).items():
        parts.append(f"<p><b>{_e(name)}</b> ({len(rows)} rows)</p>")
        if rows:
            parts.append(frame(rows).to_html(index=False, escape=True, max_rows=200))
    if r.get("counts"):
        parts.append(_items("Counts", (f"{_e(k)}: {v:,}" for k, v in r["counts"].items())))
    parts.append(_items("Evidence files", (_e(f) for f in r.get("evidence_files") or [])))
    parts.append(_items("Remediation", (_e(line) for line in _remediation_lines(r))))
    if r.get("next_action"):
        parts.append(f"<p><b>Next:</b> {_e(r['next_action'])}</p>")
    if r.get("doc_url"):
        parts.append(f"<p>Microsoft Learn: {_link(r['doc_url'])}</p>")
    parts.append("</div>")
    return "".join(parts)


def summary_rows(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per step result: id, status, seconds, calls, summary (the run's overview table).

    >>> summary_rows([{"id": "plan", "step": "plan", "status": "passed", "summary": "ok"}])
    [{'step': 'plan', 'status': 'passed', 'seconds': 0.0, 'calls': 0, 'summary': 'ok'}]
    """
    return [{"step": r.get("id", r["step"]), "status": r["status"],
             "seconds": round(r.get("duration_s", 0.0), 1), "calls": len(r.get("calls") or []),
             "summary": r.get("summary", "")} for r in results]
