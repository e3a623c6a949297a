"""Comparing runs: one run with another (what differs between, say, the same runbook on test and
production), and one run with the hashes it recorded (`verify`: what changed since it ran).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dwlib.record import (
    RecordError,
    check_record,
    content_sha256,
    evidence_dir,
    file_sha256,
    load_record,
    relative_to,
)
from dwlib.vocab import RunStatus

from .runs import NOT_RUN, ReviewError, Run, is_record, live_status, read_json, record_files, steps_in_order


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
        found = ((p, read_json(p)) for p in record_files(target))
        return [verify_record(p, data) for p, data in found if is_record(data)]
    if target.suffix == ".ipynb":
        target = target.with_suffix(".json")
    if not target.is_file():
        raise ReviewError(f"{target} does not exist: give a run record (.json), its notebook or a directory")
    return [verify_record(target)]
