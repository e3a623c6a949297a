"""How the runbook's cells show their panels, with ipywidgets (the `lab` extra) or without it.

Headless runs (`dw run`, papermill) draw the parameter form, the connect panel and the step board
too, and the core install has no ipywidgets. A `Panel` is therefore shown as its widget where
ipywidgets is installed (the executed notebook saves the widget's final state), and otherwise as
plain HTML under a display id that every change replaces in place (nbclient writes the last one
into the executed notebook), so a reviewer sees the final state either way. What only a person
uses (buttons, progress bars) takes `interactive_widgets`, which names the extra when it is absent.

Example (a panel with one part):
    class Note(Panel):
        def __init__(self) -> None:
            super().__init__()
            self.body = self.html_part("<p>waiting</p>")   # later: self.body.value = "<p>done</p>"
            if self.ipywidgets is not None:
                self.widget = self.ipywidgets.VBox([self.body])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from IPython.display import DisplayHandle, display

from dwlib.extras import require


def ipywidgets() -> ModuleType | None:
    """The ipywidgets module, or None where it is not installed (a core install runs headless)."""
    try:
        return importlib.import_module("ipywidgets")
    except ModuleNotFoundError:
        return None


def interactive_widgets(feature: str) -> ModuleType:
    """ipywidgets for what only a person uses; `MissingExtra` naming `pip install 'dwlib[lab]'`."""
    return require("ipywidgets", "lab", feature)


class HtmlPart:
    """Part of a panel shown without ipywidgets: the HTML an `ipywidgets.HTML` would hold
    (`value`); setting it shows the panel again."""

    def __init__(self, value: str, changed: Callable[[], None]) -> None:
        self._value, self._changed = value, changed

    @property
    def value(self) -> str:
        return self._value

    @value.setter
    def value(self, value: str) -> None:
        self._value = value
        self._changed()


class Panel:
    """What a cell shows and later changes: `widget` where ipywidgets is installed, else the HTML of
    its `parts` in a `<div class="{css_class}">`; `text()` is the text/plain form (logs) either way.

    A subclass makes its HTML parts with `html_part` (an `ipywidgets.HTML`, or an `HtmlPart`) and,
    with ipywidgets (`self.ipywidgets`, None without), sets `widget` to what holds them.
    """

    css_class = ""

    def __init__(self) -> None:
        self.ipywidgets = ipywidgets()
        self.widget: Any = None
        self.parts: list[HtmlPart] = []
        self._handle: DisplayHandle | None = None

    def html_part(self, value: str = "") -> Any:
        """A part of the panel holding HTML (`.value`)."""
        if self.ipywidgets is not None:
            return self.ipywidgets.HTML(value)
        part = HtmlPart(value, self._replace)
        self.parts.append(part)
        return part

    def text(self) -> str:
        """The panel as text."""
        raise NotImplementedError

    def bundle(self) -> dict[str, str]:
        """The panel without ipywidgets: its HTML and its text."""
        inner = "".join(p.value for p in self.parts)
        html = f'<div class="{self.css_class}">{inner}</div>' if self.css_class else inner
        return {"text/html": html, "text/plain": self.text()}

    def _replace(self) -> None:
        if self._handle is not None:
            self._handle.update(self.bundle(), raw=True)

    def _show_under_id(self) -> None:
        self._handle = display(self.bundle(), raw=True, display_id=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        if self.widget is None:
            return self.bundle()
        # The widget for JupyterLab (its final state is saved with the notebook); readable text
        # instead of the widget's repr for logs and viewers without widgets.
        bundle: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        return bundle

    @property
    def _ipython_display_(self) -> Callable[[], None] | None:
        # IPython calls this, when it is callable, instead of _repr_mimebundle_: without a widget
        # the panel is shown under a display id, which lets a change replace it in place. A widget
        # updates itself, and the cell keeps its usual output (None: IPython goes on to the bundle).
        return None if self.widget is not None else self._show_under_id
