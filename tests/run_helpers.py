"""Helpers of the tests that run whole runbooks against a sandbox (as `dw run` does).

`run` executes a scenario's notebook against the sandbox of a connection (`dw_run`: as a `dw run`
process); `assert_passed` checks that every step passed and the verification reconciled; `writes`
lists a run's calls that change something; `await_step` waits for a `dw run` to reach a step;
`outage` restarts a sandbox while its clients knock; `round_trip_leftovers` lists the round trip's
test customers left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
from dw_helpers import Consultant

from dwlib import execute, text
from dwlib.record import RecordError, load_record
from dwlib.sandbox import control, server
from dwlib.scenarios import SCENARIOS
from dwlib.steps.support.roundtrip import PREFIX

ROOT = Path(__file__).resolve().parents[1]
# A call that changes something: any write method, and POSTs other than sign-in and DMF reads.
READ_POSTS = ("/oauth2/", "/Microsoft.Dynamics.DataEntities.Get")


def sandbox_dir(connection: dict[str, Any]) -> Path:
    """The state directory of the sandbox of `connection`."""
    return Path(connection["ca_bundle"]).parent


def run(scenario: str, connection: dict[str, Any], out: Path, **overrides: Any) -> execute.Execution:
    """The scenario's notebook against the sandbox of `connection`, as `dw run` executes it."""
    params = ROOT / "params" / f"sandbox-{scenario}.yaml"
    return execute.execute(scenario, params, {"sandbox.dir": str(sandbox_dir(connection)), **overrides}, out)


def assert_passed(execution: execute.Execution) -> dict[str, Any]:
    """Every step passed or was already done, and the reconciliation holds; the record."""
    data = execution.data
    assert data is not None, execution.error
    assert execution.ok, execution.summary()
    return assert_reconciled(data)


def assert_reconciled(data: dict[str, Any]) -> dict[str, Any]:
    """The record `data` says verify reconciled every map and company; `data`."""
    verify = next(s for s in data["steps"] if s["id"] == "verify")
    rows = verify["tables"]["reconciliation"]
    assert rows and all(r["status"] == "PASS" for r in rows), rows
    return data


# The name of the checks that count existing Dataverse rows dual-write will not pick up.
ELIGIBILITY = "rows dual-write will not pick up"


def rendered(notebook: Path, css_class: str) -> list[str]:
    """The HTML outputs of an executed notebook that hold an element of `css_class`."""
    cells = nbformat.read(notebook, as_version=4).cells
    return [o["data"]["text/html"] for c in cells if c.cell_type == "code" for o in c.get("outputs", [])
            if f'class="{css_class}' in o.get("data", {}).get("text/html", "")
            or f'class="dw {css_class}' in o.get("data", {}).get("text/html", "")]


def assert_rendered_in_language(notebook: Path, language: str, scenario: str) -> None:
    """The executed `notebook` shows its step results and closing summary in `language`: each status
    badge and each column name as `dwlib/text/<language>/labels.yaml` words them."""
    results = rendered(notebook, "dw-step-result")
    assert results, f"no step result in {notebook}"
    for html in results:
        status, said = re.search(r'data-status="(\w+)" style="[^"]*">([^<]*)</span>', html).groups()
        assert said == text.status_word(language, status).upper(), (status, said)
    checks = [f"<th>{text.word(language, k)}</th>" for k in ("check", "evidence", "fix")]
    assert any(all(h in html for h in checks) for html in results)  # the checks tables, in `language`
    if language != "en":
        english = [f"<th>{text.word('en', k)}</th>" for k in ("check", "evidence", "fix")]
        assert not [html for html in results if any(h in html for h in english)]
    summaries = rendered(notebook, "dw-run-summary")
    assert summaries and all(f"<th>{text.word(language, 'summary')}</th>" in h for h in summaries)
    board = final_board(notebook)
    assert text.word(language, "steps_of", scenario=scenario) in board, board[:300]
    assert f"<th>{text.word(language, 'result')}</th>" in board


