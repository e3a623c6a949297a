"""The run record: a versioned JSON file beside the executed notebook, rewritten after every step.

It says what was run (scenario, parameters with secret references only, dwlib version and git
revision), against what (environment URLs and the identities observed there), and what each step
found and changed (its `StepResult.to_dict()` plus the portal gates it showed), with an HTTP
summary. It is written atomically when a step starts and when it ends, so the record of a killed
run still says where it stopped; a run stopped by a signal says so (status `interrupted`, with the
step that was running). This module sits at the bottom of the package: it imports
nothing of `dwlib` but its errors and its vocabulary (`dwlib.vocab`, and the record's shape
as types in `dwlib.record_types`) (results and journal entries arrive as plain dicts).

Integrity: every write lists the run's evidence files with their sha256 and stores a digest of the
record's own content (`integrity.sha256`, over canonical JSON of everything else); once the
executed notebook is final, `seal` adds a manifest with its sha256 (and the HTML report's).
`dwlib.review.verify` recomputes them all. A digest detects any later edit made without
recomputing it; it is not a signature against someone who does.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "run.json"
    >>> rec = RunRecord.create(path, run_id="r1", scenario="new-new", steps=["preflight"],
    ...                        parameters={}, environments={}, dry_run=False, interactive=False)
    >>> rec.step_started("preflight")
    >>> rec.step_finished("preflight", {"step": "preflight", "status": "passed"})
    >>> load_record(path)["status"]
    'passed'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any

from dwlib.errors import DwError
from dwlib.record_types import CallsSummary, DwlibIdentity, HashedFile, HttpSummary
from dwlib.vocab import RunStatus, StepStatus

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("record.schema.json")  # the JSON Schema of this version
_KEY_SEGMENT = re.compile(r"\([^)]*\)")  # accounts(…guid…) → accounts(…)


class RecordError(DwError):
    """A run record that cannot be read (missing, not JSON, or of an unknown schema version)."""


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (`2025-01-31T12:00:00Z`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    """A new run id (a UUID; its first 8 hex digits name the run's files).

    >>> len(new_run_id())
    36
    """
    return str(uuid.uuid4())


def run_stem(scenario: str, run_id: str, when: datetime | None = None) -> str:
    """The file stem of a run: `<UTC timestamp>-<scenario>-<short id>`.

    >>> run_stem("new-new", "0123abcd-0000", datetime(2025, 1, 31, 12, 0, tzinfo=UTC))
    '20250131T120000Z-new-new-0123abcd'
    """
    when = when or datetime.now(UTC)
    return f"{when:%Y%m%dT%H%M%SZ}-{scenario}-{run_id[:8]}"


def default_record_path(scenario: str, run_id: str, directory: Path | None = None) -> Path:
    """`runs/<UTC timestamp>-<scenario>-<short id>.json` under the current directory."""
    return (directory or Path.cwd() / "runs") / f"{run_stem(scenario, run_id)}.json"


def evidence_dir(record_path: Path) -> Path:
    """Where a run's evidence files go: `<record stem>-evidence/` beside the record.

    >>> evidence_dir(Path("runs/x.json")).as_posix()
    'runs/x-evidence'
    """
    return record_path.with_name(f"{record_path.stem}-evidence")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (evidence CSVs can be large).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "f"; _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(data: Mapping[str, Any]) -> str:
    """The digest of a record's content: sha256 of its canonical JSON without `integrity`.

    Canonical = sorted keys, no whitespace, UTF-8; the same whether computed from the dict in
    memory or from the file read back.

    >>> a = content_sha256({"b": 1, "a": [1.5], "integrity": {"sha256": "x"}})
    >>> a == content_sha256({"a": [1.5], "b": 1})
    True
    """
    body = {k: v for k, v in data.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def relative_to(path: str | Path, base: Path) -> str:
    """`path` relative to `base` when it lies beneath it (POSIX form), else unchanged.

    >>> relative_to("/runs/x-evidence/a.csv", Path("/runs"))
    'x-evidence/a.csv'
    """
    p = Path(path)
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


HashCache = dict[Path, tuple[int, int, str]]  # file → (size, mtime in ns, sha256)


def evidence_entries(record_path: Path, cache: HashCache | None = None) -> list[HashedFile]:
    """Every file of a run's evidence directory with its size and sha256, paths relative to the
    record's directory (the record and its evidence move together). With `cache`, a file whose
    size and modification time are unchanged since it was last hashed is not read again (the
    record lists the evidence after every step; earlier steps' files rarely change)."""
    folder = evidence_dir(record_path)
    if not folder.is_dir():
        return []
    cache = {} if cache is None else cache
    entries: list[HashedFile] = []
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        st = f.stat()
        known = cache.get(f)
        if known is None or known[:2] != (st.st_size, st.st_mtime_ns):
            known = cache[f] = (st.st_size, st.st_mtime_ns, file_sha256(f))
        entries.append({"path": relative_to(f, record_path.parent), "bytes": st.st_size, "sha256": known[2]})
    return entries


def dwlib_identity() -> DwlibIdentity:
    """The version of dwlib, the Python running it and, from a git checkout, the revision (and
    whether the checkout has local edits)."""
    try:
        version = metadata.version("dwlib")
    except metadata.PackageNotFoundError:
        version = None
    found: DwlibIdentity = {"version": version, "python": sys.executable, "git_revision": None,
                            "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return found
    if head.returncode == 0:
        found["git_revision"], found["git_dirty"] = head.stdout.strip(), bool(dirty.stdout.strip())
    return found


def endpoint(method: str, url: str) -> str:
    """A journal URL reduced to its endpoint: no query, key segments folded.

    >>> endpoint("PATCH", "https://h/api/data/v9.2/accounts(5f0c…)?$select=name")
    'PATCH https://h/api/data/v9.2/accounts(…)'
    """
    return f"{method} {_KEY_SEGMENT.sub('(…)', url.split('?', 1)[0])}"


def http_summary(entries: Iterable[Mapping[str, Any]]) -> HttpSummary:
    """Calls by endpoint and status, retries and time spent waiting (in all, and on throttling),
    from journal entries (dicts).

    >>> s = http_summary([{"method": "GET", "url": "https://h/a?x=1", "status": 200, "retries": 1,
    ...                    "wait_s": 2.0, "retry_reasons": ["429"]}])
    >>> s["calls"], s["throttled_retries"], s["by_endpoint"][0]["endpoint"]
    (1, 1, 'GET https://h/a')
    """
    entries = list(entries)
    by = Counter((endpoint(e["method"], e["url"]), e["status"]) for e in entries)
    reasons = Counter(r for e in entries for r in e.get("retry_reasons") or ())
    return {
        "calls": len(entries),
        "failed": sum(1 for e in entries if e["status"] is None or e["status"] >= 400),
        "retries": sum(e.get("retries", 0) for e in entries),
        "throttled_retries": reasons.get("429", 0),
        "retry_reasons": dict(reasons),
        "wait_s": round(float(sum(e.get("wait_s", 0.0) for e in entries)), 3),
        "throttled_wait_s": round(float(sum(e.get("throttled_wait_s", 0.0) for e in entries)), 3),
        "by_endpoint": [{"endpoint": ep, "status": st, "calls": n}
                        for (ep, st), n in sorted(by.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))],
    }


CALLS_KEPT = 100  # calls a step's entry keeps (record, notebook); a run of a million rows makes thousands


def _notable(call: Mapping[str, Any]) -> bool:
    return bool(call.get("retries")) or call.get("status") is None or call["status"] >= 400


def bounded_calls(calls: Sequence[Mapping[str, Any]], path: Path, kept: int = CALLS_KEPT,
                  ) -> tuple[list[dict[str, Any]], CallsSummary | None]:
    """A step's calls as its entry keeps them: all of them when there are at most `kept`; else every
    call written to `path` (JSON lines), and the entry keeps the failed or retried ones (up to half
    of `kept`) and the first ones, in their order, with a summary of all of them (no summary: all kept).

    >>> import tempfile
    >>> calls = [{"method": "GET", "url": f"https://h/p{i}", "status": 429 if i == 7 else 200,
    ...           "retries": 0, "wait_s": 0.0} for i in range(10)]
    >>> path = Path(tempfile.mkdtemp()) / "calls.jsonl"
    >>> few, summary = bounded_calls(calls, path, kept=4)
    >>> [c["url"][-2:] for c in few], summary["calls"], summary["failed"], len(path.read_text().splitlines())
    (['p0', 'p1', 'p2', 'p7'], 10, 1, 10)
    >>> bounded_calls(calls[:3], path, kept=4)[1] is None
    True
    """
    if len(calls) <= kept:
        return [dict(c) for c in calls], None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for call in calls:
            out.write(json.dumps(call, ensure_ascii=False) + "\n")
    notable = set(islice((i for i, c in enumerate(calls) if _notable(c)), kept // 2))
    first = (i for i in range(len(calls)) if i not in notable)
    keep = sorted(notable | set(islice(first, kept - len(notable))))
    totals = http_summary(calls)
    summary: CallsSummary = {"calls": len(calls), "kept": len(keep), "failed": totals["failed"],
                             "retries": totals["retries"], "throttled_retries": totals["throttled_retries"],
                             "wait_s": totals["wait_s"], "throttled_wait_s": totals["throttled_wait_s"],
                             "file": str(path)}
    return [dict(calls[i]) for i in keep], summary


def call_totals(entry: Mapping[str, Any]) -> dict[str, float]:
    """A step entry's calls, retries, throttled retries and waits: from its `calls_summary` when its
    calls were bounded, else from its calls.

    >>> call_totals({"calls": [{"retries": 1, "wait_s": 2.0, "retry_reasons": ["429"],
    ...                         "throttled_wait_s": 2.0}]})
    {'calls': 1, 'retries': 1, 'throttled_retries': 1, 'wait_s': 2.0, 'throttled_wait_s': 2.0}
    """
    summary = entry.get("calls_summary")
    calls = entry.get("calls") or []
    keys = ("calls", "retries", "throttled_retries", "wait_s", "throttled_wait_s")
    if summary:
        return {k: summary[k] for k in keys}
    return {"calls": len(calls), "retries": sum(c.get("retries", 0) for c in calls),
            "throttled_retries": sum((c.get("retry_reasons") or []).count("429") for c in calls),
            "wait_s": sum(c.get("wait_s", 0.0) for c in calls),
            "throttled_wait_s": sum(c.get("throttled_wait_s", 0.0) for c in calls)}


def run_status(data: Mapping[str, Any]) -> tuple[RunStatus, str | None]:
    """The overall status of a record's run and the step that stopped it.

    running (steps remain), failed / waiting (a step failed / waits for a person), passed (every
    planned step passed or was already done), warning (all ran; some warned or were skipped).
    `interrupted` is set by `RunRecord.interrupted`, never derived from the steps.

    >>> run_status({"steps_planned": ["a", "b"], "steps": [{"id": "a", "status": "failed"}]})
    (<RunStatus.FAILED: 'failed'>, 'a')
    """
    results = {s["id"]: StepStatus(s["status"]) for s in data.get("steps", [])}
    for step_id, status in results.items():
        if not status.ok:
            return RunStatus(status), step_id
    planned = data.get("steps_planned", [])
    if any(p not in results for p in planned):
        return RunStatus.RUNNING, None
    return (RunStatus.PASSED if all(results[p].done for p in planned) else RunStatus.WARNING), None


class RunRecord:
    """The record of one run, kept in memory and written to `path` after every change."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self._hashed: HashCache = {}

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        run_id: str,
        scenario: str,
        steps: Sequence[str],
        parameters: Mapping[str, Any],
        environments: Mapping[str, Any],
        dry_run: bool,
        interactive: bool,
    ) -> RunRecord:
        """Start the record of a run (written at once). `parameters` hold secret references only."""
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "scenario": scenario,
            "status": RunStatus.RUNNING,
            "failed_step": None,
            "error": None,
            "started": utc_now(),
            "ended": None,
            "dry_run": dry_run,
            "interactive": interactive,
            "dwlib": dwlib_identity(),
            "parameters": dict(parameters),
            "environments": {**environments, "observed": {}},
            "steps_planned": list(steps),
            "current_step": None,
            "waiting": None,
            "steps": [],
            "http": http_summary([]),
            "process": {"host": socket.gethostname(), "pid": os.getpid()},
            "duration_s": None,
            "evidence": [],
            "manifest": None,
        }
        record = cls(path, data)
        record.write()
        return record

    def step_started(self, step_id: str) -> None:
        """Note the step in progress (a killed run's record names it)."""
        if self.data["status"] == RunStatus.INTERRUPTED:  # run on after an interruption, in the same kernel
            self.data.update(status=RunStatus.RUNNING, error=None)
            self._ended(None)
        self.data["current_step"] = step_id
        self.write()

    def step_finished(self, step_id: str, result: Mapping[str, Any], gates: Sequence[Mapping[str, Any]] = (),
                      http: Mapping[str, Any] | None = None) -> None:
        """Store a step's result (a re-run of the same step replaces it) and the run's HTTP summary."""
        entry = {"id": step_id, **result, "gates": list(gates)}
        base = self.path.parent
        entry["evidence_files"] = [relative_to(f, base) for f in entry.get("evidence_files") or []]
        if entry.get("calls_summary"):
            entry["calls_summary"] = {**entry["calls_summary"],
                                      "file": relative_to(entry["calls_summary"]["file"], base)}
        steps = self.data["steps"]
        at = next((i for i, s in enumerate(steps) if s["id"] == step_id), None)
        if at is None:
            steps.append(entry)
        else:
            steps[at] = entry
        self.data["current_step"] = None
        self.data["waiting"] = None
        if http is not None:
            self.data["http"] = dict(http)
        self.data["status"], self.data["failed_step"] = run_status(self.data)
        self._ended(None if self.data["status"] == RunStatus.RUNNING else utc_now())
        self.data["evidence"] = evidence_entries(self.path, self._hashed)
        self.write()

    def _ended(self, when: str | None) -> None:
        self.data["ended"] = when
        self.data["duration_s"] = None if when is None else seconds_between(self.data["started"], when)

    def waiting(self, step_id: str, instruction: Mapping[str, Any]) -> None:
        """Note that `step_id` waits for a person to do what `instruction` says (a portal gate)."""
        self.data["waiting"] = {"step": step_id, "since": utc_now(), "instruction": dict(instruction)}
        self.write()

    def interrupted(self, why: str) -> None:
        """The run was stopped from outside (Ctrl+C, SIGTERM, an interrupted kernel): status
        `interrupted`, not failed; `current_step` keeps naming the step that was running and
        `error` says so. A later result of that step (run again in the same kernel) replaces it."""
        step = self.data["current_step"]
        self.data.update(status=RunStatus.INTERRUPTED, failed_step=None,
                         error=f"{why} while step {step} was running" if step else f"{why} between steps")
        self._ended(utc_now())
        self.data["evidence"] = evidence_entries(self.path, self._hashed)
        self.write()

    def fail(self, message: str) -> None:
        """The run stopped outside any step (e.g. it could not connect); `message` says why."""
        self.data.update(status=RunStatus.FAILED, error=message, current_step=None)
        self._ended(utc_now())
        self.write()

    def observe(self, identities: Mapping[str, Any]) -> None:
        """Add identities observed in the environments (organization id, tenant id, …)."""
        self.data["environments"]["observed"].update(identities)
        self.write()

    def header(self) -> dict[str, Any]:
        """The record without its step results: who, what, where, how it stands."""
        return {k: v for k, v in self.data.items() if k != "steps"}

    def write(self) -> None:
        """Write the record atomically (a reader never sees half a file), with its content digest."""
        self.data["integrity"] = {"algorithm": "sha256", "sha256": content_sha256(self.data)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.data, fh, indent=1, default=str)
                fh.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def mark_interrupted(record_path: Path, why: str) -> None:
    """Mark the record of a run stopped from outside as interrupted (see `RunRecord.interrupted`):
    what `dw run` does when a signal stopped its kernel, whether or not the kernel noted it itself."""
    RunRecord(record_path, load_record(record_path)).interrupted(why)


def seconds_between(start: str, end: str) -> float:
    """Seconds from one `utc_now()` timestamp to another.

    >>> seconds_between("2025-01-31T12:00:00Z", "2025-01-31T12:01:30Z")
    90.0
    """
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def seal(record_path: Path, notebook: Path, report: Path | None = None) -> dict[str, Any]:
    """Close a finished run: add the manifest with the final executed notebook's sha256 (and the
    HTML report's), refresh the evidence list, rewrite the record with its digest. Returns the
    manifest. Call it only once the notebook is written for good.

    seal(Path("runs/x.json"), Path("runs/x.ipynb"), Path("runs/x.html"))
    """
    record = RunRecord(record_path, load_record(record_path))
    base = record_path.parent
    files = {"notebook": notebook, "report": report}
    manifest: dict[str, Any] = {"sealed": utc_now()}
    for key, path in files.items():
        manifest[key] = (None if path is None
                         else {"path": relative_to(path, base), "sha256": file_sha256(path)})
    record.data["evidence"] = evidence_entries(record_path)
    record.data["manifest"] = manifest
    record.write()
    return manifest


def load_record(path: Path | str) -> dict[str, Any]:
    """Read a run record; `RecordError` says why it cannot be used."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordError(f"cannot read the run record {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise RecordError(f"the run record {path} is not JSON ({exc})") from None
    return check_record(data, path)


def check_record(data: Any, path: Path | str) -> dict[str, Any]:
    """`data` (parsed JSON from `path`) if it is a run record this dwlib reads, else `RecordError`."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or version != SCHEMA_VERSION:
        raise RecordError(f"{path} is not a run record of schema version {SCHEMA_VERSION} "
                          f"(schema_version: {version!r}): review it with the dwlib that wrote it")
    return data
