"""The step board, the gate panels and the progress bars of an interactive runbook.

`StepBoard(rb)` listens to the runbook (`Runbook.listeners`): every step of the scenario is a row
with its live status, duration and one-line result, updated as each `rb.run` starts and ends. It
is one `ipywidgets.HTML`, so the executed notebook keeps its final state in the saved widget
state (papermill stores it), and reviewers see the final board; without ipywidgets (a core
install, headless) it is plain HTML replaced in place (`dwlib.ui.view.Panel`), which the executed
notebook keeps just the same. Interactively (which needs ipywidgets, the `lab` extra) it also

- shows a `GatePanel` under a step whose portal gate waits (`dwlib.gates.GateWaiting`): the
  instruction with its links and a "Verify now" button that runs the step again (it checks first,
  so it passes once the consultant did the work) and shows the verified result;
- gives long steps a widget progress bar (`WidgetProgress`) instead of printed lines.

Headless nothing waits for a person and nothing blocks: gates poll as the parameters say and
progress stays text (`dwlib.render.TextProgress`).

Example:
    board = StepBoard(rb); board   # in the notebook's board cell
    >>> row_text({"id": "plan", "status": "passed", "seconds": 1.25, "summary": "2 maps"})
    '✓ plan  passed  1.2 s  2 maps'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from IPython.display import display

from dwlib.render import MARKS, TextProgress, badge, esc, seconds_text
from dwlib.steps import StepResult, StepStatus
from dwlib.text import status_word, word
from dwlib.vocab import Unfinished

from .view import Panel, interactive_widgets

if TYPE_CHECKING:
    from dwlib.runbook import Runbook

SUMMARY_CHARS = 140  # one line of the board
PROGRESS_EVERY_S = 0.25  # a bar moves at most this often: every move is a message to the browser


def _seconds(row: Mapping[str, Any]) -> str:
    return "" if row.get("seconds") is None else seconds_text(row["seconds"])


def row_text(row: Mapping[str, Any]) -> str:
    """One board row as text (the headless form of the board; the status in English, as logs have it)."""
    seconds = f"  {_seconds(row)}" if row.get("seconds") is not None else ""
    summary = f"  {row['summary']}" if row.get("summary") else ""
    mark = MARKS.get(row["status"], "·")
    return f"{mark} {row['id']}  {status_word('en', row['status'])}{seconds}{summary}"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SUMMARY_CHARS else line[:SUMMARY_CHARS - 1] + "…"


class StepBoard(Panel):
    """Every step of a runbook's scenario with its live status, duration and one-line result.

    Creating it subscribes it to the runbook; displaying it shows the board (and, as text, the
    rows as they were then). `rows` is the state, `view` the HTML showing it: the widget (an
    `ipywidgets.HTML`), or without ipywidgets the panel's one part.

    board = StepBoard(rb); rb.run("preflight"); board.rows[0]["status"]  → 'passed'
    """

    def __init__(self, rb: Runbook) -> None:
        if rb.interactive:  # fail before subscribing, with the command that installs the buttons
            interactive_widgets("an interactive runbook's step board (Verify now, progress bars)")
        super().__init__()
        self.rb = rb
        titles = {ref.id: ref.step for ref in rb.scenario.steps}
        self.rows: list[dict[str, Any]] = [
            {"id": step_id, "step": titles[step_id], "status": Unfinished.PENDING, "seconds": None,
             "summary": ""}
            for step_id in rb.step_ids]
        for step_id, result in rb.results.items():  # a board made after some steps ran
            self._set(step_id, result)
        self.view = self.html_part(self.html())
        self.widget = self.view if self.ipywidgets is not None else None
        self.panels: dict[str, GatePanel] = {}
        rb.listeners.append(self.update)
        if rb.interactive:  # the board gives gates their Verify now button, and long steps a bar
            rb.gates.hold = True
            rb.progress = WidgetProgress

    def update(self, step_id: str, result: StepResult | None) -> None:
        """The runbook's listener: a step started (`result` None) or ended."""
        self._set(step_id, result)
        self.view.value = self.html()
        if result is None or not self.rb.interactive:
            return
        panel = self.panels.get(step_id)
        if panel is not None and panel.verifying:
            return  # the panel's own button ran the step: it shows the outcome itself
        if result.status == StepStatus.WAITING and self.rb.gates.hold and self.rb.gates.shown:
            self.panels[step_id] = GatePanel(self.rb, step_id, self.rb.gates.shown[-1])
            display(self.panels[step_id].widget)

    def _set(self, step_id: str, result: StepResult | None) -> None:
        row = next(r for r in self.rows if r["id"] == step_id)
        if result is None:
            row.update(status=Unfinished.RUNNING, seconds=None, summary="")
        else:
            row.update(status=str(result.status), seconds=result.duration_s,
                       summary=_one_line(result.summary))

    def done(self) -> int:
        """How many steps finished in a way the run may go on from."""
        return sum(1 for r in self.rows
                   if r["status"] not in tuple(Unfinished) and StepStatus(r["status"]).ok)

    @property
    def language(self) -> str:
        """The run's language: the board's words (`dwlib/text/<language>/labels.yaml`)."""
        return str(self.rb.params.language)

    def _head(self) -> tuple[str, str]:
        lang = self.language
        return (word(lang, "steps_of", scenario=self.rb.scenario.id),
                word(lang, "done_of", done=self.done(), total=len(self.rows)))

    def html(self) -> str:
        """The board as an HTML table (`data-step` and `data-status` on each row)."""
        lang = self.language
        body = "".join(
            f'<tr class="dw-board-row" data-step="{esc(r["id"])}" data-status="{r["status"]}">'
            f"<td>{i}</td><td><code>{esc(r['id'])}</code></td>"
            f"<td>{badge(r['status'], status_word(lang, r['status']))}</td>"
            f'<td style="text-align:right">{_seconds(r)}</td><td>{esc(r["summary"])}</td></tr>'
            for i, r in enumerate(self.rows, 1))
        title, done = self._head()
        head = f'<p><b>{esc(title)}</b>: <span class="dw-board-done">{esc(done)}</span></p>'
        columns = "".join(f"<th>{esc(word(lang, k))}</th>" for k in ("step", "status", "time", "result"))
        return (f'<div class="dw-board">{head}<table><thead><tr><th>#</th>{columns}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")

    def text(self) -> str:
        """The board as text lines."""
        title, done = self._head()
        return "\n".join([f"{title}: {done}", *(row_text(r) for r in self.rows)])


class GatePanel:
    """A portal gate that waits for the consultant: what to do (steps, links, what is verified), a
    "Verify now" button that runs the step again, and the result it verified.

    panel = GatePanel(rb, "power-platform-integration", rb.gates.shown[-1]); panel.button.click()
    """

    def __init__(self, rb: Runbook, step_id: str, instruction: Mapping[str, Any]) -> None:
        self.rb, self.step_id = rb, step_id
        self.verifying = False
        self.attempts = 0  # presses of Verify now that finished (data-attempt: a page can wait on it)
        widgets = interactive_widgets("a portal gate's Verify now button")
        self.instruction = widgets.HTML(instruction_html(instruction))
        self.button = widgets.Button(description="Verify now", button_style="primary", icon="refresh",
                                     tooltip=f"run {step_id} again: it checks the portal action's result")
        self.status = widgets.HTML(_gate_status(StepStatus.WAITING, "waiting for you", 0))
        self.output = widgets.Output()
        self.button.on_click(lambda _button: self.verify())
        self.widget = widgets.VBox([self.instruction, widgets.HBox([self.button, self.status]), self.output],
                                   layout=widgets.Layout(border="1px solid #d0d7de", padding="4px 8px"))
        self.widget.add_class("dw-gate")

    def verify(self) -> StepResult:
        """Run the step again and show what it verified (a new instruction if it still waits)."""
        self.verifying, self.button.disabled = True, True
        self.status.value = _gate_status(Unfinished.RUNNING, "verifying…", self.attempts)
        try:
            with self.output:
                self.output.clear_output()
                result = self.rb.run(self.step_id)
                display(result)
        finally:
            self.verifying = False
            self.attempts += 1
        status = str(result.status)
        said = "verified: " + status.replace("_", " ") if result.status.ok else status.replace("_", " ")
        self.status.value = _gate_status(status, said, self.attempts)
        if result.status == StepStatus.WAITING and self.rb.gates.shown:
            self.instruction.value = instruction_html(self.rb.gates.shown[-1])
        self.button.disabled = result.status.ok
        return result


def _gate_status(status: str, said: str, attempts: int) -> str:
    return (f'<span class="dw-gate-status" data-status="{status}" data-attempt="{attempts}">'
            f"{esc(said)}</span>")


def instruction_html(instruction: Mapping[str, Any]) -> str:
    """A gate's instruction (`dwlib.gates` payload) as HTML: title, numbered steps, links, check.

    >>> shown = instruction_html({"title": "T", "steps": ["a"], "links": {"LCS": "https://lcs"},
    ...                          "verify": "v"})
    >>> "<ol><li>a</li></ol>" in shown, 'href="https://lcs"' in shown
    (True, True)
    """
    steps = "".join(f"<li>{esc(s)}</li>" for s in instruction.get("steps", []))
    links = " · ".join(f'<a href="{esc(url)}" target="_blank" rel="noopener">{esc(name)}</a>'
                       for name, url in instruction.get("links", {}).items())
    return (f'<div class="dw-instruction"><p><b>{esc(instruction["title"])}</b></p><ol>{steps}</ol>'
            + (f"<p>Open: {links}</p>" if links else "")
            + f"<p>Verified automatically: {esc(instruction.get('verify', ''))}</p></div>")


class WidgetProgress(TextProgress):
    """Progress as a bar under the running cell (a `dwlib.steps.base.ProgressFactory` for JupyterLab).

    rb.progress = WidgetProgress   (StepBoard does this for interactive runs)
    """

    every_s = PROGRESS_EVERY_S

    def __init__(self, label: str, total: int | None) -> None:
        super().__init__(label, total)
        widgets = interactive_widgets("a progress bar")
        self.bar = widgets.IntProgress(value=0, min=0, max=max(total or 0, 1), description=label,
                                       bar_style="info", style={"description_width": "initial"})
        self.count = widgets.Label(self._said())
        display(widgets.HBox([self.bar, self.count]))

    def close(self) -> None:
        super().close()
        self.bar.bar_style = "success"

    def _show(self) -> None:
        self.bar.value = min(self.done, self.bar.max)
        self.count.value = self._said()

    def _said(self) -> str:
        return f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"
