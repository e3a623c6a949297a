"""Review runs from what they left behind: the catalogue of a directory, one run step by step, two
runs compared, and integrity verified (`dwlib.report` draws a run's HTML report and charts).

Everything here reads run records (`dwlib.record`); the executed notebook is opened only when a
run has no record (its outputs embed every step result, `dwlib.render.RESULT_MIME`). `dw review`
is the command-line face of this module.

Example:
    rows = catalogue(Path("runs"))          # one dict per run, newest last
    print(catalogue_text(rows))
    run = find_run("e43c47f1", Path("runs")); print(show_text(run))
    print(comparison_text(compare(find_run("test-run"), find_run("prod-run"))))
    [v for v in verify(Path("runs")) if not v.ok]   # records, notebooks, evidence changed
    >>> fmt_seconds(3725.0)
    '1 h 2 min'
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dwlib.errors import DwError
from dwlib.record import (
    RecordError,
    call_totals,
    check_record,
    content_sha256,
    evidence_dir,
    file_sha256,
    load_record,
    relative_to,
    run_status,
)
from dwlib.render import RESULT_MIME, badge, esc, fmt_seconds, result_text
from dwlib.vocab import RunStatus, StepStatus

CATALOGUE_COLUMNS = ("run_id", "scenario", "status", "started", "ended", "duration_s", "failed_step",
                     "error", "dataverse_url", "finops_url", "organization_id", "tenant_id", "dry_run",
                     "steps_done", "steps_planned", "record", "notebook", "sealed")
NOT_RUN = "not run"


class ReviewError(DwError):
    """A run or directory that cannot be reviewed as asked (not found, ambiguous, unreadable)."""


@dataclass
class Run:
    """One run to review: its record (read from the record file, or rebuilt from the notebook's
    outputs when `from_notebook`) and where its files are."""

    record: dict[str, Any]
    record_path: Path | None
    notebook_path: Path | None
    from_notebook: bool = False

    @property
    def name(self) -> str:
        """The run's file stem, or its id."""
        path = self.record_path or self.notebook_path
        return path.stem if path else self.record["run_id"]


# ---- finding runs -----------------------------------------------------------------------------------


def record_files(directory: Path) -> Iterator[Path]:
    """The `.json` files under `directory` that may be run records (evidence and hidden folders
    skipped); notebooks are never opened here."""
    if not directory.is_dir():
        raise ReviewError(f"{directory} is not a directory: give the directory runs were written to "
                          f"(dw run --out, default runs/)")
    found = []
    for folder, subfolders, files in os.walk(directory):
        # Pruned, not filtered: a run's evidence folder can hold many files, none of them records.
        subfolders[:] = [d for d in subfolders if not (d.startswith(".") or d.endswith("-evidence"))]
        found += [Path(folder) / f for f in files if f.endswith(".json")]
    yield from sorted(found)


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def is_record(data: Any) -> bool:
    """Whether parsed JSON looks like a run record of any schema version."""
    return isinstance(data, dict) and {"run_id", "steps_planned", "schema_version"} <= data.keys()


def notebook_beside(record_path: Path, record: Mapping[str, Any]) -> Path | None:
    """The executed notebook of a record: the manifest's, else `<stem>.ipynb` beside it (a stat,
    not a read)."""
    manifest = record.get("manifest") or {}
    named = (manifest.get("notebook") or {}).get("path")
    candidate = record_path.parent / named if named else record_path.with_suffix(".ipynb")
    return candidate if candidate.is_file() else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_status(record: Mapping[str, Any]) -> str:
    """The record's status, except that a run still marked running whose process is gone (on this
    machine) is `interrupted`: it was killed and will never finish its record.

    >>> live_status({"status": "running", "process": {"host": socket.gethostname(), "pid": 2**22 + 7}})
    <RunStatus.INTERRUPTED: 'interrupted'>
    """
    status = record.get("status", "unknown")
    process = record.get("process") or {}
    if status == RunStatus.RUNNING and process.get("host") == socket.gethostname() and process.get("pid"):
        return RunStatus.RUNNING if pid_alive(int(process["pid"])) else RunStatus.INTERRUPTED
    return str(status)


def step_error(record: Mapping[str, Any], step_id: str | None) -> str:
    """What stopped a run: the run's own error, else the failing step's error or summary."""
    if record.get("error"):
        return str(record["error"])
    for step in record.get("steps", []):
        if step["id"] == step_id:
            return str(step.get("error") or step.get("summary") or "")
    return ""


