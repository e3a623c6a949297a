"""`dwlib.review` and `dw review` on records written by `dwlib.record` (no sandbox needed).

The runs here are built with the record API the runbook uses, so catalogue, show, compare and
verify see exactly the files a real run leaves; tests/test_audit.py does the same on a real run.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jsonschema
import nbformat
import pytest

from dwlib import report, review
from dwlib.clients.http import JournalEntry
from dwlib.record import (
    SCHEMA_FILE,
    RecordError,
    RunRecord,
    content_sha256,
    evidence_dir,
    file_sha256,
    load_record,
    seal,
)
from dwlib.render import result_bundle

DW = str(Path(sys.executable).with_name("dw"))
STEPS = ["preflight", "bootstrap-apply", "verify"]


def _result(step: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"id": step, "step": step, "title": step.title(), "status": status, "summary": f"{step} {status}",
            "checks": [], "tables": {}, "counts": {}, "evidence_files": [], "next_action": "", "doc_url": "",
            "started": "2026-01-01T00:00:00Z", "duration_s": 1.5,
            "calls": [asdict(JournalEntry(started="2026-01-01T00:00:00Z", method="GET", url="https://h/a",
                                          status=200, duration_ms=3.0, retries=1, wait_s=0.5, request_id="r",
                                          retry_reasons=("429",)))],
            "remediation": [], "error": "", **extra}


def make_run(directory: Path, name: str, *, statuses: list[str] | None = None, stamped: int = 600,
             dataverse: str = "https://test.crm.dynamics.com", notebook: bool = True,
             sealed: bool = True) -> Path:
    """A run of three steps with evidence, a notebook embedding the results, sealed (by default)."""
    statuses = statuses if statuses is not None else ["passed", "passed", "passed"]
    path = directory / f"{name}.json"
    run_id = f"{name.rsplit('-', 1)[-1]}-0000-4000-8000-000000000000"
    rec = RunRecord.create(path, run_id=run_id, scenario="existing-existing", steps=STEPS,
                           parameters={"legal_entities": ["USMF"], "auth": {"client_secret": "env:X"}},
                           environments={"dataverse_url": dataverse, "finops_url": "https://f.example"},
                           dry_run=False, interactive=False)
    cells = []
    for step, status in zip(STEPS, statuses, strict=False):
        rec.step_started(step)
        csv = evidence_dir(path) / f"{step}.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text(f"key,value\n{step},{status}\n")
        extra: dict[str, Any] = {"counts": {"stamped": stamped}} if step == "bootstrap-apply" else {}
        if status == "failed":
            extra["error"] = "HTTPStatusError: 403 Forbidden"
        result = _result(step, status, evidence_files=[str(csv)], **extra)
        rec.step_finished(step, result)
        cell = nbformat.v4.new_code_cell(f'rb.run("{step}")')
        cell.outputs = [nbformat.v4.new_output("execute_result", data=result_bundle(result, rec.header()),
                                               execution_count=1)]
        cells.append(cell)
    if notebook:
        nbformat.write(nbformat.v4.new_notebook(cells=cells), path.with_suffix(".ipynb"))
        if sealed:
            seal(path, path.with_suffix(".ipynb"))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    make_run(folder, "20260101T000000Z-existing-existing-aaaa1111")
    make_run(folder, "20260101T000100Z-existing-existing-bbbb2222", statuses=["passed", "failed"],
             stamped=20_000, dataverse="https://prod.crm.dynamics.com")
    (folder / "batch.json").write_text(json.dumps({"runs": []}))  # JSON that is not a record: skipped
    return folder


def dw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DW, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


# ---- the record's integrity -----------------------------------------------------------------------


def test_every_write_stores_the_content_digest_and_the_evidence_hashes(tmp_path: Path) -> None:
    path = make_run(tmp_path, "r", sealed=False)
    data = load_record(path)
    assert data["schema_version"] == 2
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError, match="is not one of"):
        jsonschema.validate({**data, "status": "done"}, schema)  # the schema can say no
    assert data["integrity"]["sha256"] == content_sha256(data)
    assert [e["path"] for e in data["evidence"]] == [f"r-evidence/{s}.csv" for s in sorted(STEPS)]
    assert data["steps"][0]["evidence_files"] == ["r-evidence/preflight.csv"]  # relative: moves with the run
    assert data["manifest"] is None and data["duration_s"] is not None
    manifest = seal(path, path.with_suffix(".ipynb"))
    assert load_record(path)["manifest"] == manifest
    assert manifest["notebook"]["sha256"] == file_sha256(path.with_suffix(".ipynb"))


def test_evidence_is_hashed_again_only_when_it_changed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import dwlib.record

    hashed: list[str] = []
    real = dwlib.record.file_sha256

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(dwlib.record, "file_sha256", counting)
    path = tmp_path / "r.json"
    rec = RunRecord.create(path, run_id="r", scenario="new-new", steps=["a", "b", "c"], parameters={},
                           environments={}, dry_run=False, interactive=False)
    folder = evidence_dir(path)
    folder.mkdir()
    (folder / "a.csv").write_text("x\n")
    rec.step_finished("a", {"step": "a", "status": "passed"})
    (folder / "b.csv").write_text("y\n")
    rec.step_finished("b", {"step": "b", "status": "passed"})
    assert hashed == ["a.csv", "b.csv"]  # a.csv was not read again for step b
    (folder / "a.csv").write_text("changed\n")
    rec.step_finished("c", {"step": "c", "status": "passed"})
    assert hashed[2:] == ["a.csv"]
    assert {e["path"]: e["sha256"] for e in load_record(path)["evidence"]}["r-evidence/a.csv"] == real(
        folder / "a.csv")


@pytest.mark.parametrize("tamper", ["record", "evidence", "added", "removed", "notebook", "notebook-gone"])
def test_verify_finds_what_changed_after_the_run(runs: Path, tamper: str) -> None:
    path = runs / "20260101T000000Z-existing-existing-aaaa1111.json"
    evidence = evidence_dir(path)
    assert all(v.ok for v in review.verify(runs))
    if tamper == "record":
        data = json.loads(path.read_text())
        data["steps"][1]["counts"]["stamped"] = 599
        path.write_text(json.dumps(data))
    elif tamper == "evidence":
        (evidence / "verify.csv").write_text("key,value\nverify,failed\n")
    elif tamper == "added":
        (evidence / "extra.csv").write_text("x\n")
    elif tamper == "removed":
        (evidence / "preflight.csv").unlink()
    elif tamper == "notebook":
        with path.with_suffix(".ipynb").open("a") as fh:
            fh.write(" ")
    else:
        path.with_suffix(".ipynb").unlink()
    (result,) = review.verify(path)
    assert not result.ok and len(result.problems) == 1
    expected = {"record": "the record changed", "evidence": "verify.csv changed",
                "added": "extra.csv was added", "removed": "preflight.csv is missing", "notebook": "notebook",
                "notebook-gone": "is missing"}
    assert expected[tamper] in result.problems[0]
    cli = dw("review", "verify", str(runs))
    assert cli.returncode == 1 and "1 changed" in cli.stdout and "CHANGED" in cli.stdout


def test_an_unsealed_run_is_noted_not_failed(tmp_path: Path) -> None:
    path = make_run(tmp_path, "r", sealed=False)
    (result,) = review.verify(path)
    assert result.ok and "not sealed" in result.notes[0]
    cli = dw("review", "seal", str(path))
    assert cli.returncode == 0, cli.stderr
    assert path.with_suffix(".html").is_file()
    assert review.verify(path)[0].notes == [] and load_record(path)["manifest"]["report"]["sha256"]


# ---- catalogue --------------------------------------------------------------------------------------


def test_the_catalogue_lists_runs_with_their_failing_step_without_opening_notebooks(
        runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = pathlib.Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", spy)
    rows = review.catalogue(runs)
    assert not [name for name in opened if name.endswith(".ipynb")] and "batch.json" in opened
    assert [(r["status"], r["failed_step"]) for r in rows] == [("passed", None),
                                                                ("failed", "bootstrap-apply")]
    assert rows[1]["error"] == "HTTPStatusError: 403 Forbidden"
    assert rows[1]["steps_done"] == 1 and rows[1]["steps_planned"] == 3
    assert rows[0]["notebook"].endswith(".ipynb") and rows[0]["sealed"]


def test_a_killed_run_and_an_old_record_still_show_up(tmp_path: Path) -> None:
    path = make_run(tmp_path, "killed", statuses=["passed"], notebook=False)
    data = load_record(path)
    assert data["status"] == "running"
    data["process"]["pid"] = 2**22 + 11  # no such process: the run was killed
    RunRecord(path, data).write()
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 1, "run_id": "o", "steps_planned": []}))
    rows = {r["run_id"]: r for r in review.catalogue(tmp_path)}
    assert rows["killed-0000-4000-8000-000000000000"]["status"] == "interrupted"
    assert rows["o"]["status"] == "unreadable" and "schema version 2" in rows["o"]["error"]


def test_dw_review_lists_runs_as_table_json_and_html(runs: Path) -> None:
    table = dw("review", str(runs))
    assert table.returncode == 0, table.stderr
    assert "aaaa1111" in table.stdout and "bbbb2222" in table.stdout
    assert "bootstrap-apply" in table.stdout and "2 runs: 1 failed, 1 passed" in table.stdout
    as_json = json.loads(dw("review", str(runs), "--format", "json").stdout)
    assert {"run_id", "scenario", "status", "started", "duration_s", "failed_step"} <= set(as_json[0])
    assert [r["status"] for r in as_json] == ["passed", "failed"]
    page = runs / "index.html"
    assert dw("review", str(runs), "--format", "html", "--to", str(page)).returncode == 0
    text = page.read_text()
    assert text.count('class="dw-status"') == 2
    assert 'href="20260101T000000Z-existing-existing-aaaa1111.ipynb"' in text  # relative to the page
    missing = dw("review", str(runs / "nope"))
    assert missing.returncode == 1 and "is not a directory" in missing.stderr


# ---- one run, two runs ----------------------------------------------------------------------------


def test_show_gives_every_planned_step_and_finds_runs_by_id(runs: Path) -> None:
    run = review.find_run("bbbb", runs)
    text = review.show_text(run)
    assert "failed at step bootstrap-apply" in text
    assert "[PASSED] preflight" in text and "[FAILED] bootstrap-apply" in text and "[NOT RUN] verify" in text
    with pytest.raises(review.ReviewError, match="matches 2 runs"):
        review.find_run("2026", runs)
    with pytest.raises(review.ReviewError, match="no run 'zzz'"):
        review.find_run("zzz", runs)
    custom = make_run(runs, "custom-name", notebook=False)  # a record not named after its run id
    assert review.find_run("name-0000", runs).record_path == custom  # found by its run id all the same
    cli = dw("review", "show", "bbbb", "--runs", str(runs), "--format", "json")
    assert json.loads(cli.stdout)["failed_step"] == "bootstrap-apply"


def test_a_notebook_without_its_record_is_enough_to_review(runs: Path) -> None:
    record = runs / "20260101T000100Z-existing-existing-bbbb2222.json"
    original = load_record(record)
    record.unlink()
    run = review.find_run(record.with_suffix(".ipynb"))
    assert run.from_notebook and run.record["run_id"] == original["run_id"]
    def statuses(record: dict[str, Any]) -> list[tuple[str, str]]:
        return [(s["id"], s["status"]) for s in record["steps"]]

    assert statuses(run.record) == statuses(original)
    assert run.record["status"] == "failed" and run.record["failed_step"] == "bootstrap-apply"
    assert "rebuilt from the notebook" in review.show_text(run)
    empty = runs / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), empty)
    with pytest.raises(RecordError, match="carries no dwlib step results"):
        review.find_run(empty)


def test_compare_shows_parameter_step_and_count_differences(runs: Path) -> None:
    a, b = review.find_run("aaaa", runs), review.find_run("bbbb", runs)
    c = review.compare(a, b)
    assert {"key": "dataverse_url", "a": "https://test.crm.dynamics.com",
            "b": "https://prod.crm.dynamics.com"} in c["environments"]
    assert c["steps"] == [{"step": "bootstrap-apply", "a": "passed", "b": "failed"},
                          {"step": "verify", "a": "passed", "b": "not run"}]
    assert {"step": "bootstrap-apply", "count": "stamped", "a": 600, "b": 20_000,
            "difference": 19_400} in c["counts"]
    assert c["parameters"] == []  # same parameters
    text = dw("review", "compare", "aaaa", "bbbb", "--runs", str(runs)).stdout
    assert "bootstrap-apply stamped: 600 → 20000 (+19,400)" in text and "parameters: no differences" in text


def test_the_report_puts_the_summary_first_and_stands_alone(runs: Path) -> None:
    run = review.find_run("bbbb", runs)
    page = report.report_html(run)
    assert page.index('id="dw-summary"') < page.index('class="jp-Cell')  # summary first, then the notebook
    assert "What stopped the run" in page and "HTTPStatusError: 403 Forbidden" in page
    assert page.count('data-status="failed"') >= 2  # the summary's step table and the failing step


def test_chart_data_comes_from_the_record() -> None:
    record = {"run_id": "r1", "steps_planned": ["a", "b"], "steps": [
        {"id": "a", "status": "passed", "duration_s": 2.0, "calls": [{"wait_s": 1.5, "throttled_wait_s": 1.0,
                                                                       "retries": 2,
                                                                       "retry_reasons": ["429", "503"]}],
         "tables": {"reconciliation": [{"map": "M", "company": "USMF", "finops_rows": 3, "dataverse_rows": 2,
                                        "status": "FAIL"}]}}]}
    assert review.step_durations(record).to_dict("records") == [
        {"step": "a", "status": "passed", "seconds": 2.0}]
    assert review.rows_per_company(record).to_dict("records") == [
        {"map": "M", "company": "USMF", "finops_rows": 3, "dataverse_rows": 2}]
    assert review.throttling(record).to_dict("records") == [
        {"step": "a", "calls": 1, "retries": 2, "throttled": 1, "throttled_wait_s": 1.0, "other_wait_s": 0.5},
        {"step": "b", "calls": 0, "retries": 0, "throttled": 0, "throttled_wait_s": 0.0, "other_wait_s": 0.0}]
    png = report.chart_throttling(review.Run(record, None, None))._repr_png_()
    assert png.startswith(b"\x89PNG")


def test_saved_widgets_become_static_html_for_the_report() -> None:
    state = {
        "box": {"model_name": "VBoxModel",
                "state": {"children": ["IPY_MODEL_html", "IPY_MODEL_row", "IPY_MODEL_out"]}},
        "html": {"model_name": "HTMLModel", "state": {"value": '<table class="dw-board">final</table>'}},
        "row": {"model_name": "HBoxModel",
                "state": {"children": ["IPY_MODEL_btn", "IPY_MODEL_pick", "IPY_MODEL_bar"]}},
        "btn": {"model_name": "ButtonModel", "state": {"description": "Verify now"}},
        "pick": {"model_name": "DropdownModel",
                 "state": {"description": "Sign-in", "index": 1,
                           "_options_labels": ["client_secret", "device_code"]}},
        "bar": {"model_name": "IntProgressModel", "state": {"value": 3, "max": 4}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "stream", "name": "stdout", "text": "a < b"}]}},
    }
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("board")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "board as text", report.WIDGET_VIEW: {"model_id": "box", "version_major": 2}})]
    nb.metadata["widgets"] = {report.WIDGET_STATE: {"state": state}}
    static = report.widgets_as_html(nb)
    data = static.cells[0].outputs[0]["data"]
    assert report.WIDGET_VIEW not in data and "widgets" not in static.metadata
    shown = data["text/html"]
    for part in ('<table class="dw-board">final</table>', "<button disabled>Verify now</button>",
                 "<b>Sign-in</b> <code>device_code</code>", '<progress value="3" max="4">',
                 "<pre>a &lt; b</pre>"):
        assert part in shown, part
    assert report.WIDGET_VIEW in nb.cells[0].outputs[0]["data"]  # the notebook itself is left alone


def test_a_run_status_no_record_has_is_an_error_not_a_guess() -> None:
    from dwlib.review import ReviewError, live_status
    from dwlib.vocab import RunStatus

    assert live_status({"status": "warning"}) is RunStatus.WARNING
    unknown = r"run r1 has status 'done', which a run record does not have \(running"
    with pytest.raises(ReviewError, match=unknown):
        live_status({"run_id": "r1", "status": "done"})
