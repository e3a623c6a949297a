"""The consultant's JupyterLab experience in a real browser: Debian's headless Chromium, driven by
Playwright, against a JupyterLab started from this virtualenv and a sandbox.

One test runs `notebooks/existing-new.ipynb` cell by cell as a consultant would: fills the form
(loads a parameters file, sees a problem as it is typed, switches to device-code sign-in, sets
portal gates to show so they wait for the consultant, saves), signs in with the device code, performs
each portal action through the sandbox (`dwlib.sandbox.consultant.perform`) and presses the gate's
"Verify now" (the instruction shows once, in the gate panel), watches the step board turn green,
saves the notebook and presses the closing cell's Seal button. Another opens a notebook papermill executed
and finds the final board in its saved widget state. Screenshots go to `test-artifacts/browser/`.
Everything waits on conditions in the page; JupyterLab and its kernels are shut down even on failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
import yaml
from dw_helpers import launch_chromium
from playwright.sync_api import Locator, Page, expect, sync_playwright

from dwlib.errors import DwError
from dwlib.review import record_from_notebook
from dwlib.sandbox.consultant import perform
from dwlib.scenarios import SCENARIOS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCENARIO = "existing-new"
START_TIMEOUT_S = 90
CELL_TIMEOUT_MS = 120_000
GREEN = ("passed", "already_done")
STEPS = SCENARIOS[SCENARIO].step_ids()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Lab:
    """A running JupyterLab: its URL, token and root directory."""

    url: str
    token: str
    root: Path
    env: dict[str, str]

    def api(self, method: str, path: str) -> Any:
        response = httpx.request(method, f"{self.url}{path}", timeout=30,
                                 headers={"Authorization": f"token {self.token}"})
        response.raise_for_status()
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab from this virtualenv on a free port with token auth, rooted in a temp directory."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    (root / "notebooks").mkdir(parents=True)
    port, token = free_port(), secrets.token_hex(16)
    # Its own settings, workspaces and caches: nothing of the machine's user leaks in or out.
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_DATA_DIR": str(base / "data"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "ws"), "XDG_CACHE_HOME": str(base / "xdg-cache"),
           "IPYTHONDIR": str(base / "ipython")}
    # Every cell stays in the page (no windowing: the test finds cells by position) and no news pop-up.
    for plugin, settings in (("notebook-extension/tracker", {"windowingMode": "none"}),
                             ("apputils-extension/notification", {"fetchNews": "false"})):
        path = base / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.news_url="]
    log = (base / "jupyterlab.log").open("w")
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    started = Lab(f"http://127.0.0.1:{port}", token, root, env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = (base / "jupyterlab.log").read_text()[-3000:]
                raise RuntimeError(f"JupyterLab exited {proc.returncode}: {tail}")
            try:
                started.api("GET", "/api/status")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # polling the server until it answers (a condition, with a deadline)
        yield started
    finally:
        try:
            for kernel in started.api("GET", "/api/kernels") if proc.poll() is None else []:
                started.api("DELETE", f"/api/kernels/{kernel['id']}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down as it exits
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


@pytest.fixture
def tab(lab: Lab) -> Iterator[Page]:
    """A Chromium page (Debian's build, not Playwright's download); a screenshot when the test fails."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield tab
            tab.screenshot(path=str(ARTIFACTS / "last.png"), full_page=True)
        finally:
            browser.close()


def open_notebook(page: Page, lab: Lab, name: str) -> None:
    page.goto(f"{lab.url}/lab/tree/notebooks/{name}?reset&token={lab.token}")  # reset: only this tab
    expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=60_000)
    idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    expect(idle).to_have_count(1, timeout=60_000)


def cell(page: Page, index: int) -> Locator:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def run_cell(page: Page, cells: list[Any], index: int, *, wait: bool = True) -> Locator:
    """Select cell `index` and run it (Shift+Enter); wait until it finished, unless told not to.
    Whether it is a code cell comes from the notebook (`cells`), not from a page still rendering."""
    target = cell(page, index)
    code = cells[index].cell_type == "code"
    prompt = target.locator(".jp-InputPrompt").first
    dialog = page.locator(".jp-Dialog")
    if dialog.count():  # JupyterLab asks something of its own: say what, rather than click around it
        shot(page, "dialog")
        raise AssertionError(f"a JupyterLab dialog is open: {dialog.first.inner_text()!r}")
    for _attempt in range(2):  # a key press can land while the notebook still settles: press again
        prompt.click()
        page.keyboard.press("Escape")
        page.keyboard.press("Shift+Enter")
        if not code:
            break
        try:
            expect(prompt).not_to_have_text("[ ]:", timeout=10_000)
            break
        except AssertionError:
            continue
    if wait and code:
        expect(target.locator(".jp-InputPrompt").first).to_have_text(re.compile(r"\[\d+\]:"),
                                                                     timeout=CELL_TIMEOUT_MS)
    return target


