"""The notebook widgets (`dwlib.ui`) driven in-process, without a browser.

Widgets are plain objects here: the tests set values, press buttons (`.click()`) and read values
and HTML back. The form needs no environment; the board, gate panel, sign-in and progress run
against sandboxes (fake steps for the board, the real Power Platform integration step for the
gate). The last test runs a notebook through papermill and finds the final board in the saved
widget state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
import runbook_fakes
import yaml
from dw_helpers import Consultant
from IPython.utils.dir2 import get_real_method
from test_notebooks import run_faked

from dwlib import ui
from dwlib.extras import MissingExtra
from dwlib.params import ParamsError, load_params
from dwlib.params import load as params_load
from dwlib.record import load_record
from dwlib.render import TextProgress, attention, result_html, styled_table
from dwlib.runbook import Runbook
from dwlib.sandbox.consultant import perform
from dwlib.scenarios import SCENARIOS
from dwlib.steps import StepStatus

ROOT = Path(__file__).resolve().parents[1]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the widgets display (instead of a notebook's output area)."""
    out: list[Any] = []
    for where in ("dwlib.ui.board.display", "IPython.display.display"):
        monkeypatch.setattr(where, lambda *objs, **kw: out.extend(objs))
    return out


# ---- the parameter form -------------------------------------------------------------------------

def params_file(tmp_path: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "scenario": "existing-new",
        "environments": {"tenant_id": "contoso.onmicrosoft.com",
                         "dataverse_url": "https://contoso.crm.dynamics.com",
                         "finops_url": "https://contoso.operations.dynamics.com"},
        "auth": {"client_id": "11111111-2222-3333-4444-555555555555", "client_secret": "env:DW_SECRET"},
        "legal_entities": ["USMF"],
        "table_maps": [{"name": "Customers V3 (accounts)", "defaults": {"CUSTOMERGROUPID": "30"}}],
        **changes,
    }
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_form_is_prefilled_from_the_file_and_valid(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"params_file": str(params_file(tmp_path))}
    form = ui.parameter_form(namespace, scenario="existing-new")
    assert form.fields["environments.dataverse_url"].value == "https://contoso.crm.dynamics.com"
    assert form.fields["auth.client_secret"].value == "env:DW_SECRET"
    assert form.fields["legal_entities"].value == "USMF"
    assert form.problems == [] and 'data-state="valid"' in form.status.value
    assert form.data()["table_maps"][0]["defaults"] == {"CUSTOMERGROUPID": "30"}  # kept as loaded


def test_the_form_validates_as_you_type_with_the_headless_rules(tmp_path: Path) -> None:
    form = ui.parameter_form({"params_file": str(params_file(tmp_path))}, scenario="existing-new")
    form.fields["environments.dataverse_url"].value = "http://contoso.crm.dynamics.com"
    form.fields["legal_entities"].value = "USMF, TOOLONG"
    with pytest.raises(ParamsError) as headless:
        load_params(form.data())
    assert form.problems == headless.value.problems  # the very same paths and messages
    assert ("environments.dataverse_url", "must be an https:// URL (TLS is always on)") in form.problems
    assert "must be an https:// URL" in form.errors["environments.dataverse_url"].value
    assert 'data-path="legal_entities[1]"' in form.status.value
    form.fields["environments.dataverse_url"].value = "https://contoso.crm.dynamics.com"
    form.fields["legal_entities"].value = "USMF, GBSI"
    assert form.problems == [] and form.errors["environments.dataverse_url"].value == ""


def test_a_secret_typed_into_the_form_is_cleared_and_never_saved(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"params_file": str(params_file(tmp_path)), "scenario": "existing-new"}
    form = ui.parameter_form(namespace, scenario="existing-new")
    secret = "hunter2-the-real-secret"
    form.fields["auth.client_secret"].value = secret
    assert form.fields["auth.client_secret"].value == ""  # gone from the widget (and its saved state)
    assert "not the secret itself" in form.errors["auth.client_secret"].value
    assert ("auth.client_secret", "required when method is 'client_secret'") in form.problems
    out = tmp_path / "out.yaml"
    form.save_path.value = str(out)
    form.save_button.click()
    assert not out.exists() and "not saved" in form.status.value
    form.fields["auth.client_secret"].value = "keyring:dw/contoso"
    form.save_button.click()
    text = out.read_text()
    assert secret not in text and "keyring:dw/contoso" in text
    saved = load_params(out)
    assert str(saved.auth.client_secret) == "keyring:dw/contoso" and saved.legal_entities == ["USMF"]
    assert namespace["params_file"] == str(out) and namespace["scenario"] is None  # the file replaces them


