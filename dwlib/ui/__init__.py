"""The consultant's JupyterLab experience: widgets around a runbook, one call per notebook cell.

- `parameter_form(globals(), scenario=…)`: the parameters, prefilled from a file, validated as
  you type with the headless rules, saved as YAML with secret references only (`dwlib.ui.form`).
- `connect(rb)`: device-code sign-in (code and link), then who you are on each environment.
- `step_board(rb)`: every step with its live status, duration and one-line result; interactively
  also the "Verify now" panels of portal gates and progress bars for long steps (`dwlib.ui.board`).
- `summary(rb)`: the run's steps as its HTML report shows them; interactively with the Seal button
  that writes the report and seals the record once the notebook is saved (`dwlib.ui.summary`).

Headless (papermill, `dw run`) the same cells run without blocking: gates poll as the parameters
say, progress prints, and each panel also renders as text; the executed notebook keeps the
widgets' final state, so a reviewer sees the final board. Without ipywidgets (a core install,
which only runs headless) the form, sign-in and board are plain HTML replaced in place instead
(`dwlib.ui.view`); the buttons and bars a person uses need the `lab` extra.

Example:
    form = ui.parameter_form(globals(), scenario="existing-new"); form
    rb = Runbook.from_notebook(globals(), scenario="existing-new")
    connection = ui.connect(rb)
    board = ui.step_board(rb); board
    ui.summary(rb)
    >>> sorted(n for n in __all__ if not n[0].isupper())
    ['connect', 'parameter_form', 'step_board', 'summary']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dwlib.ui.board import GatePanel, StepBoard, WidgetProgress
from dwlib.ui.confirm import offer_confirmation
from dwlib.ui.connect import ConnectPanel, connect
from dwlib.ui.form import ParameterForm, parameter_form
from dwlib.ui.summary import SealPanel, summary

if TYPE_CHECKING:
    from dwlib.runbook import Runbook

__all__ = ["ConnectPanel", "GatePanel", "ParameterForm", "SealPanel", "StepBoard", "WidgetProgress",
           "connect", "parameter_form", "step_board", "summary"]


def step_board(rb: Runbook) -> StepBoard:
    """The board cell: a `StepBoard` subscribed to `rb` (display it as the cell's last line), and a
    Confirm button under each step that waits for a confirmation.

    board = ui.step_board(rb); board
    """
    offer_confirmation(rb)
    return StepBoard(rb)
