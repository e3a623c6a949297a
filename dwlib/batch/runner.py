"""Run a batch: validate the plan, schedule its runs on an executor, keep the manifest, summarise.

Scheduling happens here, on the client side, whatever the executor: at most `max_parallel` runs at
once, never two runs of one environment pair at once, and the runs of a pair in plan order.

Example:
    result = run_batch(Path("params/batch-sandbox.yaml"), "runs/nightly", max_parallel=2)
    result.exit_code, result.manifest.data["status"]
    >>> BatchResult.__doc__.splitlines()[0]
    'What a batch did: its manifest, whether it was cancelled, and the exit status of `dw batch`.'
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from dwlib.batch.executors import DaskExecutor, Executor, LocalExecutor
from dwlib.batch.manifest import NAME, Manifest, since, still_running
from dwlib.batch.plan import Plan, load_plan
from dwlib.batch.storage import Output
from dwlib.batch.worker import RunSpec, now, stop_tree
from dwlib.errors import DwError
from dwlib.execute import sigterm_interrupts
from dwlib.render import seconds_text
from dwlib.vocab import BatchStatus

Echo = Callable[[str], None]


@dataclass
class BatchResult:
    """What a batch did: its manifest, whether it was cancelled, and the exit status of `dw batch`."""

    manifest: Manifest
    cancelled: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every run passed, 130 when cancelled, 1 otherwise."""
        if self.cancelled:
            return 130
        return 0 if self.manifest.data["status"] == BatchStatus.PASSED else 1


def schedule(executor: Executor, manifest: Manifest, specs: dict[str, RunSpec], pairs: dict[str, Any],
             max_parallel: int, echo: Echo) -> bool:
    """Run `specs` (in their order) on `executor`; True when cancelled (Ctrl+C, SIGTERM)."""
    pending, running = list(specs), dict[str, Any]()
    # Workers report here; only this thread touches the manifest. (name, "started"|"ended", info)
    done: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()

    def one(name: str) -> None:
        try:
            outcome = executor.run(specs[name], lambda info: done.put((name, "started", info)))
        except Exception as exc:  # a lost worker or a failed upload: this run's problem, not the batch's
            outcome = {"status": BatchStatus.ERROR, "error": f"{type(exc).__name__}: {exc}"}
        done.put((name, "ended", outcome))

    def collect() -> None:
        while True:
            try:
                name, event, outcome = done.get(timeout=0.5)  # a timeout keeps Ctrl+C responsive
            except queue.Empty:
                continue
            if event == "ended":
                break
            manifest.started(name, outcome)
        del running[name]
        manifest.finish(name, outcome)
        entry = manifest.run(name)
        took = f" in {seconds_text(entry['duration_s'])}" if entry["duration_s"] else ""
        echo(f"  {name}: {entry['status']}{took}" + (f" ({entry['error']})" if entry["error"] else ""))

    with ThreadPoolExecutor(max_parallel, thread_name_prefix="dw-batch") as pool:
        try:
            while pending or running:
                for name in list(pending):
                    if len(running) >= max_parallel:
                        break
                    if pairs[name] in running.values():
                        continue  # this pair is busy; its later runs wait too (plan order per pair)
                    pending.remove(name)
                    running[name] = pairs[name]
                    manifest.start(name)
                    echo(f"  {name}: started (attempt {manifest.run(name)['attempt']})")
                    pool.submit(one, name)
                collect()
        except KeyboardInterrupt:
            echo(f"cancelling: stopping {len(running)} running run(s)")
            executor.cancel()
            while running:
                collect()
            return True
    return False


def _executor(kind: str, address: str | None, workers: int | None, client: Any) -> Executor:
    if kind == "local":
        return LocalExecutor(workers or os.cpu_count() or 1)
    if kind == "dask":
        return DaskExecutor(address, workers or os.cpu_count() or 1, client=client)
    raise DwError(f"unknown executor {kind!r}: use local or dask")


def _await_left_running(entry: dict[str, Any], echo: Echo) -> None:
    """Wait for the `dw run` a killed batch left running for `entry` to end (stopped once its
    timeout is spent), so that a resumed batch never runs it twice nor beside itself."""
    proc = still_running(entry)
    if proc is None:
        return
    echo(f"  {entry['name']}: still running from the batch that was stopped (pid {proc.pid}): waiting for it")
    timeout_s = entry.get("timeout_s")
    left = None if timeout_s is None else timeout_s - since(entry.get("submitted") or now())
    try:
        proc.wait(None if left is None else max(0.0, left))
    except psutil.TimeoutExpired:
        echo(f"  {entry['name']}: stopping it: its timeout ({timeout_s} s) is spent")
        stop_tree(proc)
    except psutil.NoSuchProcess:
        pass


