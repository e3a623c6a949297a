"""The closing cell of a runbook notebook: the run's steps, and sealing a run finished in JupyterLab.

`summary(rb)` shows every step as the run's HTML report shows them (`dwlib.report.RunSummary`).
Headless that is all: `dw run` seals the record itself once the executed notebook is written.
Interactively only the consultant knows when the notebook is final, so the cell adds a **Seal**
button (`SealPanel`): once the notebook is saved, pressing it writes the HTML report beside the
record and records the notebook's and the report's sha256 (`dwlib.report.finalize`), what
`dw review seal` does from a shell. It refuses a notebook file that is not this run's, or that was
saved before the run's last step ended, saying what to do.

Example:
    ui.summary(rb)          # the notebook's last cell
    >>> saved_problem(Path("/nowhere/run.ipynb"), Path("/nowhere/run.json"), "r-1")[:29]
    '/nowhere/run.ipynb not found:'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwlib.errors import DwError
from dwlib.record import load_record
from dwlib.render import esc
from dwlib.report import RunSummary, finalize
from dwlib.review import record_from_notebook

from .view import interactive_widgets

if TYPE_CHECKING:
    from dwlib.runbook import Runbook


def saved_problem(notebook: Path, record: Path, run_id: str) -> str:
    """Why `notebook` cannot seal the run `run_id` of `record` yet ("" when it can): not found, not
    this run's, or saved before the run's last step ended (its record was written after)."""
    if not notebook.is_file():
        return f"{notebook} not found: save the notebook (Ctrl+S), or give its path"
    try:
        saved = record_from_notebook(notebook)
    except DwError:
        saved = {}
    if saved.get("run_id") != run_id:
        return f"{notebook} holds no step result of run {run_id}: give the path of this notebook"
    if notebook.stat().st_mtime < record.stat().st_mtime:
        return (f"{notebook.name} was saved before the run's last step ended: save the notebook "
                "(Ctrl+S), then press Seal again")
    return ""


class SealPanel:
    """The steps table with a Seal button under it (see the module docstring).

    panel = SealPanel(rb, Path("work.ipynb")); panel.button.click(); panel.state  → 'sealed'
    """

    def __init__(self, rb: Runbook, notebook: Path | None) -> None:
        self.rb = rb
        self.state = "ready"
        self.report: Path | None = None
        widgets = interactive_widgets("the Seal button")
        self.table = widgets.HTML(rb.summary().html())
        self.notebook = widgets.Text(str(notebook or ""), description="Notebook",
                                     placeholder="the path of this notebook (.ipynb)",
                                     style={"description_width": "initial"},
                                     layout=widgets.Layout(width="70%"))
        self.button = widgets.Button(description="Seal", button_style="primary", icon="lock",
                                     tooltip="write the HTML report and record the notebook's sha256")
        self.status = widgets.HTML()
        self.button.on_click(lambda _button: self.seal())
        self._show("Once every step is done, save the notebook (Ctrl+S), then press Seal: it writes the "
                   "HTML report beside the run record and records the notebook's and the report's sha256.")
        self.widget = widgets.VBox([self.table, widgets.HBox([self.notebook, self.button]), self.status])
        self.widget.add_class("dw-seal")

    def seal(self) -> Path | None:
        """Seal the run with the saved notebook; the report's path (None: refused, and why shown)."""
        self.table.value = self.rb.summary().html()
        record = self.rb.record_path
        notebook = Path(self.notebook.value.strip()).expanduser()
        problem = saved_problem(notebook, record, self.rb.record.data["run_id"])
        if problem:
            self.state = "unsaved"
            self._show(problem)
            return None
        self.report = finalize(record, notebook)
        self.rb.record.data = load_record(record)  # sealed: a later write keeps the manifest
        self.state, self.button.disabled = "sealed", True
        self._show(f"sealed: {record.name} records {notebook.name} and the report {self.report}")
        return self.report

    def _show(self, text: str) -> None:
        self.status.value = (f'<p class="dw-seal-status" data-state="{self.state}">'
                             f"{esc(text)}</p>")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = str(self.rb.summary())
        return bundle


def summary(rb: Runbook) -> RunSummary | SealPanel:
    """The closing cell: the steps table, with the Seal panel when the run is interactive (the
    notebook's path from JupyterLab's kernel, `JPY_SESSION_NAME`)."""
    if not rb.interactive:
        return rb.summary()
    session = os.environ.get("JPY_SESSION_NAME")
    return SealPanel(rb, Path(session) if session else None)
