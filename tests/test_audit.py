"""The audit trail of a real headless run against a sandbox: what the record holds, the notebook
alone, the sealed hashes, the HTML report in a real browser, the review notebook, and no secret
in any byte the run wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import nbformat
import papermill
import pytest
from dw_helpers import JWT, launch_chromium
from papermill.exceptions import PapermillExecutionError

from dwlib import review
from dwlib.execute import this_python_kernel
from dwlib.record import SCHEMA_FILE, file_sha256, load_record
from dwlib.render import RESULT_MIME
from dwlib.scenarios import scenario

ROOT = Path(__file__).resolve().parents[1]
DW = str(Path(sys.executable).with_name("dw"))
SCENARIO = "existing-existing"
# Its Dataverse has rows dual-write will not pick up (prospects, contacts that are not customers):
# plan and verify say so, so the run finishes with warnings (dw run exits 0).
STATUS = "warning"
SECRET_VAR = "DW_AUDIT_SECRET"


@pytest.fixture(scope="module")
def audited(start_sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `dw run` whose client secret comes from an environment variable (`env:` reference)."""
    connection = start_sandbox(SCENARIO, rows=60, fresh=True)
    secret = Path(connection["client_secret_file"]).read_text().strip()
    work = tmp_path_factory.mktemp("audit")
    env = {**os.environ, SECRET_VAR: secret, "XDG_CACHE_HOME": str(work / "token-cache")}
    done = subprocess.run(
        [DW, "run", SCENARIO, "-f", str(ROOT / "params" / f"sandbox-{SCENARIO}.yaml"),
         "-p", f"sandbox.dir={connection['state_dir']}", "-p", f"auth.client_secret=env:{SECRET_VAR}",
         "--out", str(work / "runs")], capture_output=True, text=True, timeout=600, env=env, cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = (work / "runs").glob(f"*-{SCENARIO}-*.json")
    return {"connection": connection, "secret": secret, "work": work, "runs": work / "runs", "record": record,
            "notebook": record.with_suffix(".ipynb"), "report": record.with_suffix(".html"),
            "stdout": done.stdout, "stderr": done.stderr}


def test_the_record_answers_what_ran_where_with_what_and_how_it_went(audited: dict[str, Any]) -> None:
    data = load_record(audited["record"])
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))  # the published schema of version 2
    assert data["schema_version"] == 2 and data["scenario"] == SCENARIO and data["status"] == STATUS
    warned = [c["name"] for st in data["steps"] for c in st["checks"] if c["status"] == "warning"]
    assert warned and all("rows dual-write will not pick up" in name for name in warned)
    assert data["parameters"]["auth"]["client_secret"] == f"env:{SECRET_VAR}"  # a reference only
    observed = data["environments"]["observed"]
    assert observed["organization_id"] and observed["tenant_id"] == audited["connection"]["tenant_id"]
    assert data["environments"]["dataverse_url"] == audited["connection"]["dataverse_url"]
    assert data["dwlib"]["version"] and re.fullmatch(r"[0-9a-f]{40}", data["dwlib"]["git_revision"])
    assert data["started"] <= data["ended"] and data["duration_s"] >= 0
    assert [s["id"] for s in data["steps"]] == scenario(SCENARIO).step_ids()
    for step in data["steps"]:
        assert {"status", "summary", "duration_s", "calls", "remediation", "counts"} <= set(step)
    http = data["http"]
    assert http["calls"] == sum(e["calls"] for e in http["by_endpoint"]) > 0
    assert {"retries", "throttled_retries", "wait_s"} <= set(http)
    # evidence: every file listed with its sha256; the manifest holds the final notebook's and report's
    assert {e["path"].split("/")[-1] for e in data["evidence"]} >= {"bootstrap-applied.csv", "plan.csv"}
    for entry in data["evidence"]:
        assert file_sha256(audited["runs"] / entry["path"]) == entry["sha256"]
    manifest = data["manifest"]
    assert manifest["notebook"]["sha256"] == file_sha256(audited["notebook"])
    assert manifest["report"]["sha256"] == file_sha256(audited["report"])
    assert f"report:   {audited['report']}" in audited["stdout"]
    assert all(v.ok and not v.notes for v in review.verify(audited["runs"]))


def test_the_executed_notebook_alone_is_enough_to_review(audited: dict[str, Any]) -> None:
    nb = nbformat.read(audited["notebook"], as_version=4)
    embedded = [o["data"] for c in nb.cells for o in c.get("outputs", []) if RESULT_MIME in o.get("data", {})]
    assert len(embedded) == len(scenario(SCENARIO).step_ids())
    assert all("text/html" in d and "text/plain" in d for d in embedded)  # readable, not only JSON
    rebuilt = review.record_from_notebook(audited["notebook"])
    record = load_record(audited["record"])
    for key in ("run_id", "scenario", "parameters", "environments", "steps_planned"):
        assert rebuilt[key] == record[key], key
    assert [(s["id"], s["status"], s["counts"]) for s in rebuilt["steps"]] == \
        [(s["id"], s["status"], s["counts"]) for s in record["steps"]]
    assert rebuilt["status"] == STATUS


def _written_files(audited: dict[str, Any]) -> Iterator[Path]:
    yield from (p for p in audited["runs"].rglob("*") if p.is_file())
    yield Path(audited["connection"]["state_dir"]) / "sandbox.log"


