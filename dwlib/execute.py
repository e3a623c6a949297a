"""Run a scenario's notebook headless with papermill: the executed notebook plus its run record.

This is what `dw run` does after checking the parameters: execute `notebooks/<scenario>.ipynb`
in a kernel of this very Python (so the notebook uses the same dwlib and packages), passing the
parameters file, the overrides and the record path; report each step as its result lands in the
record; and return what happened. It never talks to the environments itself (the notebook does).

Example:
    >>> # run = execute("existing-existing", Path("params/sandbox-existing-existing.yaml"), {}, Path("runs"))
    >>> # run.ok, run.notebook, run.record
    >>> Execution.__doc__.splitlines()[0]
    'A finished headless run: where its notebook and record are, and how it went.'
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
from ipykernel.kernelspec import write_kernel_spec
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

from dwlib.errors import DwError
from dwlib.notebooks import NOTEBOOKS
from dwlib.params import Params, load_params
from dwlib.record import DONE, RecordError, load_record, new_run_id, run_stem
from dwlib.render import summary_rows
from dwlib.report import finalize, steps_table_text

KERNEL = "python3"
POLL_S = 0.5


def check_params(scenario: str, params_file: Path, overrides: Mapping[str, Any], *,
                 sandbox_pending: bool = False) -> Params:
    """The validated parameters of a run of `scenario`: `ParamsError` with every problem, before any
    call. `sandbox_pending`: the run's sandbox starts next (see `dwlib.params.load_params`)."""
    return load_params(params_file, overrides, scenario=scenario, sandbox_pending=sandbox_pending)


@dataclass
class Execution:
    """A finished headless run: where its notebook and record are, and how it went."""

    notebook: Path
    record: Path
    data: dict[str, Any] | None  # the run record (None when the notebook died before writing it)
    error: str = ""  # why the notebook stopped, when it did

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
        results = {s["id"]: s["status"] for s in self.data["steps"]}
        return all(results.get(step) in (*DONE, "warning") for step in self.data["steps_planned"])

    def summary(self) -> str:
        """The step summary table (one line per planned step) and the paths of the run."""
        lines = []
        if self.data is not None:
            lines += [steps_table_text(self.data), f"run {self.data['run_id']}: {self.data['status']}"]
        if self.error:
            lines.append(f"stopped: {self.error}")
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
                self.echo(f"  {r['step']}: {r['status']} ({r['seconds']:.1f} s) {r['summary']}")
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
    source = NOTEBOOKS / f"{scenario}.ipynb"
    if not source.is_file():
        raise DwError(f"{source} not found: run dw from a checkout of the project (the notebooks live in "
                      "notebooks/)")
    run_id = run_id or new_run_id()
    stem = run_stem(scenario, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook, record = (out_dir / f"{stem}.ipynb").resolve(), (out_dir / f"{stem}.json").resolve()
    parameters = {"params_file": str(params_file.resolve()), "overrides": dict(overrides),
                  "record_path": str(record), "interactive": False, "run_id": run_id}
    error = ""
    watcher = _Watcher(record, echo)
    watcher.start()
    try:
        with this_python_kernel():
            papermill.execute_notebook(str(source), str(notebook), parameters=parameters, kernel_name=KERNEL,
                                       progress_bar=False)
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except DeadKernelError as exc:
        error = f"the kernel died ({exc}); the record says which step was running"
    finally:
        watcher.stop()
    try:
        data: dict[str, Any] | None = load_record(record)
    except RecordError:
        data = None
    if data is not None and notebook.is_file():
        # The notebook is final now: the HTML report, then the record sealed with both hashes.
        finalize(record, notebook)
        data = load_record(record)
    return Execution(notebook, record, data, error)