def test_an_empty_form_lists_what_is_required_and_cannot_be_saved(tmp_path: Path) -> None:
    form = ui.parameter_form({}, scenario="new-new")
    assert ("environments", "required") in form.problems
    assert form.save(str(tmp_path / "x.yaml")) is None and not (tmp_path / "x.yaml").exists()
    assert "Parameters of new-new from the keys set in the parameters cell" in form.text()
    form.load(str(tmp_path / "missing.yaml"))
    assert "cannot read" in form.status.value


def test_the_form_says_warnings_once_and_reads_a_file_that_is_not_utf8_as_a_problem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(params_load, "_said", set())
    path = params_file(tmp_path, bootstrap={"mapping": {"": "USMF"}})
    with caplog.at_level(logging.WARNING, logger="dwlib.params"):
        form = ui.parameter_form({"params_file": str(path)}, scenario="existing-new")
        load_params(path)  # the runbook cell opens the same file next
    assert form.warnings and form.warnings[0] in form.text() and caplog.records == []  # said by the form
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(path.read_bytes() + "# café\n".encode("latin-1"))
    form.load(str(latin))
    assert "the file is not UTF-8 text" in form.status.value and form.problems == []


# ---- board, progress, gates ----------------------------------------------------------------------

def open_rb(connection: dict[str, Any], tmp_path: Path, overrides: dict[str, Any] | None = None,
            **kwargs: Any) -> Runbook:
    scenario = connection["profile"]
    root = str(Path(connection["ca_bundle"]).parent)
    return Runbook.open(ROOT / "params" / f"sandbox-{scenario}.yaml",
                        {"sandbox.dir": root, **(overrides or {})}, record_path=tmp_path / "run.json",
                        **kwargs)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DW_FAKES_STATE", str(tmp_path / "fakes.json"))
    monkeypatch.setenv("DW_FAKES", json.dumps({"plan": "fail"}))
    with runbook_fakes.installed():
        yield


def test_the_board_follows_every_step_live(sandbox: dict[str, Any], tmp_path: Path, fakes: Any,
                                           shown: list[Any]) -> None:
    with open_rb(sandbox, tmp_path, interactive=True) as rb:
        board = ui.step_board(rb)
        seen: list[str] = []
        rb.listeners.insert(0, lambda step, result: seen.append(board.rows[0]["status"]))
        assert [r["status"] for r in board.rows] == ["pending"] * len(rb.step_ids)
        rb.run("preflight")
        assert seen[0] == "pending" and seen[1] == "running"  # told at the start, then at the end
        first = board.rows[0]
        assert first["status"] == "passed" and first["summary"] == "preflight done" and first["seconds"] >= 0
        for step_id in rb.step_ids[1:rb.step_ids.index("plan") + 1]:
            rb.run(step_id)
        assert board.rows[rb.step_ids.index("plan")]["status"] == "failed"
        assert board.widget.value == board.html()
        assert 'data-step="plan" data-status="failed"' in board.widget.value
        assert f"{rb.step_ids.index('plan')} of {len(rb.step_ids)} done" in board.text()
        assert rb.progress is ui.WidgetProgress and rb.gates.hold
        bundle = board._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert bundle["text/plain"].splitlines()[1].startswith("✓ preflight  passed")


def test_headless_the_board_neither_holds_gates_nor_draws_bars(sandbox: dict[str, Any], tmp_path: Path,
                                                               fakes: Any, shown: list[Any]) -> None:
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        ui.step_board(rb)
        assert rb.progress is TextProgress and not rb.gates.hold


