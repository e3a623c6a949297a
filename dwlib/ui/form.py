"""The parameter form: prefilled from a parameters file, validated as you type, saved as YAML.

The form edits the keys a consultant sets for a run (`FIELDS`); every other key of the loaded
file is kept as it is. Validation is `dwlib.params.load_params` itself, so the problems shown are
the very `(path, message)` pairs a headless run reports. Secret fields take references only
(`env:NAME`, `keyring:service/user`, `file:PATH`, checked by `dwlib.secrets.SecretRef.parse`): a
value that is not one is cleared at once, so a pasted secret never stays in the widget state a
saved notebook keeps. Saving refuses while any problem remains, writes the YAML and points the
notebook's `params_file` at it, for the next cell to open the runbook with.

The form's state is `values` (each field as shown); the widgets edit it. Without ipywidgets (a
core install, headless) there is nothing to edit: the form shows where the parameters come from
and their problems as HTML (`dwlib.ui.view.Panel`), validated by the same rules.

Example:
    >>> form = ParameterForm({"params_file": None}, scenario="new-new")
    >>> form.problems[0]
    ('environments', 'required')
    >>> form.fields["environments.tenant_id"].value = "contoso.onmicrosoft.com"
    >>> [p for p, _ in form.problems][:2]
    ['environments.dataverse_url', 'environments.finops_url']
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dwlib.gates import HANDLERS
from dwlib.params import PARAM_KEYS, ParamsError, load_params, notebook_parameters, read_text, said
from dwlib.render import esc
from dwlib.secrets import SecretError, SecretRef

from .view import Panel

DRY_RUN = {"as the parameters decide": None, "yes: only check and plan": True, "no: make the changes": False}


@dataclass(frozen=True)
class Field:
    """A form field: the dotted key it sets, its label, its kind and help text."""

    key: str
    label: str
    # text | secret | list (comma-separated) | method | gates | dry_run | bool
    kind: str = "text"
    help: str = ""


FIELDS = (
    Field("sandbox.dir", "Sandbox directory", help="a local sandbox (it supplies the URLs and credentials)"),
    Field("environments.tenant_id", "Tenant", help="e.g. contoso.onmicrosoft.com"),
    Field("environments.dataverse_url", "Dataverse URL", help="https://<org>.crm.dynamics.com"),
    Field("environments.finops_url", "F&O URL", help="https://<env>.operations.dynamics.com"),
    Field("environments.authority", "Authority", help="empty: login.microsoftonline.com/<tenant>"),
    Field("environments.ca_bundle", "CA bundle", help="empty: the system's CAs"),
    Field("auth.method", "Sign-in", "method"),
    Field("auth.client_id", "Client id", help="the app registration's application id"),
    Field("auth.client_secret", "Client secret", "secret", help="a reference: env:NAME, keyring:service/user "
                                                               "or file:PATH — never the secret"),
    Field("legal_entities", "Legal entities", "list", help="company codes, comma-separated"),
    Field("options.dry_run", "Dry run", "dry_run"),
    Field("options.confirm_irreversible", "Confirm irreversible steps without asking", "bool"),
    Field("options.gates", "Portal gates", "gates"),
)
KINDS = {f.key: f.kind for f in FIELDS}


def _get(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (None: remove it, and parents left empty)."""
    *parents, last = key.split(".")
    nodes = [data]
    for part in parents:
        child = nodes[-1].get(part)
        if not isinstance(child, dict):
            if value is None:
                return
            child = nodes[-1][part] = {}
        nodes.append(child)
    if value is not None:
        nodes[-1][last] = value
        return
    nodes[-1].pop(last, None)
    for node, part in zip(reversed(nodes[:-1]), reversed(parents), strict=True):
        if node[part]:
            break
        del node[part]