def final_board(notebook: Path) -> str:
    """The step board's HTML as the executed `notebook` keeps it: the widget's saved state, or the
    HTML output replaced in place (without ipywidgets)."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == "board")
    for output in cell.outputs:
        data = output.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            model = data["application/vnd.jupyter.widget-view+json"]["model_id"]
            states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
            return str(states[model]["state"]["value"])
        if 'class="dw-board"' in data.get("text/html", ""):
            return str(data["text/html"])
    raise AssertionError(f"no step board in {notebook}")


def assert_in_language(data: dict[str, Any], language: str, notebook: Path | None = None) -> dict[str, Any]:
    """The run `data` spoke `language`: its step titles, and its portal instructions each translated
    (none left in English) while the consultant acted on them, and, given its executed `notebook`, the
    words of its rendered results (`assert_rendered_in_language`); `data`."""
    if notebook is not None:
        assert_rendered_in_language(notebook, language, data["scenario"])
    sc = SCENARIOS[data["scenario"]]
    assert data["parameters"]["language"] == language
    for step in data["steps"]:
        ref = next(r for r in sc.steps if r.id == step["id"])
        assert step["title"] == text.step_for(language, ref.id, ref.step).title
        for gate in step.get("gates") or []:
            sentences = [gate["title"], *gate["steps"], gate["verify"], *gate["links"]]
            if language != "en":
                assert [s for s in gate["en"]["steps"] if text.gate_sentence(language, s) is None] == []
                assert text.gate_sentence(language, gate["en"]["title"]) == gate["title"]
            assert all(sentences)
    return data


def assert_finished_with_eligibility_warnings(data: dict[str, Any]) -> dict[str, Any]:
    """The run `data` finished with warnings, and every warning is about existing Dataverse rows
    dual-write will not pick up (what the seeded existing-existing data has); `data`."""
    assert data["status"] == "warning", data["status"]
    warned = [c for s in data["steps"] for c in s["checks"] if c["status"] == "warning"]
    assert warned and all(ELIGIBILITY in c["name"] for c in warned), warned
    return data


def writes(data: dict[str, Any]) -> list[str]:
    """The calls of a run that change something (see READ_POSTS)."""
    return [f"{c['method']} {c['url']}" for s in data["steps"] for c in s["calls"]
            if c["method"] in ("PATCH", "PUT", "DELETE")
            or (c["method"] == "POST" and not any(r in c["url"] for r in READ_POSTS))]


def await_step(out: Path, step: str, proc: subprocess.Popen[Any], deadline_s: float = 600) -> Path:
    """The record under `out` of a `dw run` (`proc`) once it says `step` is running."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before step {step} was seen running"
        for path in out.glob("*.json"):
            with contextlib.suppress(RecordError):
                if load_record(path)["current_step"] == step:
                    return path
        time.sleep(0.05)
    raise AssertionError(f"step {step} did not start within {deadline_s} s")


def outage(connection: dict[str, Any], proc: subprocess.Popen[Any], *, attempts: int = 3,
           down_s: float = 0.0, deadline_s: float = 300) -> int:
    """Stop the sandbox, keep its port refusing service until its clients (the run `proc`, which
    must not end meanwhile) tried `attempts` times to connect (and at least `down_s` seconds
    passed), then start it again on the same port.

    While it is down, a listener on the port takes each connection and closes it at once (what a
    client sees of a restarting service: no TLS handshake), counting them. Returns the count.
    """
    root = sandbox_dir(connection)
    control.stop(root)
    stub = server.bind(connection["port"])
    stub.settimeout(0.1)  # so that the thread sees `over` (a blocked accept outlives a close)
    seen = 0
    enough, over = threading.Event(), threading.Event()

    def refuse() -> None:
        nonlocal seen
        while not over.is_set():
            try:
                conn, _ = stub.accept()
            except TimeoutError:
                continue
            conn.close()
            seen += 1
            if seen >= attempts:
                enough.set()

    refusing = threading.Thread(target=refuse, daemon=True)
    refusing.start()
    started = time.monotonic()
    while not enough.wait(0.1):
        assert proc.poll() is None, f"the run ended while the sandbox was down: {proc.communicate()[0]}"
        assert time.monotonic() - started < deadline_s, f"no {attempts} tries to connect in {deadline_s} s"
    if down_s > time.monotonic() - started:
        time.sleep(down_s - (time.monotonic() - started))  # the outage's length, as asked
    over.set()
    refusing.join()
    stub.close()
    assert control.start(root=root, owner_pid=os.getpid()).connection["port"] == connection["port"]
    return seen


def dw_run(scenario: str, connection: dict[str, Any], out: Path, **overrides: Any) -> subprocess.Popen[str]:
    """`dw run` of the scenario against the sandbox of `connection`, as its own process (output piped)."""
    command = [str(Path(sys.executable).with_name("dw")), "run", scenario,
               "-f", str(ROOT / "params" / f"sandbox-{scenario}.yaml"),
               "-p", f"sandbox.dir={sandbox_dir(connection)}", "--out", str(out)]
    for key, value in overrides.items():
        command += ["-p", f"{key}={json.dumps(value)}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def round_trip_leftovers(connection: dict[str, Any]) -> list[str]:
    """The round-trip customers (`DWRT-…`) left in F&O or Dataverse."""
    consultant = Consultant(connection)
    try:
        dv = consultant.dv_rows(f"accounts?$select=accountnumber"
                                f"&$filter=startswith(accountnumber,'{PREFIX}')")
        fo = consultant.fo_rows(f"CustomersV3?cross-company=true&$select=CustomerAccount"
                                f"&$filter=CustomerAccount eq '{PREFIX}-*'")
        return [f"Dataverse {r['accountnumber']}" for r in dv] + [f"F&O {r['CustomerAccount']}" for r in fo]
    finally:
        consultant.close()
