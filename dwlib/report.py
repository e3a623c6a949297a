"""A run for people to look at: its self-contained HTML report and the charts of the review notebook.

The report (`<stem>.html` beside the record) is the summary first (who ran what against which
environments, every step's status, what stopped the run and its fix, HTTP figures, evidence with
sha256), then the executed notebook rendered by nbconvert. It opens in any browser without
Jupyter or network: widget outputs are drawn from the notebook's saved widget state as plain HTML
(`widgets_as_html`) and scripts from CDNs are left out. `finalize` writes it and seals the record.

Example:
    report = finalize(Path("runs/x.json"), Path("runs/x.ipynb"))   # what dw run does last
    chart_step_durations(find_run("0123abcd"))                     # a PNG in the notebook
    >>> static_widget({"w": {"model_name": "ButtonModel", "state": {"description": "Save"}}}, "w")
    '<button disabled>Save</button>'
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd

from dwlib.extras import require
from dwlib.record import load_record, seal
from dwlib.render import badge, call_count, esc, fmt_seconds, language_of, result_html, summary_rows
from dwlib.review import (
    CSS,
    NOT_RUN,
    Run,
    Verification,
    header_lines,
    live_status,
    page,
    rows_per_company,
    step_durations,
    steps_in_order,
    throttling,
)
from dwlib.text import status_word, word

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# A script fetched from elsewhere (require.js, MathJax, widget managers): the report works without.
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', re.IGNORECASE)


# ---- the HTML report ----------------------------------------------------------------------------


def steps_table_html(record: Mapping[str, Any]) -> str:
    """Every step of a run (planned, then any run beyond the plan) with its status, time, calls and
    summary, as an HTML table: the report's table, and the notebook's closing summary
    (`RunSummary`), so a run reads the same in both.

    >>> 'data-status="passed"' in steps_table_html({"steps_planned": ["a"], "steps": [
    ...     {"id": "a", "step": "a", "status": "passed", "summary": "ok", "duration_s": 1.0}]})
    True
    """
    language = language_of(record)
    rows = []
    for step_id, result in steps_in_order(record):
        res = result or {}
        status = res.get("status", NOT_RUN)
        rows.append(f'<tr class="dw-step-row" data-step="{esc(step_id)}"><td>{esc(step_id)}</td>'
                    f"<td>{badge(status, status_word(language, status))}</td>"
                    f"<td>{esc(fmt_seconds(res.get('duration_s')) if result else '')}</td>"
                    f"<td>{call_count(res)}</td><td>{esc(res.get('summary', ''))}</td></tr>")
    columns = ("step", "status", "time", "calls", "summary")
    head = "".join(f"<th>{esc(word(language, k))}</th>" for k in columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def steps_table_text(record: Mapping[str, Any]) -> str:
    """The same table as text, columns aligned (headless logs, `dw run`'s closing summary).

    >>> print(steps_table_text({"steps_planned": ["plan", "verify"], "steps": [
    ...     {"id": "plan", "step": "plan", "status": "passed", "summary": "2 maps", "duration_s": 1.25}]}))
    step    status          seconds  summary
    plan    passed              1.2  2 maps
    verify  not run             0.0
    """
    language = language_of(record)
    done = {r["step"]: r for r in summary_rows(record.get("steps", []))}
    ids = [step_id for step_id, _ in steps_in_order(record)]
    step, status, seconds, summary = (word(language, k) for k in ("step", "status", "seconds", "summary"))
    width = max(map(len, [*ids, step]))
    lines = [f"{step:{width}}  {status:14} {seconds:>8}  {summary}"]
    for step_id in ids:
        r = done.get(step_id, {"status": NOT_RUN, "seconds": 0.0, "summary": ""})
        # The status as the record has it (`already_done`), in every language: logs are grepped.
        lines.append(f"{step_id:{width}}  {r['status']:14} {r['seconds']:8.1f}  {r['summary']}".rstrip())
    return "\n".join(lines)


class RunSummary:
    """A run's steps as its report shows them: the report's styled table in Jupyter (left-aligned,
    coloured statuses, whole summaries), the aligned text table elsewhere (`Runbook.summary()`).

    >>> summary = RunSummary({"steps_planned": ["plan"], "steps": []})
    >>> [r["step"] for r in summary.rows], "dw-run-summary" in summary._repr_html_()
    ([], True)
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per step run so far: step, status, seconds, calls, summary."""
        return summary_rows(self.record.get("steps", []))

    def html(self) -> str:
        return f'<style>{CSS}</style><div class="dw dw-run-summary">{steps_table_html(self.record)}</div>'

    def _repr_html_(self) -> str:
        return self.html()

    def __str__(self) -> str:
        return steps_table_text(self.record)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def summary_html(run: Run) -> str:
    """The summary that opens a run's report: header, every step's status, what failed and how to
    fix it, HTTP figures, evidence with sha256."""
    r = run.record
    status = live_status(r)
    steps = steps_table_html(r)
    failed = next((res for _, res in steps_in_order(r) if res and res["id"] == r.get("failed_step")), None)
    failure = f"<h2>What stopped the run</h2>{result_html(failed, language_of(r))}" if failed else (
        f"<p><b>Error:</b> {esc(r['error'])}</p>" if r.get("error") else "")
    http = r.get("http") or {}
    evidence = "".join(f"<tr><td>{esc(e['path'])}</td><td>{e['bytes']:,}</td>"
                       f"<td><code>{esc(e['sha256'])}</code></td></tr>" for e in r.get("evidence") or [])
    head = "".join(f"<li>{esc(line.strip())}</li>" for line in header_lines(run)[1:])
    files = len(r.get("evidence") or [])
    return (f'<style>{CSS}</style><section id="dw-summary" class="dw">'
            f'<h1>Run summary: {esc(r.get("scenario"))} {badge(status)}</h1>'
            f"<p>run <code>{esc(r['run_id'])}</code></p><ul>{head}</ul><h2>Steps</h2>{steps}{failure}"
            f"<h2>HTTP</h2><p>{http.get('calls', 0)} calls, {http.get('failed', 0)} answered ≥ 400, "
            f"{http.get('retries', 0)} retries ({http.get('throttled_retries', 0)} throttled), "
            f"{http.get('wait_s', 0.0)} s waited on retries, {http.get('throttled_wait_s', 0.0)} s of it "
            f"on throttling</p>"
            + (f"<details><summary><b>Evidence: {files} files with their sha256</b></summary><table><thead>"
               f"<tr><th>file</th><th>bytes</th><th>sha256</th></tr></thead><tbody>{evidence}</tbody></table>"
               f"</details>" if evidence else "")
            + "</section>")


def notebook_html(path: Path) -> str:
    """An executed notebook rendered to standalone HTML by nbconvert (the JupyterLab look), its
    widgets drawn from their saved state and no script fetched from elsewhere."""
    nbconvert = require("nbconvert", "review", "a run's HTML report")
    notebook = widgets_as_html(nbformat.read(path, as_version=4))
    body, _resources = nbconvert.HTMLExporter(template_name="lab").from_notebook_node(notebook)
    return _REMOTE_SCRIPT.sub("", body)


def widgets_as_html(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of `notebook` whose widget outputs are static HTML of the widgets' final saved state
    (or their text when no state was saved), without the widget state itself: nothing is left
    that needs the widget JavaScript."""
    out: nbformat.NotebookNode = nbformat.from_dict(copy.deepcopy(dict(notebook)))
    saved = out.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in out.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            view = data.pop(WIDGET_VIEW, None)
            if view is not None and view.get("model_id") in saved:
                data["text/html"] = static_widget(saved, view["model_id"])
    return out


def static_widget(state: Mapping[str, Any], model_id: str) -> str:
    """The saved state of one ipywidgets model (and its children) as plain HTML: HTML and labels as
    they are, inputs with their values, buttons and progress bars disabled, boxes laid out, output
    areas with their outputs. A model kind not known here shows nothing."""
    model = state.get(model_id) or {}
    kind, s = model.get("model_name", ""), model.get("state") or {}
    label = f"<b>{esc(s['description'])}</b> " if s.get("description") and kind != "ButtonModel" else ""
    if kind in ("HTMLModel", "HTMLMathModel"):
        return f"{label}{s.get('value', '')}"
    if kind == "LabelModel":
        return esc(s.get("value", ""))
    if kind == "ButtonModel":
        return f"<button disabled>{esc(s.get('description', ''))}</button>"
    if kind == "CheckboxModel":
        return f"<span>{'☑' if s.get('value') else '☐'} {esc(s.get('description', ''))}</span>"
    if kind in ("DropdownModel", "SelectModel", "RadioButtonsModel", "ToggleButtonsModel"):
        labels, index = s.get("_options_labels") or [], s.get("index")
        chosen = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else ""
        return f"<div>{label}<code>{esc(chosen)}</code></div>"
    if kind in ("IntProgressModel", "FloatProgressModel"):
        bar = f'<progress value="{s.get("value", 0)}" max="{s.get("max", 100)}"></progress>'
        return f"<div>{label}{bar}</div>"
    if kind.endswith("BoxModel"):
        children = [static_widget(state, c.removeprefix("IPY_MODEL_")) for c in s.get("children", [])]
        flex = "row" if kind == "HBoxModel" else "column"
        inner = "".join(f"<div>{child}</div>" for child in children)
        return f'<div style="display:flex;flex-direction:{flex};gap:6px">{inner}</div>'
    if kind == "OutputModel":
        return "".join(_output_html(state, o) for o in s.get("outputs", []))
    if "value" in s:  # text fields and the like
        return f"<div>{label}<code>{esc(s['value'])}</code></div>"
    return ""


def _output_html(state: Mapping[str, Any], output: Mapping[str, Any]) -> str:
    if output.get("output_type") == "stream":
        return f"<pre>{esc(output.get('text', ''))}</pre>"
    if output.get("output_type") == "error":
        return f"<pre>{esc(output.get('ename', ''))}: {esc(output.get('evalue', ''))}</pre>"
    data = output.get("data") or {}
    view = data.get(WIDGET_VIEW)
    if view is not None and view.get("model_id") in state:
        return static_widget(state, view["model_id"])
    if "text/html" in data:
        return str(data["text/html"])
    return f"<pre>{esc(data.get('text/plain', ''))}</pre>"


def report_html(run: Run) -> str:
    """A run's self-contained HTML report: the summary first, then the executed notebook as it
    ran (or, without a notebook, every step's result from the record)."""
    summary = summary_html(run)
    if run.notebook_path is None:
        language = language_of(run.record)
        steps = "".join(result_html(res, language) for _, res in steps_in_order(run.record) if res)
        return page(f"Run {run.record['run_id']}", summary + steps)
    body = notebook_html(run.notebook_path)
    opened = body.find("<main>")
    at = opened + len("<main>") if opened >= 0 else body.find(">", body.find("<body")) + 1
    return body[:at] + summary + body[at:]


def finalize(record_path: Path, notebook: Path) -> Path:
    """A finished run's last act: write its HTML report beside the record (`<stem>.html`), then
    seal the record with the notebook's and report's sha256. Returns the report's path."""
    run = Run(load_record(record_path), record_path, notebook)
    report = record_path.with_suffix(".html")
    report.write_text(report_html(run), encoding="utf-8")
    seal(record_path, notebook, report)
    return report


# ---- charts (the review notebook) ----------------------------------------------------------------


class Chart:
    """A matplotlib figure that shows itself as a PNG in any notebook (no pyplot state, so
    headless and interactive kernels behave alike and nbconvert embeds it)."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", bbox_inches="tight", dpi=96)
        return buffer.getvalue()


def _bar_chart(frame: pd.DataFrame, x: str, ys: Sequence[str], title: str, xlabel: str) -> Chart:
    Figure = require("matplotlib.figure", "review", "the review charts", "matplotlib").Figure

    height = max(2.0, 0.35 * len(frame) + 1.0)
    figure = Figure(figsize=(8, height))
    axes = figure.subplots()
    if frame.empty:
        axes.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        axes.set_axis_off()
    else:
        frame.set_index(x)[list(ys)].iloc[::-1].plot.barh(ax=axes, legend=len(ys) > 1)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("")
    axes.set_title(title)
    return Chart(figure)


def chart_step_durations(run: Run) -> Chart:
    """Seconds per step of a run, as horizontal bars."""
    return _bar_chart(step_durations(run.record), "step", ["seconds"], f"Step durations, run {run.name}",
                      "seconds")


def chart_rows_per_company(run: Run) -> Chart:
    """Rows per table map per company on both sides, from the run's last reconciliation."""
    frame = rows_per_company(run.record)
    if not frame.empty:
        frame = frame.assign(label=frame["map"] + " · " + frame["company"].astype(str))
        frame = frame.rename(columns={"finops_rows": "finance and operations", "dataverse_rows": "Dataverse"})
    return _bar_chart(frame, "label", ["finance and operations", "Dataverse"],
                      f"Rows per company per table map, run {run.name}", "rows")


def chart_throttling(run: Run) -> Chart:
    """Seconds spent waiting on throttling (429) and on other retries per step."""
    frame = throttling(run.record).rename(columns={"throttled_wait_s": "throttling (429)",
                                                   "other_wait_s": "other retries"})
    return _bar_chart(frame, "step", ["throttling (429)", "other retries"],
                      f"Waiting on retries, run {run.name}", "seconds waited")


def verification_frame(results: Sequence[Verification]) -> pd.DataFrame:
    """Integrity results as a table: record, OK or CHANGED, problems, notes."""
    return pd.DataFrame([{"record": Path(v.record).name, "integrity": "OK" if v.ok else "CHANGED",
                          "problems": "; ".join(v.problems), "notes": "; ".join(v.notes)} for v in results],
                        columns=["record", "integrity", "problems", "notes"])
