"""Step results for people: an HTML rendering for Jupyter and a text form for headless logs.

Both work on the JSON form of a result (`StepResult.to_dict()`, as the run record stores it), so
a result renders the same live in a notebook and later from a record. Tables become pandas
DataFrames. Results render in the run's language (its `language` parameter): statuses, column and
section names come from `dwlib/text/<language>/labels.yaml`. This module sits at the bottom of the
package: it imports nothing of `dwlib` but its vocabulary (`dwlib.vocab`) and those words
(`dwlib.text`).

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

from dwlib.text import status_word, word
from dwlib.vocab import RunStatus, StepStatus, Unfinished

# The machine-readable copy of a step result inside a notebook's outputs: with it, the executed
# notebook alone is enough to review a run (`dwlib.review` reads it when the record is missing).
RESULT_MIME = "application/vnd.dwlib.step-result+json"
PROGRESS_EVERY_S = 5.0
TEXT_ROWS = 20  # rows of a table shown in a headless log (the record keeps them all)
_GREY, _BLUE = "#6e7781", "#0969da"
COLOURS: dict[str, str] = {
    StepStatus.PASSED: "#1a7f37", StepStatus.ALREADY_DONE: "#1a7f37", StepStatus.SKIPPED: "#6e7781",
    StepStatus.WAITING: "#9a6700", StepStatus.WARNING: "#9a6700", StepStatus.FAILED: "#cf222e",
    RunStatus.INTERRUPTED: "#9a6700",
}
HTML_ROWS = 200  # rows of a table shown in a notebook (the record keeps them all)
# Background of a table row needing attention (see `attention`), by how bad it is.
ATTENTION: dict[str, str] = {StepStatus.FAILED: "#ffebe9", StepStatus.WARNING: "#fff8c5"}
MARKS: dict[str, str] = {StepStatus.PASSED: "✓", StepStatus.ALREADY_DONE: "✓", StepStatus.SKIPPED: "–",
                         StepStatus.WAITING: "…", StepStatus.WARNING: "!", StepStatus.FAILED: "✗"}


class TextProgress:
    """Progress as printed lines, at most one every `every_s` seconds (readable in Jupyter and in
    headless logs); a `dwlib.steps.base.ProgressFactory`. Subclasses show it elsewhere by
    overriding `_show` (e.g. `dwlib.ui.WidgetProgress`, a bar).

    >>> p = TextProgress("rows", 4); p.update(2); p.close()
    rows: 2/4 (50%)
    """

    every_s = PROGRESS_EVERY_S

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._show()

    def close(self) -> None:
        self._show()

    def _show(self) -> None:
        of = f"/{self.total:,} ({self.done / self.total:.0%})" if self.total else ""
        print(f"{self.label}: {self.done:,}{of}", flush=True)


def _label(status: str, language: str = "en") -> str:
    return status_word(language, status).upper()


def esc(value: Any) -> str:
    """`value` as escaped HTML text (None: empty).

    >>> esc("<b> & co"), esc(None)
    ('&lt;b&gt; &amp; co', '')
    """
    return html.escape("" if value is None else str(value))


def badge(status: str, label: str | None = None) -> str:
    """A status as a coloured label (HTML, styled inline so it needs no page CSS): the status's
    colour, blue while running, grey for a status without one; `label` defaults to the status.

    >>> badge("already_done")
    '<span class="dw-status" data-status="already_done" style="background:#1a7f37;color:#fff;\
border-radius:4px;padding:1px 6px;font-weight:600">already done</span>'
    """
    colour = COLOURS.get(status, _BLUE if status == Unfinished.RUNNING else _GREY)
    text = label or status.replace("_", " ")
    return (f'<span class="dw-status" data-status="{esc(status)}" style="background:{colour};color:#fff;'
            f'border-radius:4px;padding:1px 6px;font-weight:600">{esc(text)}</span>')


def seconds_text(seconds: float) -> str:
    """A measured duration, to a tenth of a second (step and run timings).

    >>> seconds_text(1.25)
    '1.2 s'
    """
    return f"{seconds:.1f} s"


def fmt_seconds(seconds: float | None) -> str:
    """Seconds for people: `42 s`, `3 min 5 s`, `1 h 2 min`.

    >>> fmt_seconds(185), fmt_seconds(None)
    ('3 min 5 s', '')
    """
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def call_count(r: Mapping[str, Any]) -> int:
    """The calls a step result made (its `calls` may keep only some: then its `calls_summary` counts).

    >>> call_count({"calls": [{}]}), call_count({"calls": [{}], "calls_summary": {"calls": 900}})
    (1, 900)
    """
    return int((r.get("calls_summary") or {}).get("calls", len(r.get("calls") or [])))


def _head(r: Mapping[str, Any], language: str = "en") -> str:
    calls = call_count(r)
    said = word(language, "call" if calls == 1 else "calls")
    timing = f"{seconds_text(r.get('duration_s', 0.0))}, {calls} {said}"
    return f"{r['step']}: {r.get('title', '')} ({timing})"


def _remediation_lines(r: Mapping[str, Any], language: str = "en") -> list[str]:
    out = []
    fix = word(language, "fix").capitalize()
    for rem in r.get("remediation") or []:
        parts = [rem.get("meaning", ""), f"{fix}: {rem['fix']}" if rem.get("fix") else "", rem.get("doc", "")]
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


def attention(row: Mapping[str, Any]) -> str:
    """Whether a plan or reconciliation row needs the consultant's eye: "failed", "warning" or "".

    Failed: a status that is a failure (FAIL, failed, error) or keys missing on a side. Warning: a
    status that warns or waits, a map the plan migrates around the initial sync, Dataverse rows
    without a company, rows with double quotes (a documented initial-sync error).

    >>> attention({"map": "a", "status": "PASS"}), attention({"missing_in_finops": 2, "status": "FAIL"})
    ('', <StepStatus.FAILED: 'failed'>)
    >>> attention({"map": "b", "action": "migrate"})
    <StepStatus.WARNING: 'warning'>
    """
    status = str(row.get("status", "")).lower()
    missing = any(k.startswith("missing_in_") and isinstance(v, int) and v > 0 for k, v in row.items())
    if status in ("fail", StepStatus.FAILED, "error") or missing:
        return StepStatus.FAILED
    counts = (row.get("dataverse_without_company"), row.get("quoted_rows"))
    if (status in ("warn", StepStatus.WARNING, StepStatus.WAITING) or row.get("action") == "migrate"
            or any(isinstance(n, int) and n > 0 for n in counts)):
        return StepStatus.WARNING
    return ""


def styled_table(rows: Sequence[Mapping[str, Any]], limit: int = HTML_ROWS, language: str = "en") -> str:
    """A result table as HTML (pandas Styler): rows needing attention (`attention`) get a background
    and the class `dw-attention dw-<level>`; at most `limit` rows, values escaped.

    >>> html_text = styled_table([{"map": "a", "status": "PASS"}, {"map": "<b>", "status": "FAIL"}])
    >>> html_text.count("dw-attention dw-failed"), "&lt;b&gt;" in html_text
    (2, True)
    """
    shown = frame(rows[:limit])
    levels = [attention(r) for r in rows[:limit]]
    classes = pd.DataFrame([[f"dw-attention dw-{lv}" if lv else ""] * len(shown.columns) for lv in levels],
                           index=shown.index, columns=shown.columns)
    styler = (shown.style.format(escape="html", na_rep="")
              .apply(lambda row: [f"background-color: {ATTENTION[levels[row.name]]}"
                                  if levels[row.name] else ""] * len(row), axis=1)
              .set_td_classes(classes).hide(axis="index")
              .set_table_attributes('class="dataframe dw-table"'))
    more = f"<p>{esc(word(language, 'more', n=len(rows) - limit))}</p>" if len(rows) > limit else ""
    return str(styler.to_html()) + more


def language_of(run: Mapping[str, Any] | None) -> str:
    """The language a run speaks (its `language` parameter; English without one).

    >>> language_of({"parameters": {"language": "nl"}}), language_of(None)
    ('nl', 'en')
    """
    return str(((run or {}).get("parameters") or {}).get("language") or "en")


def _rows(n: int, language: str) -> str:
    return f"{n} {word(language, 'row' if n == 1 else 'rows')}"


def result_text(r: Mapping[str, Any], language: str = "en") -> str:
    """The plain-text form of a result: status, summary, checks, tables, next action."""
    # The status in English whatever the language: logs are read by people and by greps alike.
    lines = [f"[{_label(r['status'])}] {_head(r, language)}", f"  {r.get('summary', '')}"]
    if r.get("error") and r["error"] != r.get("summary"):
        lines.append(f"  {word(language, 'error').lower()}: {r['error']}")
    for c in r.get("checks") or []:
        fix = (f" — {word(language, 'fix')}: {c['fix']}"
               if c.get("fix") and not StepStatus(c["status"]).done else "")
        lines.append(f"  {MARKS.get(c['status'], '?')} {c['name']}: {c['evidence']}{fix}")
    for name, rows in (r.get("tables") or {}).items():
        lines.append(f"  {name} ({_rows(len(rows), language)}):")
        if rows:
            shown = frame(rows[:TEXT_ROWS]).to_string(index=False)
            lines += [f"    {line}" for line in shown.splitlines()]
            if len(rows) > TEXT_ROWS:
                lines.append(f"    {word(language, 'more', n=len(rows) - TEXT_ROWS)}")
    if r.get("counts"):
        counts = ", ".join(f"{k}={v:,}" for k, v in r["counts"].items())
        lines.append(f"  {word(language, 'counts').lower()}: {counts}")
    lines += [f"  {word(language, 'evidence')}: {f}" for f in r.get("evidence_files") or []]
    remedy = word(language, "remediation").lower()
    lines += [f"  {remedy}: {line}" for line in _remediation_lines(r, language)]
    if r.get("next_action"):
        lines.append(f"  {word(language, 'next').lower()}: {r['next_action']}")
    if r.get("doc_url"):
        lines.append(f"  {word(language, 'docs')}: {r['doc_url']}")
    return "\n".join(lines)


def _link(url: str, text: str | None = None) -> str:
    return f'<a href="{esc(url)}" target="_blank" rel="noopener">{esc(text or url)}</a>' if url else ""


def _items(title: str, items: Iterable[str]) -> str:
    body = "".join(f"<li>{i}</li>" for i in items)
    return f"<p><b>{title}</b></p><ul>{body}</ul>" if body else ""


def result_html(r: Mapping[str, Any], language: str = "en") -> str:
    """The HTML form of a result, for Jupyter: badge, summary, checks, tables, next action."""
    def w(key: str) -> str:
        return esc(word(language, key))

    parts = [f'<div class="dw-step-result" data-status="{esc(r["status"])}">',
             f"<p>{badge(r['status'], _label(r['status'], language))} <b>{esc(_head(r, language))}</b></p>",
             f"<p>{esc(r.get('summary', ''))}</p>"]
    if r.get("error") and r["error"] != r.get("summary"):
        parts.append(f"<p><b>{w('error')}:</b> <code>{esc(r['error'])}</code></p>")
    checks = r.get("checks") or []
    if checks:
        rows = "".join(
            f"<tr><td>{badge(c['status'], _label(c['status'], language))}</td><td>{esc(c['name'])}</td>"
            f"<td>{esc(c['evidence'])}</td>"
            f"<td>{esc(c.get('fix', ''))} {_link(c.get('doc', ''), word(language, 'docs'))}</td></tr>"
            for c in checks)
        parts.append(f"<table><thead><tr><th>{w('status')}</th><th>{w('check')}</th><th>{w('evidence')}</th>"
                     f"<th>{w('fix')}</th></tr></thead><tbody>{rows}</tbody></table>")
    for name, rows in (r.get("tables") or {}).items():
        parts.append(f"<p><b>{esc(name)}</b> ({esc(_rows(len(rows), language))})</p>")
        if rows:
            parts.append(styled_table(rows, language=language))
    if r.get("counts"):
        parts.append(_items(w("counts"), (f"{esc(k)}: {v:,}" for k, v in r["counts"].items())))
    parts.append(_items(w("evidence_files"), (esc(f) for f in r.get("evidence_files") or [])))
    parts.append(_items(w("remediation"), (esc(line) for line in _remediation_lines(r, language))))
    if r.get("next_action"):
        parts.append(f"<p><b>{w('next')}:</b> {esc(r['next_action'])}</p>")
    if r.get("doc_url"):
        parts.append(f"<p>Microsoft Learn: {_link(r['doc_url'])}</p>")
    parts.append("</div>")
    return "".join(parts)


def result_bundle(r: Mapping[str, Any], run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A result as a Jupyter MIME bundle in the run's language: text, HTML and the JSON (with the run's
    header, i.e. the record without its steps, as it stood when the step ended).

    >>> sorted(result_bundle({"step": "plan", "status": "passed"}))
    ['application/vnd.dwlib.step-result+json', 'text/html', 'text/plain']
    """
    language = language_of(run)
    return {"text/plain": result_text(r, language), "text/html": result_html(r, language),
            RESULT_MIME: {"run": dict(run) if run is not None else None, "result": dict(r)}}


def summary_rows(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per step result: id, status, seconds, calls, summary (the run's overview table).

    >>> summary_rows([{"id": "plan", "step": "plan", "status": "passed", "summary": "ok"}])
    [{'step': 'plan', 'status': 'passed', 'seconds': 0.0, 'calls': 0, 'summary': 'ok'}]
    """
    return [{"step": r.get("id", r["step"]), "status": r["status"],
             "seconds": round(r.get("duration_s", 0.0), 1), "calls": call_count(r),
             "summary": r.get("summary", "")} for r in results]
