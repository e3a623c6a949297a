"""The Confirm button of a step that waits for a confirmation (an irreversible action).

Interactively, a step whose confirmation was not given in advance (`options.confirm_irreversible`
false) waits; `offer_confirmation(rb)` listens to the runbook (`Runbook.listeners`) and shows a
Confirm button under that step's result. The cell does not block: pressing the button runs
`rb.run(step_id, confirm=True)` and shows the result beneath it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.display import display

from dwlib.render import esc
from dwlib.steps import StepResult

from .view import interactive_widgets

if TYPE_CHECKING:
    from dwlib.runbook import Runbook


def confirmation_button(rb: Runbook, step_id: str, what: str) -> Any:
    """Show a Confirm button for `step_id` (doing `what`); returns the box (an `ipywidgets.VBox`:
    its `children[1]` is the button)."""
    widgets = interactive_widgets("the Confirm button of an irreversible step")
    button = widgets.Button(description="Confirm and run", button_style="danger",
                            tooltip=f"{step_id}: {what}", icon="check")
    out = widgets.Output()

    def confirmed(_button: Any) -> None:
        button.disabled = True
        with out:
            display(rb.run(step_id, confirm=True))

    button.on_click(confirmed)
    box = widgets.VBox([widgets.HTML(f"<b>{esc(what)}</b>"), button, out])
    display(box)
    return box


def offer_confirmation(rb: Runbook) -> None:
    """Subscribe to `rb`: under each step left waiting for a confirmation, a Confirm button."""
    def heard(step_id: str, result: StepResult | None) -> None:
        if result is not None and step_id in rb.awaiting_confirmation:
            confirmation_button(rb, step_id, result.summary)

    rb.listeners.append(heard)
