"""One run of a batch, as its own OS process: `python -m dwlib.cli run …` with a log of its output.

`run_one` is the function every executor calls: in a thread of `dw batch` (local) or as a task on
a Dask worker. It starts `dw run` in a new session (its own process group) with its working
directory, output directory and log; waits for it; stops it when the batch is cancelled or the run
times out (SIGINT first, so papermill shuts its kernel down and the record says where it stopped;
then SIGKILL to the group and to every descendant, kernels included, which Jupyter starts in
sessions of their own); and returns what happened as a plain dict. When the batch writes to a URL,
the run writes into a temporary directory and its files are uploaded through papermill's I/O
handlers afterwards.

Example:
    >>> spec = RunSpec(name="us", scenario="existing-existing", params_file="/p.yaml", overrides={},
    ...                run_dir="/out/us", log_name="attempt-1.log", cwd="/")
    >>> command(spec, "/tmp/x")[3:6]
    ['run', 'existing-existing', '-f']
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from dwlib.batch.storage import Output, is_url
from dwlib.vocab import BatchStatus

INTERRUPTED = 130  # `dw run`'s exit status when a signal stopped it (`dwlib.cli.INTERRUPTED`)
POLL_S = 0.5
# After SIGINT `dw run` interrupts its kernel (killing it after `execute.INTERRUPT_GRACE_S`), then
# writes the notebook, the record and the report: give it that time before killing everything.
GRACE_S = 30.0


def now() -> str:
    """UTC time with milliseconds (runs of one batch start within the same second)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one attempt of one run (plain data: it travels to Dask workers)."""

    name: str
    scenario: str
    params_file: str
    overrides: dict[str, Any]
    run_dir: str  # a path, or a URL that the files are uploaded to
    log_name: str
    cwd: str  # relative paths in the parameters resolve against it, as for `dw run`
    timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment for `dw run`


def command(spec: RunSpec, out_dir: str) -> list[str]:
    """The `dw run` command line of `spec`, writing into `out_dir` (overrides as `-p KEY=JSON`)."""
    argv = [sys.executable, "-m", "dwlib.cli", "run", spec.scenario, "-f", spec.params_file]
    for key, value in spec.overrides.items():
        argv += ["-p", f"{key}={json.dumps(value)}"]  # JSON is YAML: `dw run` parses it back exactly
    return [*argv, "--out", out_dir]


def stop_tree(proc: subprocess.Popen[bytes] | psutil.Process) -> None:
    """Stop `proc` (a session leader: our child, or a `dw run` a killed batch left running) and
    everything it started, kernels included."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired, psutil.TimeoutExpired):
        proc.wait(GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(descendants, timeout=GRACE_S)
    proc.wait()


def _wait(proc: subprocess.Popen[bytes], timeout_s: float | None,
          cancelled: Callable[[], bool]) -> BatchStatus | None:
    """Wait for `proc`; stop it and say why ("cancelled", "timed_out") when it must not go on."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            proc.wait(POLL_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        reason = (BatchStatus.CANCELLED if cancelled() else
                  BatchStatus.TIMED_OUT if deadline is not None and time.monotonic() > deadline else None)
        if reason:
            stop_tree(proc)
            return reason


def _new_files(directory: Path, before: set[Path]) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p not in before)


def _record_status(record: Path | None) -> str | None:
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("status") if record else None
    except (OSError, ValueError):
        return None


def run_one(spec: RunSpec, cancelled: Callable[[], bool] = lambda: False,
            on_start: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run `spec` as `dw run` in its own process and return its outcome (status, paths, times).
    `on_start` hears the process's `pid` and `host` as soon as it runs (for the manifest).

    status: passed (exit 0), failed (a step failed), invalid (exit 2: the parameters no longer
    check), interrupted (exit 130: someone else stopped it), cancelled, timed_out, or error (could
    not start).
    """
    remote = is_url(spec.run_dir)
    local = Path(tempfile.mkdtemp(prefix=f"dw-batch-{spec.name}-")) if remote else Path(spec.run_dir)
    local.mkdir(parents=True, exist_ok=True)
    before = set(local.rglob("*"))
    log = local / spec.log_name
    started = now()
    outcome: dict[str, Any] = {"host": os.uname().nodename, "pid": None, "started": started}
    try:
        with log.open("wb") as sink:
            proc = subprocess.Popen(command(spec, str(local)), cwd=spec.cwd, stdin=subprocess.DEVNULL,
                                    stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **spec.env})
            outcome["pid"] = proc.pid
            if on_start is not None:
                on_start({"pid": proc.pid, "host": outcome["host"]})
            try:
                stopped = _wait(proc, spec.timeout_s, cancelled)
            except BaseException:
                stop_tree(proc)
                raise
        code = proc.returncode
        status = stopped or {0: BatchStatus.PASSED, 2: BatchStatus.INVALID,
                             INTERRUPTED: BatchStatus.INTERRUPTED}.get(code, BatchStatus.FAILED)
        error = {BatchStatus.TIMED_OUT: f"stopped after {spec.timeout_s} s (timeout_s)",
                 BatchStatus.CANCELLED: "stopped: the batch was cancelled"}.get(status, "")
    except OSError as exc:
        code, status, error = None, BatchStatus.ERROR, f"could not start dw run: {exc}"
    records = [p for p in _new_files(local, before) if p.suffix == ".json" and p.parent == local
               and f"-{spec.scenario}-" in p.name]
    record = records[-1] if records else None
    notebook = record.with_suffix(".ipynb") if record and record.with_suffix(".ipynb").is_file() else None
    outcome.update(status=status, exit_code=code, error=error, ended=now(), log=str(log),
                   record_status=_record_status(record), record=str(record) if record else None,
                   notebook=str(notebook) if notebook else None)
    if remote:
        _upload(local, before, spec.run_dir, outcome)
    return outcome


def _upload(local: Path, before: set[Path], url: str, outcome: dict[str, Any]) -> None:
    """Copy the run's new files to `url` and point the outcome at them there."""
    target = Output(url)
    try:
        for path in _new_files(local, before):
            relative = path.relative_to(local).as_posix()
            target.write_bytes(relative, path.read_bytes())
        for key in ("record", "notebook", "log"):
            if outcome[key]:
                outcome[key] = target.join(Path(outcome[key]).relative_to(local).as_posix())
    finally:
        shutil.rmtree(local, ignore_errors=True)