def catalogue_row(record: Mapping[str, Any], record_path: Path) -> dict[str, Any]:
    """One catalogue row of a record (see `CATALOGUE_COLUMNS`)."""
    env = record.get("environments") or {}
    observed = env.get("observed") or {}
    done = {s["id"] for s in record.get("steps", []) if StepStatus(s["status"]).done}
    notebook = notebook_beside(record_path, record)
    return {
        "run_id": record["run_id"], "scenario": record.get("scenario"), "status": live_status(record),
        "started": record.get("started"), "ended": record.get("ended"),
        "duration_s": record.get("duration_s"),
        "failed_step": record.get("failed_step"), "error": step_error(record, record.get("failed_step")),
        "dataverse_url": env.get("dataverse_url"), "finops_url": env.get("finops_url"),
        "organization_id": observed.get("organization_id"), "tenant_id": observed.get("tenant_id"),
        "dry_run": record.get("dry_run"), "steps_done": len(done),
        "steps_planned": len(record.get("steps_planned", [])), "record": str(record_path),
        "notebook": str(notebook) if notebook else None, "sealed": bool(record.get("manifest")),
    }


def catalogue(directory: Path) -> list[dict[str, Any]]:
    """Every run recorded under `directory`, oldest first (records only; notebooks unopened).

    A file that looks like a record but cannot be used (e.g. an older schema) gets a row with
    status `unreadable` and the reason, rather than vanishing from the list.
    """
    rows = []
    for path in record_files(directory):
        data = _read_json(path)
        if not is_record(data):
            continue
        try:
            record = check_record(data, path)
        except RecordError as exc:
            rows.append({**dict.fromkeys(CATALOGUE_COLUMNS), "run_id": data.get("run_id"),
                         "status": "unreadable", "scenario": data.get("scenario"), "error": str(exc),
                         "record": str(path)})
            continue
        rows.append(catalogue_row(record, path))
    return sorted(rows, key=lambda r: (r["started"] or "", r["record"]))


def record_from_notebook(path: Path) -> dict[str, Any]:
    """Rebuild a run's record from an executed notebook's outputs (each step result embeds its JSON
    and the run's header); `RecordError` when the notebook carries none."""
    data = _read_json(path)
    if not isinstance(data, dict) or "cells" not in data:
        raise RecordError(f"{path} is not a readable notebook")
    header: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = {}
    for cell in data["cells"]:
        for output in cell.get("outputs", []):
            embedded = (output.get("data") or {}).get(RESULT_MIME)
            if not embedded:
                continue
            header = embedded.get("run") or header
            result = embedded["result"]
            results[result.get("id") or result["step"]] = result
    if header is None:
        raise RecordError(f"{path} carries no dwlib step results: it was not executed, or not by a "
                          f"dwlib runbook")
    planned = list(header.get("steps_planned", []))
    ordered = [results[s] for s in planned if s in results]
    ordered += [r for k, r in results.items() if k not in planned]
    record = {**header, "steps": ordered}
    record["status"], record["failed_step"] = run_status(record)
    return record


def _matching(files: Sequence[Path], target: str) -> list[Path]:
    """The records among `files` whose run id starts with `target`, or whose name holds it."""
    found = []
    for file in files:
        data = _read_json(file)
        if is_record(data) and (str(data["run_id"]).startswith(target) or target in file.stem):
            found.append(file)
    return found


def find_run(target: str | Path, directory: Path = Path("runs")) -> Run:
    """A run by its record (`.json`), its executed notebook (`.ipynb`) or its id (a prefix will do)
    among the records under `directory`."""
    path = Path(target)
    if path.is_file():
        if path.suffix == ".ipynb":
            beside = path.with_suffix(".json")
            if beside.is_file():
                return Run(load_record(beside), beside, path)
            return Run(record_from_notebook(path), None, path, from_notebook=True)
        record = load_record(path)
        return Run(record, path, notebook_beside(path, record))
    if path.suffix in (".json", ".ipynb") or os.sep in str(target):
        raise ReviewError(f"{target} does not exist")
    # Run files are named <time>-<scenario>-<first 8 of the run id>: the records whose name can
    # match are read first, the others (named otherwise, e.g. by record_path) only if none does.
    text = str(target)
    files = list(record_files(directory))
    named = [f for f in files if text[:8] in f.stem]
    matches = _matching(named, text) or _matching([f for f in files if f not in named], text)
    if not matches:
        raise ReviewError(f"no run {target!r} under {directory}: `dw review {directory}` lists the runs "
                          f"there (or pass --dir, or the record's path)")
    if len(matches) > 1:
        raise ReviewError(f"{target!r} matches {len(matches)} runs under {directory} ("
                          + ", ".join(m.stem for m in matches[:5]) + "): give more of the run id")
    record = load_record(matches[0])
    return Run(record, matches[0], notebook_beside(matches[0], record))


# ---- catalogue as text, JSON and HTML ------------------------------------------------------------------


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


# ---- one run ------------------------------------------------------------------------------------


