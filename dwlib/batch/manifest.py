"""The batch manifest, `<out>/batch.json`: every run of the plan with its status, rewritten after
every change (atomically for a path), so a killed batch still says what ran and how far.

Statuses of a run: pending, running, passed, failed (a step failed), invalid (its parameters no
longer check), interrupted (its `dw run` was stopped by a signal from elsewhere), timed_out,
cancelled, error (could not start, or the worker was lost). `--resume` reruns every run that is not
done; a run is done when it passed, its record says passed, and its definition (scenario,
parameters file, overrides) is the plan's. A run whose batch was killed goes on alone: the manifest
notes its pid and host when it starts, and a resumed batch waits for it to end, then counts it if
it passed, so no run is made twice.

Example:
    >>> m = Manifest.new(Output("/tmp/b"), plan="/p.yaml", executor="local", max_parallel=2)
    >>> m.data["kind"], m.data["schema_version"], m.data["runs"]
    ('dw-batch', 1, [])
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from dwlib.batch.plan import PlannedRun
from dwlib.batch.storage import Output, is_url, read_location
from dwlib.batch.worker import now
from dwlib.errors import DwError
from dwlib.vocab import BatchStatus, RunStatus

KIND = "dw-batch"
SCHEMA_VERSION = 1
NAME = "batch.json"
ATTEMPT_KEYS = ("attempt", "status", "record", "notebook", "log", "started", "ended", "duration_s",
                "exit_code", "error", "record_status", "host")


class Manifest:
    """The manifest of one batch, in memory and at `<out>/batch.json`."""

    def __init__(self, out: Output, data: dict[str, Any]) -> None:
        self.out = out
        self.data = data

    @classmethod
    def new(cls, out: Output, *, plan: str, executor: str, max_parallel: int) -> Manifest:
        """A manifest with no runs yet (not written)."""
        return cls(out, {"kind": KIND, "schema_version": SCHEMA_VERSION, "batch_id": str(uuid.uuid4()),
                         "plan": plan, "out": str(out), "executor": executor, "max_parallel": max_parallel,
                         "status": BatchStatus.RUNNING, "created": now(), "updated": None, "runs": []})

    @classmethod
    def load(cls, out: Output) -> Manifest | None:
        """The manifest in `out`, or None when there is none; `DwError` when it cannot be used."""
        text = out.read_text(NAME)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DwError(f"{out.join(NAME)} is not JSON ({exc}): remove it to start the batch afresh"
                          ) from None
        if not isinstance(data, dict) or (data.get("kind"), data.get("schema_version")) != (KIND,
                                                                                            SCHEMA_VERSION):
            raise DwError(f"{out.join(NAME)} is not a dw batch manifest of schema version {SCHEMA_VERSION}")
        return cls(out, data)

    def save(self) -> None:
        """Write the manifest (whole, atomically for a path)."""
        self.data["updated"] = now()
        self.out.write_text(NAME, json.dumps(self.data, indent=1, default=str) + "\n")

    def run(self, name: str) -> dict[str, Any]:
        """The entry of run `name`."""
        return next(r for r in self.data["runs"] if r["name"] == name)

    def add(self, run: PlannedRun, before: dict[str, Any] | None) -> bool:
        """Add `run`, carrying over its entry from the manifest resumed (`before`); True if it must run."""
        if before is not None and is_done(before, run):
            self.data["runs"].append(before)
            return False
        previous = list(before.get("previous", [])) if before else []
        if before and before.get("started"):
            previous.append({k: before.get(k) for k in ATTEMPT_KEYS})
        self.data["runs"].append({
            "name": run.name, **run.definition(),
            "environments": {"dataverse_url": run.pair[0], "finops_url": run.pair[1]},
            "timeout_s": run.timeout_s, "run_dir": self.out.join(run.name),
            "attempt": len(previous) + 1, "status": BatchStatus.PENDING,
            **dict.fromkeys(ATTEMPT_KEYS[2:]), "submitted": None, "pid": None, "previous": previous,
        })
        return True

    def start(self, name: str) -> None:
        """Run `name` was handed to the executor."""
        self.run(name).update(status=BatchStatus.RUNNING, submitted=now())
        self.save()

    def started(self, name: str, process: dict[str, Any]) -> None:
        """Run `name`'s process runs (`pid`, `host`): a resumed batch finds it if this one is killed."""
        self.run(name).update(pid=process["pid"], host=process["host"])
        self.save()

    def finish(self, name: str, outcome: dict[str, Any]) -> None:
        """Store a run's outcome (`worker.run_one`'s dict, or an error)."""
        entry = self.run(name)
        entry.update({k: v for k, v in outcome.items() if k in (*ATTEMPT_KEYS, "pid")})
        if entry.get("started") and entry.get("ended"):
            entry["duration_s"] = round((_time(entry["ended"]) - _time(entry["started"])).total_seconds(), 3)
        self.save()

    def close(self, cancelled: bool) -> None:
        """Set the batch's own status once no run is running any more."""
        statuses = [r["status"] for r in self.data["runs"]]
        self.data["status"] = (BatchStatus.CANCELLED if cancelled else
                               BatchStatus.FAILED if any(BatchStatus(s).failed for s in statuses)
                               else BatchStatus.PASSED)
        self.save()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def since(text: str) -> float:
    """Seconds from a manifest time (`worker.now()`) until now.

    >>> since(now()) < 5
    True
    """
    return (datetime.now(UTC) - _time(text)).total_seconds()