class ParameterForm(Panel):
    """The form of one notebook's parameters; `namespace` is the notebook's globals().

    Prefilled from `namespace["params_file"]` (or the keys papermill injected); `load(path)`
    fills it from another file; `save(path)` writes the file and sets `params_file`.
    """

    css_class = "dw-form"

    def __init__(self, namespace: MutableMapping[str, Any], *, scenario: str) -> None:
        super().__init__()
        self.namespace = namespace
        self.scenario = scenario
        self.raw: dict[str, Any] = {}
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.note = ""
        self._filling = False  # set while the form fills itself: no validation per field then
        self.values: dict[str, Any] = {f.key: _shown(f, None) for f in FIELDS}
        # The editing widgets (none without ipywidgets: nothing edits the form then).
        self.fields: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        source, inline = notebook_parameters(namespace)
        title = self.html_part(f"<b>Parameters of {esc(scenario)}</b>")
        self.status = self.html_part("")
        if self.ipywidgets is not None:
            self.widget = self._widgets(self.ipywidgets, title, str(source or ""))
        if source:
            self.load(source)
        else:
            self._fill(inline)
        for key, field in self.fields.items():
            field.observe(lambda change, key=key: self._changed(key, change), names="value")

    def _widgets(self, widgets: Any, title: Any, source: str) -> Any:
        """The form as widgets: a field and its errors per parameter, Load and Save."""
        self.fields = {f.key: _widget(widgets, f) for f in FIELDS}
        self.errors = {f.key: widgets.HTML("") for f in FIELDS}
        self.path = widgets.Text(source, description="Parameters file",
                                 placeholder="params/….yaml", style={"description_width": "initial"},
                                 layout=widgets.Layout(width="60%"))
        self.load_button = widgets.Button(description="Load", icon="folder-open")
        self.save_path = widgets.Text("", description="Save as", style={"description_width": "initial"},
                                      layout=widgets.Layout(width="60%"))
        self.save_button = widgets.Button(description="Save", button_style="success", icon="save")
        self.load_button.on_click(lambda _b: self.load(self.path.value))
        self.save_button.on_click(lambda _b: self.save(self.save_path.value))
        rows = [widgets.HBox([self.path, self.load_button])]
        for f in FIELDS:
            rows.append(widgets.VBox([self.fields[f.key], self.errors[f.key]]))
        rows += [widgets.HBox([self.save_path, self.save_button]), self.status]
        box = widgets.VBox([title, *rows])
        box.add_class(self.css_class)
        return box

    # ---- reading and writing -----------------------------------------------------------------

    def load(self, path: str) -> None:
        """Fill the form from a parameters file (its other keys are kept for saving)."""
        try:
            raw = yaml.safe_load(read_text(Path(path).expanduser())) or {}
        except ParamsError as exc:  # unreadable, or not UTF-8: where, and how to fix it
            self.note = f"cannot read {path}: " + "; ".join(f"{p} {m}".strip() for p, m in exc.problems)
            self._show()
            return
        except yaml.YAMLError as exc:
            self.note = f"cannot read {path}: {exc}"
            self._show()
            return
        if not isinstance(raw, dict):
            self.note = f"{path}: the file must be a mapping of keys (scenario:, environments:, …)"
            self._show()
            return
        self.note = f"loaded {path}"
        if self.widget is not None:
            self.save_path.value = str(Path(path).with_name(f"{Path(path).stem}-edited.yaml"))
        self._fill(raw)

    def data(self) -> dict[str, Any]:
        """The parameters as the form has them: the loaded keys, with the fields' values over them."""
        data = yaml.safe_load(yaml.safe_dump(self.raw, sort_keys=False)) or {}  # a plain YAML deep copy
        data["scenario"] = self.scenario
        for f in FIELDS:
            _put(data, f.key, _value(f, self.values[f.key]))
        return data

    def validate(self) -> list[tuple[str, str]]:
        """Validate with the headless rules (`load_params`, with the notebook's `overrides` as the
        runbook will be opened); the problems (path, message)."""
        try:
            # The form shows the warnings itself, once, not at every keystroke.
            params = load_params(self.data(), self.namespace.get("overrides") or None, say=False)
        except ParamsError as exc:
            self.problems, self.warnings = list(exc.problems), []
        else:
            self.problems, self.warnings = [], params.warnings
            said(self.warnings)  # shown here: the runbook opened next need not say them again
        self._show()
        return self.problems

    def save(self, path: str) -> Path | None:
        """Write the parameters to `path` and set the notebook's `params_file` (None: refused)."""
        if self.validate():
            self.note = "not saved: fix the problems listed above first"
            self._show()
            return None
        if not path.strip():
            self.note = "not saved: give the file a name (Save as)"
            self._show()
            return None
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# Parameters of the {self.scenario} runbook, saved by its parameter form. Secrets are\n"
                  "# references (env:, keyring:, file:); every key is documented in params/template.yaml.\n")
        target.write_text(header + yaml.safe_dump(self.data(), sort_keys=False, allow_unicode=True))
        self.namespace["params_file"] = str(target)
        for key in PARAM_KEYS:  # the file replaces keys papermill may have set
            self.namespace[key] = None
        self.note = f"saved {target}: the next cell opens the runbook with it"
        self._show()
        return target

    # ---- showing ----------------------------------------------------------------------------

    def _fill(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)
        self._filling = True
        try:
            for f in FIELDS:
                self.values[f.key] = _shown(f, _get(raw, f.key))
                if f.key in self.fields:
                    self.fields[f.key].value = self.values[f.key]
        finally:
            self._filling = False
        self.validate()

    def _changed(self, key: str, change: Mapping[str, Any]) -> None:
        if self._filling:
            return
        self.values[key] = change["new"]
        if KINDS[key] == "secret" and change["new"]:
            try:
                SecretRef.parse(change["new"])
            except SecretError as exc:
                self.fields[key].value = ""  # never keep a pasted secret in the widget state
                self.validate()
                self.errors[key].value = _error(f"{key}: {exc} (the value was cleared)")
                return
        self.validate()

    def _show(self) -> None:
        for key, errors in self.errors.items():
            mine = [f"{p}: {m}" for p, m in self.problems if p == key or p.startswith(key + ".")]
            errors.value = "".join(_error(m) for m in mine)
        if self.problems:
            items = "".join(f'<li data-path="{esc(p)}">{esc(f"{p}: {m}" if p else m)}</li>'
                            for p, m in self.problems)
            state, body = "invalid", f"<b>{len(self.problems)} problem(s):</b><ul>{items}</ul>"
        else:
            warned = "".join(f"<li>{esc(w)}</li>" for w in self.warnings)
            state, body = "valid", "<b>✓ valid</b>" + (f"<ul>{warned}</ul>" if warned else "")
        note = f'<p class="dw-form-note">{esc(self.note)}</p>' if self.note else ""
        self.status.value = f'<div class="dw-form-status" data-state="{state}">{body}{note}</div>'

    def text(self) -> str:
        """The form's state as text: where the parameters come from, and their problems."""
        where = self.namespace.get("params_file") or "the keys set in the parameters cell"
        lines = [f"Parameters of {self.scenario} from {where}: "
                 + (f"{len(self.problems)} problem(s)" if self.problems else "valid")]
        lines += [f"  {p}: {m}" if p else f"  {m}" for p, m in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _error(message: str) -> str:
    return f'<span class="dw-field-error" style="color:#cf222e">{esc(message)}</span>'


def _widget(widgets: Any, f: Field) -> Any:
    common: dict[str, Any] = {"description": f.label, "style": {"description_width": "14em"},
                              "layout": widgets.Layout(width="80%")}
    if f.kind == "method":
        return widgets.Dropdown(options=["client_secret", "certificate", "device_code"], **common)
    if f.kind == "dry_run":
        return widgets.Dropdown(options=list(DRY_RUN), **common)
    if f.kind == "gates":  # show: the gates wait for you and the Verify now button
        return widgets.Dropdown(options=list(HANDLERS), **common)
    if f.kind == "bool":
        return widgets.Checkbox(description=f.label, indent=False)
    # Secrets update on Enter or leaving the field, so a reference is checked whole, not per key.
    text = widgets.Text(placeholder=f.help, continuous_update=f.kind != "secret", **common)
    text.add_class(f"dw-field-{f.key.replace('.', '-').replace('_', '-')}")
    return text


def _shown(f: Field, value: Any) -> Any:
    """A parameter's value as its widget shows it."""
    if f.kind == "method":
        return value or "client_secret"
    if f.kind == "gates":
        return value or next(iter(HANDLERS))
    if f.kind == "dry_run":
        return next((k for k, v in DRY_RUN.items() if v is value), next(iter(DRY_RUN)))
    if f.kind == "bool":
        return bool(value)
    if isinstance(value, list):
        return (", " if f.kind == "list" else " ").join(str(v) for v in value)
    return "" if value is None else str(value)


def _value(f: Field, shown: Any) -> Any:
    """A widget's value as the parameter (None: leave the key out)."""
    if f.kind == "dry_run":
        return DRY_RUN[shown]
    if f.kind in ("method", "gates", "bool"):
        return shown
    if f.kind == "list":
        return [v.strip() for v in shown.split(",") if v.strip()] or None
    return shown.strip() or None


def parameter_form(namespace: MutableMapping[str, Any], *, scenario: str) -> ParameterForm:
    """The form cell of a runbook notebook: `form = ui.parameter_form(globals(), scenario=…)`; then
    display `form` (the cell's last line).

    >>> parameter_form({}, scenario="existing-new").text().splitlines()[0]
    'Parameters of existing-new from the keys set in the parameters cell: 3 problem(s)'
    """
    return ParameterForm(namespace, scenario=scenario)
