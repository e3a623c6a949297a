"""The troubleshoot runbook: read-only findings matched to the known-error catalogue, and a support
bundle that holds no secret (every byte scanned for the client secret and the run's tokens).

The sandbox is prepared as `dw run troubleshoot --sandbox` prepares it (`dwlib.sandbox.prepare`): the
new-data-new setup runbook, then a documented initial-sync error seeded (`dwlib.sandbox.sync_errors`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_helpers import run, sandbox_dir, writes

from dwlib.sandbox import control, prepare

SCENARIO = "troubleshoot"
ROWS = 100


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_findings_are_matched_to_known_errors_and_the_bundle_holds_no_secret(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox(prepare.profile(SCENARIO), rows=ROWS, fresh=True)
    root = sandbox_dir(connection)
    prepare.prepare(SCENARIO, root)
    before = control.table_rows(root)
    execution = run(SCENARIO, connection, tmp_path / "runs")
    data = execution.data
    assert data is not None and execution.ok, execution.summary()
    assert writes(data) == [] and control.table_rows(root) == before  # read-only
    steps = {s["id"]: s for s in data["steps"]}
    findings = steps["troubleshoot-findings"]["tables"]["findings"]
    accounts = [f for f in findings if f["map"] == "Customers V3 (accounts)"]
    assert accounts and all(f["known_error"] and f["fix"] for f in accounts), findings
    assert steps["troubleshoot-findings"]["status"] == "warning"

    bundle = execution.record.parent / next(f for f in steps["troubleshoot-bundle"]["evidence_files"]
                                            if f.endswith(".zip"))
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        content = b"".join(zf.read(n) for n in names)
    assert "record.json" in names and "responses.json" in names
    assert any(n.startswith("evidence/") and n.endswith("troubleshoot-findings.csv") for n in names)
    secret = Path(connection["client_secret_file"]).read_text().strip()
    raw = bundle.read_bytes() + content
    assert secret and secret.encode() not in raw
    assert b"Bearer ey" not in raw and b"eyJ0eX" not in raw  # no access token (JWT) either