def _prepare(plan: Plan, out: Output, resume: bool, manifest: Manifest, echo: Echo) -> list[str]:
    """Fill the manifest from the plan (and the manifest resumed); the names of the runs to run."""
    before = Manifest.load(out)
    if before is not None and not resume:
        raise DwError(f"{out.join(NAME)} exists: this directory holds a batch already. Pass --resume to "
                      "rerun its failed or unfinished runs, or choose another --out")
    if before is None and resume:
        echo(f"nothing to resume in {out}: starting every run")
    old = {r["name"]: r for r in (before.data["runs"] if before else [])}
    for entry in old.values():
        _await_left_running(entry, echo)
    if before is not None:
        manifest.data.update(batch_id=before.data["batch_id"], created=before.data["created"])
        dropped = sorted(set(old) - {r.name for r in plan.runs})
        if dropped:
            echo(f"no longer in the plan (kept on disk, dropped from the manifest): {', '.join(dropped)}")
    todo = [r.name for r in plan.runs if manifest.add(r, old.get(r.name))]
    if before is not None:
        echo(f"resuming: {len(plan.runs) - len(todo)} run(s) already passed, {len(todo)} to run")
    return todo


def run_batch(plan_path: Path, out: str | Path, *, max_parallel: int | None = None, resume: bool = False,
              executor: str = "local", dask_address: str | None = None, client: Any = None,
              echo: Echo = print) -> BatchResult:
    """Validate the plan (`ParamsError` before anything runs), run it, write the manifest and print
    the summary. `client`: an existing Dask client for `executor="dask"`."""
    plan = load_plan(plan_path)
    output = Output(out)
    if max_parallel is not None and max_parallel < 1:
        raise DwError("--max-parallel must be at least 1")
    limit = max_parallel or plan.max_parallel
    cwd = str(Path.cwd())
    manifest = Manifest.new(output, plan=str(plan.path), executor=executor, max_parallel=limit or 0)
    for warning in plan.warnings:
        echo(f"warning: {warning}")
    todo = _prepare(plan, output, resume, manifest, echo)
    cancelled = False
    if todo:
        with _executor(executor, dask_address, limit, client) as ex:
            limit = limit or ex.slots
            manifest.data["max_parallel"] = limit
            manifest.save()
            by_name = {r.name: r for r in plan.runs}
            specs = {}
            for name in todo:
                entry, run = manifest.run(name), by_name[name]
                specs[name] = RunSpec(name, run.scenario, str(run.params_file), run.overrides,
                                      entry["run_dir"], f"attempt-{entry['attempt']}.log", cwd, run.timeout_s)
            echo(f"dw batch: {len(todo)} run(s) on {executor}, at most {limit} at a time, one per "
                 f"environment pair; manifest {output.join(NAME)}")
            with sigterm_interrupts():  # SIGTERM cancels the batch as Ctrl+C does: runs stopped
                cancelled = schedule(ex, manifest, specs, {r.name: r.pair for r in plan.runs}, limit, echo)
    manifest.close(cancelled)
    echo(summary(manifest))
    return BatchResult(manifest, cancelled)


def summary(manifest: Manifest) -> str:
    """The end-of-batch summary: the runs' catalogue (as `dw review OUT` shows it, current attempts
    only) and, for each run that did not pass, its name, status, error and log."""
    runs = manifest.data["runs"]
    lines = []
    out = manifest.out
    if not out.is_url:
        from dwlib.review import catalogue, catalogue_text

        current = {r["record"]: i for i, r in enumerate(runs) if r.get("record")}
        rows = sorted((row for row in catalogue(Path(str(out))) if row["record"] in current),
                      key=lambda row: current[row["record"]])
        lines.append(catalogue_text(rows))
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(f"batch {manifest.data['status']}: {len(runs)} runs: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in runs:
        if BatchStatus(r["status"]) != BatchStatus.PASSED:
            lines.append(f"  {r['name']}: {r['status']}" + (f": {r['error']}" if r["error"] else "")
                         + (f" (log {r['log']})" if r["log"] else ""))
    lines.append(f"manifest: {out.join(NAME)}" + ("" if out.is_url else f"; review: dw review {out}"))
    return "\n".join(lines)