def steps_in_order(record: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(step id, its result or None) for every planned step, then any step run beyond the plan."""
    results = {s["id"]: s for s in record.get("steps", [])}
    planned = list(record.get("steps_planned", []))
    return [(s, results.get(s)) for s in planned] + [(k, v) for k, v in results.items() if k not in planned]


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


# ---- comparing two runs -------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay whole).

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix.removesuffix("."): value}


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def compare(a: Run, b: Run) -> dict[str, Any]:
    """What differs between two runs: parameters, environments, step statuses and step counts
    (rows planned, stamped, migrated, reconciled …), e.g. the same runbook on test and production.

    compare(find_run("test-run"), find_run("prod-run"))["counts"][:1]
    [{'step': 'bootstrap-apply', 'count': 'stamped', 'a': 600, 'b': 20000, 'difference': 19400}]
    """
    ra, rb = a.record, b.record
    steps = []
    sa, sb = dict(steps_in_order(ra)), dict(steps_in_order(rb))
    for step_id in list(dict.fromkeys([*sa, *sb])):
        status_a = (sa.get(step_id) or {}).get("status", NOT_RUN)
        status_b = (sb.get(step_id) or {}).get("status", NOT_RUN)
        if status_a != status_b:
            steps.append({"step": step_id, "a": status_a, "b": status_b})
    counts = []
    for step_id in list(dict.fromkeys([*sa, *sb])):
        ca, cb = (sa.get(step_id) or {}).get("counts") or {}, (sb.get(step_id) or {}).get("counts") or {}
        for key in list(dict.fromkeys([*ca, *cb])):
            va, vb = ca.get(key), cb.get(key)
            if va != vb:
                diff = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
                counts.append({"step": step_id, "count": key, "a": va, "b": vb, "difference": diff})
    ends = {}
    for side, run in (("a", a), ("b", b)):
        ends[side] = {"run_id": run.record["run_id"], "name": run.name,
                      "scenario": run.record.get("scenario"), "status": live_status(run.record),
                      "started": run.record.get("started")}
    differ = {key: _differences(flatten(ra.get(key) or {}), flatten(rb.get(key) or {}))
              for key in ("parameters", "environments")}
    return {**ends, **differ, "steps": steps, "counts": counts}


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


# ---- integrity ----------------------------------------------------------------------------------


@dataclass
class Verification:
    """The integrity of one run: `problems` (something changed since the run) and `notes`."""

    record: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing changed since the run."""
        return not self.problems

    def text(self) -> str:
        """One line for the run, then one per problem and note."""
        head = f"{'OK     ' if self.ok else 'CHANGED'} {self.record}"
        return "\n".join([head, *(f"  ✗ {p}" for p in self.problems), *(f"  · {n}" for n in self.notes)])


def _check_file(base: Path, entry: Mapping[str, Any], what: str, out: Verification) -> None:
    path = base / entry["path"]
    if not path.is_file():
        out.problems.append(f"{what} {entry['path']} is missing")
    elif file_sha256(path) != entry["sha256"]:
        out.problems.append(f"{what} {entry['path']} changed since the run (sha256 differs)")


def verify_record(path: Path, data: Any = None) -> Verification:
    """Recompute a run's hashes: the record's own digest, every evidence file, and the executed
    notebook and HTML report named by its manifest. `data`: the record's JSON when already read."""
    out = Verification(path)
    try:
        record = load_record(path) if data is None else check_record(data, path)
    except RecordError as exc:
        out.problems.append(str(exc))
        return out
    stored = (record.get("integrity") or {}).get("sha256")
    if not stored:
        out.problems.append("the record has no content digest (integrity.sha256): not written by dwlib")
    elif content_sha256(record) != stored:
        out.problems.append("the record changed since the run (its content no longer matches "
                            "integrity.sha256)")
    base = path.parent
    listed = {e["path"] for e in record.get("evidence") or []}
    for entry in record.get("evidence") or []:
        _check_file(base, entry, "evidence file", out)
    folder = evidence_dir(path)
    if folder.is_dir():
        for extra in sorted(f for f in folder.rglob("*") if f.is_file()):
            if relative_to(extra, base) not in listed:
                out.problems.append(f"evidence file {relative_to(extra, base)} was added after the run")
    manifest = record.get("manifest")
    if not manifest:
        status = live_status(record)
        out.notes.append("not sealed: the executed notebook's sha256 was never recorded "
                         + ("(the run has not finished)" if status == RunStatus.RUNNING else
                            "(run outside dw run/dw batch: once the notebook is final, seal it with "
                            "`dw review seal RECORD --notebook NB`)"))
    else:
        for key in ("notebook", "report"):
            if manifest.get(key):
                _check_file(base, manifest[key], key, out)
    return out


def verify(target: Path) -> list[Verification]:
    """Verify one run (its record or notebook) or every run under a directory."""
    if target.is_dir():
        found = ((p, _read_json(p)) for p in record_files(target))
        return [verify_record(p, data) for p, data in found if is_record(data)]
    if target.suffix == ".ipynb":
        target = target.with_suffix(".json")
    if not target.is_file():
        raise ReviewError(f"{target} does not exist: give a run record (.json), its notebook or a directory")
    return [verify_record(target)]


def write_text(text: str, out: Path | None) -> None:
    """Print `text`, or write it to `out` (creating its directory)."""
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