def test_the_widget_progress_bar_moves_and_ends(shown: list[Any]) -> None:
    bar = ui.WidgetProgress("bootstrap accounts", 3)
    assert shown and bar.bar.max == 3
    bar.update(2)
    bar.close()
    assert bar.bar.value == 2 and bar.count.value == "2/3" and bar.bar.bar_style == "success"


def test_a_gate_waits_for_verify_now_and_shows_the_verified_result(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path, shown: list[Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    connection = start_sandbox("existing-new", rows=12, fresh=True)
    with open_rb(connection, tmp_path, {"options.gates": "show"}, interactive=True) as rb:
        board = ui.step_board(rb)
        capsys.readouterr()
        result = rb.run("power-platform-integration")  # does not block: no one polls
        assert result.status == StepStatus.WAITING and "waiting for you" in result.summary
        panel = board.panels["power-platform-integration"]
        assert panel.widget in shown
        assert "Set up the Power Platform integration (LCS)" in panel.instruction.value
        assert "Power Platform" not in capsys.readouterr().out  # said once: by the panel, not printed too
        assert 'href="https://lcs.dynamics.com"' in panel.instruction.value
        panel.button.click()  # nothing done in the portal yet: still waiting, the button stays
        assert 'data-status="waiting"' in panel.status.value and not panel.button.disabled
        assert len(board.panels) == 1  # pressing the button made no second panel
        titles = []
        for _gate in range(3):  # the step's gates one after the other: integration, then the link
            titles.append(rb.gates.shown[-1]["title"])
            assert titles[-1] in panel.instruction.value  # the panel shows the gate now waiting
            perform(connection, rb.gates.shown[-1])  # the consultant does it in LCS
            panel.button.click()
            if rb.results["power-platform-integration"].status.ok:
                break
        assert titles == ["Set up the Power Platform integration (LCS)",
                          "Configure dual-write and link the environments (LCS)"]
        assert "verified:" in panel.status.value and panel.button.disabled
        assert board.rows[1]["status"] in ("passed", "already_done")
    consultant = Consultant(connection)
    try:
        assert consultant.portal("GET", "/dualwrite/connection") is not None  # linked, as verified
    finally:
        consultant.close()


# ---- sign-in -------------------------------------------------------------------------------------

def test_connect_shows_the_device_code_then_who_you_are(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path, shown: list[Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    connection = start_sandbox("existing-new", rows=5, device_code_approve_after_s=0.3)
    with open_rb(connection, tmp_path, {"auth.method": "device_code"}, interactive=False) as rb:
        panel = ui.connect(rb)
    assert shown == [panel]
    assert 'class="dw-user-code"' in panel.code.value and "/devicelogin" in panel.code.value
    assert [r["environment"] for r in panel.rows] == ["Dataverse", "Finance and operations"]
    assert all(r["signed in as"] == "consultant@dwsandbox.onmicrosoft.com" for r in panel.rows)
    assert "legal entities: " in panel.rows[1]["details"] and 'data-state="signed-in"' in panel.who.value
    printed = capsys.readouterr().out
    assert "enter the code" in printed and "Dataverse (https://" in printed  # the headless log


# ---- tables ----------------------------------------------------------------------------------------

def test_rows_needing_attention_are_highlighted() -> None:
    plan = [{"map": "Currencies", "action": "initial-sync", "dataverse_without_company": 0},
            {"map": "Customers V3 (accounts)", "action": "migrate", "dataverse_without_company": 0},
            {"map": "Customers V3 (contacts)", "action": "skip", "dataverse_without_company": 4}]
    assert [attention(r) for r in plan] == ["", "warning", "warning"]
    html_text = styled_table(plan)
    assert html_text.count("dw-attention dw-warning") == 2 * len(plan[0]) and "#fff8c5" in html_text
    result = {"step": "verify", "title": "Verify", "status": "failed", "summary": "1 map differs",
              "tables": {"reconciliation": [{"map": "a", "missing_in_finops": 0, "status": "PASS"},
                                            {"map": "b", "missing_in_finops": 2, "status": "FAIL"}]}}
    shown_html = result_html(result)
    assert shown_html.count("dw-attention dw-failed") == 3 and "#ffebe9" in shown_html
    assert styled_table([{"n": i} for i in range(5)], limit=2).endswith("… 3 more rows in the run record</p>")


# ---- an executed notebook keeps the final board -----------------------------------------------------

def test_papermill_saves_the_final_board_in_the_notebook(sandbox: dict[str, Any], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DW_FAKES_STATE", str(tmp_path / "fakes.json"))
    monkeypatch.setenv("DW_FAKES", "{}")
    out, _record = run_faked(sandbox, tmp_path)
    executed = nbformat.read(out, as_version=4)
    state = executed.metadata["widgets"][WIDGET_STATE]["state"]
    board = next(c for c in executed.cells if c.get("id") == "board")
    (view,) = [o for o in board.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    model = state[view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]]
    final = model["state"]["value"]
    steps = SCENARIOS["existing-existing"].step_ids()
    assert all(f'data-step="{s}" data-status="passed"' in final for s in steps)
    assert f"{len(steps)} of {len(steps)} done" in final
    assert view["data"]["text/plain"].startswith("Steps of existing-existing: 0 of")  # the log's form



# ---- without ipywidgets (a core install): the same panels as HTML, replaced in place --------------

@pytest.fixture
def no_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` fails as if absent


class Handle:
    """What `display(…, display_id=True)` returns: every update is kept in `shown`."""

    def __init__(self, shown: list[dict[str, str]]) -> None:
        self.shown = shown

    def update(self, bundle: dict[str, str], **kwargs: Any) -> None:
        assert kwargs == {"raw": True}
        self.shown.append(bundle)


@pytest.fixture
def displayed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The bundles a panel shows without ipywidgets: first displayed, then each replacement."""
    shown: list[dict[str, str]] = []

    def display(bundle: dict[str, str], **kwargs: Any) -> Handle:
        assert kwargs == {"raw": True, "display_id": True}
        shown.append(bundle)
        return Handle(shown)

    monkeypatch.setattr("dwlib.ui.view.display", display)
    return shown


def row_statuses(html: str) -> list[str]:
    return re.findall(r'<tr class="dw-board-row" data-step="[^"]+" data-status="(\w+)"', html)


def test_without_ipywidgets_the_headless_board_is_html_replaced_in_place(
        sandbox: dict[str, Any], tmp_path: Path, fakes: Any, no_ipywidgets: None,
        displayed: list[dict[str, str]]) -> None:
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        board = ui.step_board(rb)
        assert board.widget is None and rb.progress is TextProgress
        show = get_real_method(board, "_ipython_display_")  # what IPython calls for the cell's last line
        assert show is not None
        show()
        (first,) = displayed
        assert row_statuses(first["text/html"]) == ["pending"] * len(rb.step_ids)
        assert first["text/plain"] == board.text() and "0 of" in first["text/plain"]
        rb.run("preflight")
        assert [row_statuses(b["text/html"])[0] for b in displayed] == ["pending", "running", "passed"]
        last = displayed[-1]
        assert 'data-step="preflight" data-status="passed"' in last["text/html"]
        assert last["text/html"] == board.html() and last["text/plain"].splitlines()[1].startswith(
            "✓ preflight  passed")


def test_with_ipywidgets_the_board_is_the_widget_not_html_under_a_display_id(
        sandbox: dict[str, Any], tmp_path: Path, fakes: Any) -> None:
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        board = ui.step_board(rb)
        assert get_real_method(board, "_ipython_display_") is None  # IPython takes _repr_mimebundle_
        assert "application/vnd.jupyter.widget-view+json" in board._repr_mimebundle_()


def test_without_ipywidgets_an_interactive_board_names_the_extra(
        sandbox: dict[str, Any], tmp_path: Path, fakes: Any, no_ipywidgets: None) -> None:
    with open_rb(sandbox, tmp_path, interactive=True) as rb, \
            pytest.raises(MissingExtra, match=r"pip install 'dwlib\[lab\]'"):
        ui.step_board(rb)


def test_without_ipywidgets_the_form_shows_the_same_problems_as_html(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, displayed: list[dict[str, str]]) -> None:
    namespace: dict[str, Any] = {"params_file": str(params_file(tmp_path, legal_entities=["US-MF"]))}
    with_widgets = ui.parameter_form(namespace, scenario="existing-new")
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    form = ui.parameter_form(namespace, scenario="existing-new")
    assert form.widget is None and form.fields == {}
    assert form.problems == with_widgets.problems and [p for p, _ in form.problems] == ["legal_entities[0]"]
    assert form.data() == with_widgets.data()
    bundle = form.bundle()
    assert bundle["text/html"].startswith('<div class="dw-form"><b>Parameters of existing-new</b>')
    html = bundle["text/html"]
    assert 'data-state="invalid"' in html and 'data-path="legal_entities[0]"' in html
    assert bundle["text/plain"] == form.text()


def test_without_ipywidgets_papermill_saves_the_final_panels_as_html(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "no-ipywidgets"  # the kernel starts as a core install's would: no ipywidgets
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['ipywidgets'] = None\n")
    path = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("DW_FAKES_STATE", str(tmp_path / "fakes.json"))
    monkeypatch.setenv("DW_FAKES", "{}")
    out, record = run_faked(sandbox, tmp_path)
    assert load_record(record)["status"] == "passed"
    executed = nbformat.read(out, as_version=4)
    assert "widgets" not in executed.metadata
    cells = {c.get("id"): c for c in executed.cells}
    (board,) = [o for o in cells["board"].outputs if "text/html" in o.get("data", {})]
    steps = SCENARIOS["existing-existing"].step_ids()
    assert all(f'data-step="{s}" data-status="passed"' in board["data"]["text/html"] for s in steps)
    done = f"Steps of existing-existing: {len(steps)} of {len(steps)} done"
    assert board["data"]["text/plain"].startswith(done)
    (form,) = [o for o in cells["form"].outputs if "text/html" in o.get("data", {})]
    assert 'data-state="valid"' in form["data"]["text/html"]
    (connect,) = [o for o in cells["connect"].outputs if "text/html" in o.get("data", {})]
    assert 'data-state="signed-in"' in connect["data"]["text/html"]

# ---- the closing summary and its Seal button ----------------------------------------------------------

def saved_notebook(rb: Runbook, path: Path) -> Path:
    """The notebook as JupyterLab saves it: every step's result in its cell's output."""
    cells = [nbformat.v4.new_code_cell(f'rb.run("{step_id}")', outputs=[nbformat.v4.new_output(
        "display_data", data=result._repr_mimebundle_())]) for step_id, result in rb.results.items()]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def test_the_summary_cell_seals_an_interactive_run_once_its_notebook_is_saved(
        sandbox: dict[str, Any], tmp_path: Path, shown: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DW_FAKES_STATE", str(tmp_path / "fakes.json"))
    monkeypatch.setenv("DW_FAKES", "{}")
    notebook = tmp_path / "work.ipynb"
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))  # what JupyterLab tells its kernel
    with runbook_fakes.installed(), open_rb(sandbox, tmp_path, interactive=True) as rb:
        for step_id in rb.step_ids:
            rb.run(step_id)
        headless = ui.summary(Runbook(rb.params, rb.record, interactive=False))
        assert not hasattr(headless, "button") and headless.html() in headless._repr_html_()
        panel = ui.summary(rb)
        assert isinstance(panel, ui.SealPanel) and panel.notebook.value == str(notebook)
        assert 'data-status="passed"' in panel.table.value
        panel.button.click()  # not saved yet
        assert panel.state == "unsaved" and "Ctrl+S" in panel.status.value
        saved_notebook(rb, notebook)
        record = tmp_path / "run.json"
        os.utime(notebook, (record.stat().st_mtime - 60,) * 2)  # saved before the last step ended
        panel.button.click()
        assert panel.state == "unsaved" and "was saved before the run" in panel.status.value
        assert load_record(record)["manifest"] is None
        os.utime(notebook)
        panel.button.click()
        assert panel.state == "sealed" and panel.button.disabled
        assert 'data-state="sealed"' in panel.status.value
    sealed = load_record(record)
    assert sealed["manifest"]["notebook"]["path"] == "work.ipynb"
    assert panel.report == record.with_suffix(".html") and panel.report.is_file()
