"""Run a scenario's notebook headless with papermill: the executed notebook plus its run record.

This is what `dw run` does after checking the parameters: execute `<scenario>.ipynb` (the working
directory's `notebooks/`, else the packaged one: `dwlib.packaged.notebook`)
in a kernel of this very Python (so the notebook uses the same dwlib and packages), passing the
parameters file, the overrides and the record path; report each step as its result lands in the
record; and return what happened. It never talks to the environments itself (the notebook does).
SIGINT and SIGTERM stop a run cleanly (`Interrupts`): the kernel is interrupted (then killed if it
does not stop), the partial notebook and the record are written, and the record says the run was
interrupted and in which step.

Example:
    run = execute("existing-existing", Path("params/sandbox-existing-existing.yaml"), {}, Path("runs"))
    run.ok, run.notebook, run.record
    >>> Execution.__doc__.splitlines()[0]
    'A finished headless run: where its notebook and record are, and how it went.'
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import papermill
import psutil
from ipykernel.kernelspec import write_kernel_spec
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

from dwlib.extras import MissingExtra
from dwlib.notebooks import notebook_path
from dwlib.packaged import notebook as find_notebook
from dwlib.packaged import pinned_note
from dwlib.params import Params, load_params
from dwlib.record import RecordError, load_record, mark_interrupted, new_run_id, run_stem, seal
from dwlib.render import seconds_text, summary_rows
from dwlib.report import finalize, steps_table_text
from dwlib.vocab import RunStatus, StepStatus

KERNEL = "python3"
POLL_S = 0.5
# After SIGINT/SIGTERM the kernel gets this long to stop the step it runs (the step notes the
# interruption in the record) before it is killed; `dw batch` waits longer (`worker.GRACE_S`).
INTERRUPT_GRACE_S = 5.0
RESEND_S = 0.25  # an interrupt is sent again this often until the kernel's step notes it
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_params(scenario: str, params_file: Path, overrides: Mapping[str, Any], *,
                 sandbox_pending: bool = False, say: bool = True) -> Params:
    """The validated parameters of a run of `scenario`: `ParamsError` with every problem, before any
    call. `sandbox_pending`: the run's sandbox starts next; `say`: log the warnings (see
    `dwlib.params.load_params`)."""
    return load_params(params_file, overrides, scenario=scenario, sandbox_pending=sandbox_pending, say=say)


@dataclass
class Execution:
    """A finished headless run: where its notebook and record are, and how it went."""

    notebook: Path
    record: Path
    data: dict[str, Any] | None  # the run record (None when the notebook died before writing it)
    error: str = ""  # why the notebook stopped, when it did
    interrupted: str = ""  # the signal that stopped the run (SIGINT, SIGTERM), when one did

    @property
    def report(self) -> Path:
        """The run's self-contained HTML report (written once the notebook is final)."""
        return self.record.with_suffix(".html")

    @property
    def ok(self) -> bool:
        """True when every step of the scenario passed, was already done, or finished with warnings
        (what `dw run` exits 0 for): a warning is said in the summary and the record (status
        "warning") but sets nothing up wrong, e.g. existing Dataverse rows dual-write will not pick
        up. A skipped step (a dry run) or one that never ran is not ok."""
        if self.data is None:
            return False
        results = {s["id"]: StepStatus(s["status"]) for s in self.data["steps"]}
        return all(step in results and (results[step].done or results[step] is StepStatus.WARNING)
                   for step in self.data["steps_planned"])

    def summary(self) -> str:
        """The step summary table (one line per planned step) and the paths of the run."""
        lines = []
        if self.data is not None:
            lines += [steps_table_text(self.data), f"run {self.data['run_id']}: {self.data['status']}"]
        if self.error:
            lines.append(f"stopped: {self.error}")
        if self.interrupted:
            lines.append("the record says which step was running; run it again to go on: finished steps "
                         "report already done")
        lines += [f"notebook: {self.notebook}", f"record:   {self.record}"]
        if self.report.is_file():
            lines.append(f"report:   {self.report}")
        return "\n".join(lines)