def field(form: Locator, label: str) -> Locator:
    """The input (or select) of the form's widget described as `label`."""
    named = form.page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$"))
    return form.locator(".widget-inline-hbox").filter(has=named).locator("input, select").first


def saved_run_id(notebook: Path) -> str | None:
    """The run whose step results the notebook file holds (None: none, or not readable yet)."""
    try:
        return record_from_notebook(notebook).get("run_id")
    except (DwError, ValueError, OSError):
        return None


def wait_until(condition: Callable[[], bool], page: Page, *, what: str, timeout_s: float = 30) -> None:
    """Wait for `condition`, checking it every 100 ms of the page's clock, up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        page.wait_for_timeout(100)


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_consultant_runs_the_existing_new_runbook_in_jupyterlab(
        lab: Lab, tab: Page, start_sandbox: Callable[..., dict[str, Any]]) -> None:
    connection = start_sandbox(SCENARIO, rows=12, fresh=True, device_code_approve_after_s=2)
    notebook = ROOT / "notebooks" / f"{SCENARIO}.ipynb"
    shutil.copy(notebook, lab.root / "notebooks" / notebook.name)
    source = yaml.safe_load((ROOT / "params" / f"sandbox-{SCENARIO}.yaml").read_text())
    source["sandbox"]["dir"] = connection["state_dir"]
    (lab.root / "notebooks" / "sandbox.yaml").write_text(yaml.safe_dump(source))
    cells = nbformat.read(notebook, as_version=4).cells
    index = {c.get("id"): i for i, c in enumerate(cells)}
    open_notebook(tab, lab, notebook.name)

    for i in range(index["form"] + 1):
        run_cell(tab, cells, i)
    form = cell(tab, index["form"]).locator(".dw-form")
    expect(form).to_be_visible()
    status = form.locator(".dw-form-status")
    expect(status).to_have_attribute("data-state", "invalid")  # nothing loaded yet
    field(form, "Parameters file").fill("sandbox.yaml")
    form.get_by_role("button", name="Load").click()
    expect(status).to_have_attribute("data-state", "valid")
    dataverse = field(form, "Dataverse URL")
    dataverse.fill("http://not-tls.example")  # validated as typed, with the headless message
    expect(form.locator("li[data-path='environments.dataverse_url']")).to_contain_text(
        "must be an https:// URL (TLS is always on)")
    dataverse.fill("")  # the sandbox supplies it
    field(form, "Sign-in").select_option("device_code")
    field(form, "Portal gates").select_option("show")
    expect(status).to_have_attribute("data-state", "valid")
    field(form, "Save as").fill("my-existing-new.yaml")
    form.get_by_role("button", name="Save").click()
    expect(status).to_contain_text("saved my-existing-new.yaml")
    shot(tab, "1-form")
    assert yaml.safe_load((lab.root / "notebooks" / "my-existing-new.yaml").read_text())["auth"] == {
        "method": "device_code"}

    run_cell(tab, cells, index["about-open"])
    run_cell(tab, cells, index["open"])
    run_cell(tab, cells, index["about-connect"])
    connect = run_cell(tab, cells, index["connect"], wait=False)
    expect(connect.locator(".dw-user-code")).to_have_text(re.compile(r"^[A-Z0-9]{9}$"), timeout=30_000)
    shot(tab, "2-device-code")
    expect(connect.locator(".dw-who[data-state='signed-in']")).to_contain_text(
        "consultant@dwsandbox.onmicrosoft.com", timeout=CELL_TIMEOUT_MS)
    run_cell(tab, cells, index["about-board"])
    run_cell(tab, cells, index["board"])
    board = cell(tab, index["board"]).locator(".dw-board")
    expect(board.locator(".dw-board-row[data-status='pending']")).to_have_count(len(STEPS))

    runs = lab.root / "notebooks" / "runs"
    gates = []
    for i in range(index["board"] + 1, index["summary"] + 1):
        step = run_cell(tab, cells, i)
        if not str(cells[i].get("id")).startswith("run-"):
            continue
        step_id = cells[i]["id"].removeprefix("run-")
        row = board.locator(f".dw-board-row[data-step='{step_id}']")
        for attempt in range(1, 5):  # a step may show its gates one after the other
            if row.get_attribute("data-status") != "waiting":
                break
            (record,) = runs.glob("*.json")
            entry = next(s for s in reversed(json.loads(record.read_text())["steps"]) if s["id"] == step_id)
            instruction = entry["gates"][-1]  # what the gate waiting now asks for
            gates.append(instruction["title"])
            panel = step.locator(".dw-gate").last
            expect(panel.locator(".dw-instruction")).to_contain_text(instruction["title"])
            # Said once: by the panel, not printed above it as well.
            expect(step.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']",
                                has_text=instruction["title"])).to_have_count(0)
            shot(tab, f"3-gate-{len(gates)}")
            perform(connection, instruction)  # the consultant does it in the portal
            panel.get_by_role("button", name="Verify now").click()
            # Each press of Verify now reruns the step; the panel counts the finished ones.
            expect(panel.locator(f".dw-gate-status[data-attempt='{attempt}']")).to_have_count(
                1, timeout=CELL_TIMEOUT_MS)
        expect(row).to_have_attribute("data-status", re.compile("|".join(GREEN)))
    assert gates[:2] == ["Set up the Power Platform integration (LCS)",
                         "Configure dual-write and link the environments (LCS)"]
    assert any(g.startswith("Run table maps") for g in gates)
    expect(board.locator(".dw-board-row")).to_have_count(len(STEPS))
    for status in board.locator(".dw-board-row").evaluate_all("rows => rows.map(r => r.dataset.status)"):
        assert status in GREEN
    expect(board.locator(".dw-board-done")).to_have_text(f"{len(STEPS)} of {len(STEPS)} done")
    plan = cell(tab, index["run-plan"]).locator("table.dw-table")
    expect(plan).to_be_visible()
    shot(tab, "4-plan")
    board.scroll_into_view_if_needed()
    shot(tab, "5-board-green")

    # The closing cell: the report's table, and the Seal button once the notebook is saved.
    closing = cell(tab, index["summary"])
    expect(closing.locator(".dw-run-summary .dw-status[data-status='passed']").first).to_be_visible()
    tab.keyboard.press("Control+s")
    (record,) = runs.glob("*.json")
    # JupyterLab saves in the background (the dirty mark can clear before the file is written):
    # Seal once the file on disk holds this run's step results.
    wait_until(lambda: saved_run_id(lab.root / "notebooks" / notebook.name)
               == json.loads(record.read_text())["run_id"], tab, what="the notebook saved with its results")
    closing.get_by_role("button", name="Seal").click()
    expect(closing.locator(".dw-seal-status[data-state='sealed']")).to_have_count(1, timeout=CELL_TIMEOUT_MS)
    shot(tab, "6-sealed")
    manifest = json.loads(record.read_text())["manifest"]
    assert manifest["notebook"]["path"].endswith(notebook.name) and record.with_suffix(".html").is_file()


def test_an_executed_notebook_shows_its_saved_board(
        lab: Lab, tab: Page, sandbox: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_notebooks import run_faked

    monkeypatch.setenv("DW_FAKES_STATE", str(tmp_path / "fakes.json"))
    monkeypatch.setenv("DW_FAKES", "{}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    out, _record = run_faked(sandbox, tmp_path)
    shutil.copy(out, lab.root / "notebooks" / "executed.ipynb")
    # A reviewer trusts the record first (File > Trust Notebook): untrusted outputs show as text only.
    subprocess.run([str(Path(sys.executable).with_name("jupyter-trust")), "executed.ipynb"],
                   cwd=lab.root / "notebooks", env=lab.env, check=True, capture_output=True)
    open_notebook(tab, lab, "executed.ipynb")
    at = [c.get("id") for c in nbformat.read(out, as_version=4).cells].index("board")
    cell(tab, at).scroll_into_view_if_needed()
    board = cell(tab, at).locator(".dw-board")  # from the saved widget state: nothing ran here
    steps = len(SCENARIOS["existing-existing"].steps)  # the scenario run_faked executes
    expect(board.locator(".dw-board-row[data-status='passed']")).to_have_count(steps, timeout=60_000)
    expect(board.locator(".dw-board-done")).to_have_text(f"{steps} of {steps} done")
    shot(tab, "7-executed-board")
