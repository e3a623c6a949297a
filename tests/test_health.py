"""The health-check runbook: read-only, Microsoft's health-check codes, drift since the previous
check of the same environments, and a failure (dw run exits 1) above `health.max_drift_rows`.

The sandbox is prepared as `dw run health-check --sandbox` prepares it (`dwlib.sandbox.prepare`): the
new-data-new setup runbook run to its end, then customers renamed in F&O outside dual-write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_helpers import run, sandbox_dir, writes

from dwlib import cli, review
from dwlib.sandbox import control, drift, prepare
from dwlib.steps.health import DRIFT_STEP, SCENARIO, previous_check

ROOT = Path(__file__).resolve().parents[1]
ROWS = 100


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def steps(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in data["steps"]}


def test_health_check_reads_only_names_the_codes_and_reports_drift_since_the_last_check(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox(prepare.profile(SCENARIO), rows=ROWS, fresh=True)
    root = sandbox_dir(connection)
    prepare.prepare(SCENARIO, root)
    before = control.table_rows(root)
    runs = tmp_path / "runs"

    first = run(SCENARIO, connection, runs)
    assert first.ok and first.data is not None, first.summary()  # 3 rows of drift, threshold 5: a warning
    found = steps(first.data)
    assert writes(first.data) == [] and control.table_rows(root) == before  # read-only
    names = [c["name"] for c in found["health-configuration"]["checks"]]
    for code in ("DWDVEV1003", "DWFOEV1003", "DWDVEV1007", "DWxxEV1001 / DWxxEV1004"):
        assert any(n.startswith(code) for n in names), (code, names)
    assert any(n == "table map Customers V3 (accounts)" for n in names)
    table = found[DRIFT_STEP]["tables"]["drift"]
    usmf = next(r for r in table if r["map"] == "Customers V3 (accounts)" and r["company"] == "USMF")
    assert usmf["out_of_sync"] == 3 and usmf["previous_out_of_sync"] == ""
    assert sum(r["out_of_sync"] for r in table) == 3 and found[DRIFT_STEP]["status"] == "warning"

    drift.seed(root, rows=5)  # two more customers changed outside dual-write
    second = run(SCENARIO, connection, runs, **{"health.max_drift_rows": 4})
    assert not second.ok and second.data is not None and second.data["failed_step"] == DRIFT_STEP
    usmf = next(r for r in steps(second.data)[DRIFT_STEP]["tables"]["drift"]
                if r["map"] == "Customers V3 (accounts)" and r["company"] == "USMF")
    assert (usmf["out_of_sync"], usmf["previous_out_of_sync"], usmf["since_previous"]) == (5, 3, 2)
    assert steps(second.data)[DRIFT_STEP]["counts"]["since_previous_check"] == 2

    # dw review compare between the two checks of this pair shows the drift.
    compared = review.compare(review.find_run(first.record, runs), review.find_run(second.record, runs))
    drifted = {(c["count"], c["a"], c["b"]) for c in compared["counts"] if c["step"] == DRIFT_STEP}
    assert ("out of sync: Customers V3 (accounts) USMF", 3, 5) in drifted
    assert ("out_of_sync_rows", 3, 5) in drifted


def test_dw_run_exits_1_on_drift_above_the_threshold_and_0_below(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    params = str(ROOT / "params" / f"sandbox-{SCENARIO}.yaml")
    out = tmp_path / "runs"
    assert cli.main(["run", SCENARIO, "-f", params, "--sandbox", "--rows", str(ROWS), "--out", str(out)]) == 0
    assert cli.main(["run", SCENARIO, "-f", params, "--sandbox", "--rows", str(ROWS), "--out", str(out),
                     "-p", "health.max_drift_rows=0", "--lang", "nl"]) == 1
    records = sorted(out.glob(f"*-{SCENARIO}-*.json"))
    last = json.loads(records[-1].read_text())
    assert last["parameters"]["language"] == "nl"
    assert steps(last)[DRIFT_STEP]["title"] == "Statuscontrole: aantallen, controlesommen en afwijking"


def _record(path: Path, started: str, dataverse: str, out_of_sync: int) -> None:
    path.write_text(json.dumps({
        "scenario": SCENARIO, "started": started,
        "environments": {"dataverse_url": dataverse, "finops_url": "https://fo"},
        "steps": [{"id": DRIFT_STEP, "tables": {"drift": [{"map": "m", "company": "USMF",
                                                            "out_of_sync": out_of_sync}]}}]}))


def test_the_previous_check_is_the_latest_of_the_same_pair_of_environments(tmp_path: Path) -> None:
    _record(tmp_path / "a.json", "2026-01-01T00:00:00Z", "https://dv", 1)
    _record(tmp_path / "b.json", "2026-01-02T00:00:00Z", "https://dv/", 2)
    _record(tmp_path / "c.json", "2026-01-03T00:00:00Z", "https://other", 3)
    _record(tmp_path / "now.json", "2026-01-04T00:00:00Z", "https://dv", 4)
    (tmp_path / "broken.json").write_text("{")
    pair = {"dataverse_url": "https://dv", "finops_url": "https://fo"}
    found = previous_check(tmp_path, pair, current="now")
    assert found is not None and found["started"] == "2026-01-02T00:00:00Z"
    assert previous_check(tmp_path, {**pair, "finops_url": "https://elsewhere"}, current="now") is None