@contextmanager
def this_python_kernel() -> Iterator[None]:
    """Make the `python3` kernel this interpreter, whatever kernelspecs the user installed.

    Jupyter looks in `JUPYTER_PATH` first, so a spec there wins over a user-wide `python3`
    that may belong to another Python without dwlib.
    """
    with tempfile.TemporaryDirectory(prefix="dw-kernel-") as tmp:
        # ipykernel's own spec for the running interpreter. Its log (not the notebook's output) is
        # kept to errors: headless there is no channel to eavesdrop on worth a warning per run.
        write_kernel_spec(Path(tmp) / "kernels" / KERNEL, extra_arguments=["--IPKernelApp.log_level=ERROR"])
        before = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, before) if p)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = before


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises `KeyboardInterrupt`, as Ctrl+C does, so that it stops a command cleanly
    (`finally` blocks run, children are stopped) instead of ending the process on the spot. Main
    thread only; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _kernels() -> list[psutil.Process]:
    """The kernels this process started (papermill's, one per run)."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if any("ipykernel" in part for part in child.cmdline()):
                found.append(child)
    return found


class Interrupts:
    """SIGINT and SIGTERM while a notebook runs (a context manager; main thread only).

    The first signal interrupts the kernel, as Jupyter's Interrupt does: the step in progress
    stops, notes in the record that it was interrupted, and papermill stops the notebook, writes
    it and shuts the kernel down. A kernel between two cells ignores an interrupt, so it is sent
    again until the record notes it (the next cell gets it). A kernel that has not stopped within
    `grace_s` (or at a second signal) is killed. Before a kernel is up there is nothing to stop
    gracefully, so the signal raises `KeyboardInterrupt` where it lands. `signal` names the first
    signal received.
    """

    def __init__(self, record: Path, grace_s: float = INTERRUPT_GRACE_S) -> None:
        self.record, self.grace_s = record, grace_s
        self.signal = ""
        self._over = threading.Event()
        self._stopper: threading.Thread | None = None
        self._before: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._before = {sig: signal.signal(sig, self._received) for sig in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._over.set()
        if self._stopper is not None:
            self._stopper.join()

    def _received(self, signum: int, frame: FrameType | None) -> None:
        first = not self.signal
        self.signal = self.signal or signal.Signals(signum).name
        if not _kernels():
            raise KeyboardInterrupt
        if not first:
            self.kill()
            return
        self._stopper = threading.Thread(target=self._stop, name="dw-interrupt", daemon=True)
        self._stopper.start()

    def _stop(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while not self._over.is_set():
            if time.monotonic() >= deadline:
                self.kill()
                return
            if not self._noted():
                for kernel in _kernels():
                    with contextlib.suppress(psutil.Error):
                        kernel.send_signal(signal.SIGINT)
            self._over.wait(RESEND_S)

    def _noted(self) -> bool:
        try:
            return bool(load_record(self.record)["status"] == RunStatus.INTERRUPTED)
        except RecordError:
            return False

    @staticmethod
    def kill() -> None:
        """Kill the kernels at once (papermill then finds them dead and writes the notebook)."""
        for kernel in _kernels():
            with contextlib.suppress(psutil.Error):
                kernel.kill()


class _Watcher(threading.Thread):
    """Reports each step as its result lands in the run record (and gates as they open)."""

    def __init__(self, record: Path, echo: Callable[[str], None]) -> None:
        super().__init__(daemon=True)
        self.record, self.echo = record, echo
        self.stopping = threading.Event()
        self._seen: set[tuple[str, str, str]] = set()

    def run(self) -> None:
        while not self.stopping.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        try:
            data = load_record(self.record)
        except RecordError:
            return  # not written yet
        for r in summary_rows(data["steps"]):
            key = (r["step"], r["status"], str(r["seconds"]))
            if key not in self._seen:
                self._seen.add(key)
                self.echo(f"  {r['step']}: {r['status']} ({seconds_text(r['seconds'])}) {r['summary']}")
        waiting = data.get("waiting")
        if waiting and ("gate", waiting["step"], waiting["since"]) not in self._seen:
            self._seen.add(("gate", waiting["step"], waiting["since"]))
            self.echo(f"  {waiting['step']}: waiting for: {waiting['instruction']['title']}")

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.poll()


def execute(
    scenario: str,
    params_file: Path,
    overrides: Mapping[str, Any],
    out_dir: Path,
    *,
    run_id: str | None = None,
    echo: Callable[[str], None] = print,
) -> Execution:
    """Execute the scenario's notebook with papermill; write `out_dir/<stem>.ipynb` and `.json`,
    then the HTML report `<stem>.html`, and seal the record with their sha256.

    Check the parameters first (`check_params`): this function assumes they are valid.
    """
    language = check_params(scenario, params_file, overrides).language
    source = find_notebook(notebook_path(scenario, language, Path()).as_posix())
    if note := pinned_note(source):
        echo(note)
    run_id = run_id or new_run_id()
    stem = run_stem(scenario, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook, record = (out_dir / f"{stem}.ipynb").resolve(), (out_dir / f"{stem}.json").resolve()
    parameters = {"params_file": str(params_file.resolve()), "overrides": dict(overrides),
                  "record_path": str(record), "interactive": False, "run_id": run_id}
    error = ""
    watcher = _Watcher(record, echo)
    watcher.start()
    with Interrupts(record) as interrupts:
        try:
            with this_python_kernel():
                papermill.execute_notebook(str(source), str(notebook), parameters=parameters,
                                           kernel_name=KERNEL, progress_bar=False)
        except PapermillExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}"
        except DeadKernelError as exc:
            error = f"the kernel died ({exc}); the record says which step was running"
        except KeyboardInterrupt:
            error = "interrupted before the notebook ran"
        finally:
            watcher.stop()
    try:
        data: dict[str, Any] | None = load_record(record)
    except RecordError:
        data = None  # none yet: stopped before the runbook opened
    interrupted = ""
    # A run that had ended (or failed) before the signal took effect keeps its outcome.
    if interrupts.signal and (data is None or RunStatus(data["status"]).active):
        interrupted, error = interrupts.signal, f"interrupted by {interrupts.signal}"
        if data is not None:
            mark_interrupted(record, error)
            data = load_record(record)
    if data is not None and notebook.is_file():
        # The notebook is final now: the HTML report, then the record sealed with both hashes.
        try:
            finalize(record, notebook)
        except MissingExtra as exc:  # a core install: the run stands, sealed without its report
            seal(record, notebook)
            echo(f"no HTML report: {exc}")
        data = load_record(record)
    return Execution(notebook, record, data, error, interrupted=interrupted)
