"""The catalogue of runs: finding run records under a directory, reading them (or rebuilding one
from an executed notebook's outputs), one row per run, and one run found by its id or file.

Everything here reads run records (`dwlib.record`); the executed notebook is opened only when a
run has no record (its outputs embed every step result, `dwlib.render.RESULT_MIME`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dwlib.errors import DwError
from dwlib.record import RecordError, check_record, load_record, run_status
from dwlib.render import RESULT_MIME
from dwlib.vocab import RunStatus, StepStatus

CATALOGUE_COLUMNS = ("run_id", "scenario", "status", "started", "ended", "duration_s", "failed_step",
                     "error", "dataverse_url", "finops_url", "organization_id", "tenant_id", "dry_run",
                     "steps_done", "steps_planned", "record", "notebook", "sealed")
NOT_RUN = "not run"  # a planned step without a result


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


def read_json(path: Path) -> Any:
    """Parsed JSON of `path`, or None when it cannot be read or parsed (not every .json is a record)."""
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


def live_status(record: Mapping[str, Any]) -> RunStatus:
    """The record's status, except that a run still marked running whose process is gone (on this
    machine) is `interrupted`: it was killed and will never finish its record. A status the record
    schema does not name is a `ReviewError`, not a guess.

    >>> live_status({"status": "running", "process": {"host": socket.gethostname(), "pid": 2**22 + 7}})
    <RunStatus.INTERRUPTED: 'interrupted'>
    >>> live_status({"status": "passed"})
    <RunStatus.PASSED: 'passed'>
    """
    value = record.get("status")
    try:
        status = RunStatus(str(value))
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise ReviewError(f"run {record.get('run_id', '?')} has status {value!r}, which a run record does "
                          f"not have ({known}). Fix: the record is damaged or not a run record; validate it "
                          "against record.schema.json") from None
    process = record.get("process") or {}
    if status == RunStatus.RUNNING and process.get("host") == socket.gethostname() and process.get("pid"):
        return RunStatus.RUNNING if pid_alive(int(process["pid"])) else RunStatus.INTERRUPTED
    return status


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
        data = read_json(path)
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
    data = read_json(path)
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
        data = read_json(file)
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


def steps_in_order(record: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(step id, its result or None) for every planned step, then any step run beyond the plan."""
    results = {s["id"]: s for s in record.get("steps", [])}
    planned = list(record.get("steps_planned", []))
    return [(s, results.get(s)) for s in planned] + [(k, v) for k, v in results.items() if k not in planned]