def test_no_secret_or_token_lands_in_any_written_byte(audited: dict[str, Any]) -> None:
    secret = audited["secret"].encode()
    files = list(_written_files(audited))
    assert {p.suffix for p in files} >= {".ipynb", ".json", ".html", ".csv", ".log"}
    for path in files:
        data = path.read_bytes()
        assert secret not in data, f"the client secret is in {path}"
        assert not JWT.search(data), f"an access token is in {path}: {JWT.search(data)}"
    for stream in (audited["stdout"], audited["stderr"]):
        assert audited["secret"] not in stream and not JWT.search(stream.encode())
    nb = json.loads(audited["notebook"].read_text())
    assert audited["secret"] not in json.dumps(nb["metadata"])  # papermill's own record of the run


def test_errors_shown_by_a_runbook_kernel_are_scrubbed(audited: dict[str, Any], tmp_path: Path) -> None:
    """A cell failing with the secret and a live token in its message: the notebook's traceback,
    papermill's error and its metadata hold neither."""
    source = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("params_file = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os\nfrom dwlib.runbook import Runbook\n"
                                  "from dwlib.clients import scope_for\n"
                                  "rb = Runbook.from_notebook(globals(), scenario='existing-existing')\n"
                                  "token = rb.session.tokens.token(\n"
                                  "    scope_for(rb.params.environments.dataverse_url))"),
        nbformat.v4.new_code_cell(f"raise RuntimeError('leak ' + os.environ['{SECRET_VAR}'] + ' ' + token)"),
    ])
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook, out = tmp_path / "leak.ipynb", tmp_path / "leak-out.ipynb"
    nbformat.write(source, notebook)
    params = tmp_path / "params.yaml"
    params.write_text(f"scenario: {SCENARIO}\nsandbox: {{dir: {audited['connection']['state_dir']}}}\n"
                      f"auth: {{client_secret: 'env:{SECRET_VAR}'}}\nlegal_entities: [USMF]\n")
    os.environ[SECRET_VAR] = audited["secret"]
    try:
        with this_python_kernel(), pytest.raises(PapermillExecutionError) as failed:
            papermill.execute_notebook(str(notebook), str(out), kernel_name="python3", progress_bar=False,
                                       parameters={"params_file": str(params), "record_path":
                                                   str(tmp_path / "leak.json")}, cwd=str(tmp_path))
    finally:
        del os.environ[SECRET_VAR]
    assert failed.value.ename == "RuntimeError" and failed.value.evalue.startswith("leak ***")
    written = out.read_bytes()
    assert b"RuntimeError" in written and b"leak ***" in written  # the error is shown, scrubbed
    assert audited["secret"].encode() not in written and not JWT.search(written)
    assert audited["secret"] not in str(failed.value) and not JWT.search(str(failed.value).encode())


def test_dw_review_reads_the_real_run(audited: dict[str, Any]) -> None:
    rows = json.loads(subprocess.run([DW, "review", str(audited["runs"]), "--format", "json"],
                                     capture_output=True, text=True, timeout=120).stdout)
    (row,) = rows
    assert row["status"] == STATUS and row["scenario"] == SCENARIO and row["failed_step"] is None
    assert row["duration_s"] == load_record(audited["record"])["duration_s"] and row["sealed"]
    copy = audited["work"] / "tampered"
    shutil.copytree(audited["runs"], copy)
    (record,) = copy.glob("*.json")
    nb = json.loads(record.with_suffix(".ipynb").read_text())
    nb["cells"][0]["source"] = "edited afterwards"
    record.with_suffix(".ipynb").write_text(json.dumps(nb))
    verify = subprocess.run([DW, "review", "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and ".ipynb changed since the run" in verify.stdout


def test_the_review_notebook_shows_catalogue_run_and_charts(audited: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "review.ipynb"
    with this_python_kernel():
        papermill.execute_notebook(str(ROOT / "notebooks" / "review.ipynb"), str(out), kernel_name="python3",
                                   parameters={"runs_dir": str(audited["runs"])}, progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    outputs = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
    assert STATUS in outputs["catalogue"][0]["data"]["text/html"]
    assert 'id="dw-summary"' in outputs["run"][0]["data"]["text/html"]
    for chart in ("durations", "rows", "throttling"):
        assert outputs[chart][0]["data"]["image/png"], chart
    assert "OK" in outputs["verify"][0]["data"]["text/plain"]


@pytest.mark.browser
def test_the_html_report_opens_in_a_browser_with_the_summary_first(audited: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            fetched: list[str] = []
            page.on("request", lambda request: fetched.append(request.url))
            page.goto(audited["report"].as_uri())
            summary = page.locator("#dw-summary")
            summary.wait_for(state="visible", timeout=15_000)
            assert "Run summary: existing-existing" in summary.locator("h1").inner_text()
            assert summary.locator("h1 .dw-status").inner_text() == STATUS
            assert summary.locator("tbody tr").count() >= len(scenario(SCENARIO).step_ids())
            box = summary.bounding_box()
            assert box is not None and box["y"] < 900  # in the first screenful, before the notebook
            assert page.locator(".jp-Cell").count() > 10  # the executed notebook follows
            # The step board, drawn from the notebook's saved widget state, shows how the run ended.
            rows = page.locator(".dw-board .dw-board-row")
            assert rows.count() == len(scenario(SCENARIO).step_ids())
            assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.status)")) <= {
                "passed", "already_done", "warning"}
            page.wait_for_load_state("networkidle")
            assert [u for u in fetched if not u.startswith(("file:", "data:"))] == []  # self-contained
            page.screenshot(path=str(tmp_path / "report.png"))
        finally:
            browser.close()