def still_running(entry: dict[str, Any]) -> psutil.Process | None:
    """The `dw run` process of a run its batch left running when it was killed, if it still runs
    on this machine (the manifest noted its pid and host when it started)."""
    if (entry.get("status") != BatchStatus.RUNNING or not entry.get("pid")
            or entry.get("host") != os.uname().nodename):
        return None
    try:
        proc = psutil.Process(int(entry["pid"]))
        command = proc.cmdline()
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    # A recycled pid is some other process: it must be this run's `dw run` (see `worker.command`).
    ours = "dwlib.cli" in command and entry["scenario"] in command
    return proc if ours else None


def _status_of(record: str) -> RunStatus | None:
    text = read_location(record)
    try:
        status = json.loads(text).get("status") if text is not None else None
        return None if status is None else RunStatus(status)
    except (ValueError, AttributeError):
        return None


def _left_running(entry: dict[str, Any]) -> str | None:
    """The record a run left when its batch was killed while it ran (its `dw run` went on alone):
    the newest record in its directory started since it was submitted (local outputs only)."""
    run_dir, since = Path(entry["run_dir"]), (entry.get("submitted") or "")[:19]
    if is_url(entry["run_dir"]) or not since or not run_dir.is_dir():
        return None
    found = []
    for path in run_dir.glob(f"*-{entry['scenario']}-*.json"):
        text = read_location(str(path))
        try:
            data = json.loads(text or "")
        except ValueError:
            continue
        if isinstance(data, dict) and str(data.get("started") or "")[:19] >= since:
            found.append((str(data["started"]), str(path)))
    return max(found)[1] if found else None


def is_done(entry: dict[str, Any], run: PlannedRun) -> bool:
    """Whether a resumed entry needs no rerun: it ran as this same run and its record says it
    finished (passed, or with warnings it reports; also when the batch was killed while it ran: its
    record is then found in its directory)."""
    if {k: entry.get(k) for k in run.definition()} != run.definition():
        return False
    if entry.get("status") == BatchStatus.RUNNING:
        record = _left_running(entry)
        found = _status_of(record) if record is not None else None
        if record is None or found is None or not found.succeeded:
            return False
        entry.update(status=BatchStatus.PASSED, record=record, record_status=found,
                     error=f"the batch stopped while this run went on; its record says {found}")
        notebook = Path(record).with_suffix(".ipynb")
        entry["notebook"] = str(notebook) if notebook.is_file() else None
        return True
    record = entry.get("record")
    if entry.get("status") != BatchStatus.PASSED or not record:
        return False
    found = _status_of(record)
    return found is not None and found.succeeded
