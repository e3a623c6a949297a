"""Reliability against the sandbox: bulk work under injected faults, and secrets that never leak."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import sandbox_params

from dwlib.clients import AuthError, DataverseClient, HttpConfig, HttpError, connect, make_client, scope_for
from dwlib.sandbox import control

ROWS = 50_000
# Only what a correct client must ride out: throttling, unavailability, timeouts, cut connections.
FAULTS = "429=0.2,503=0.08,504=0.05,drop=0.06,seed=20,retry=1"


def test_a_50000_row_bulk_update_under_429s_503s_504s_and_dropped_connections(start_sandbox: Any) -> None:
    conn = start_sandbox("existing-existing", rows=ROWS, fresh=True)
    # 39 % of the requests fault: 15 attempts make a batch failing all of them (0.39^15) negligible.
    options = {"options.http.backoff_s": 0.05, "options.http.retry_attempts": 15}
    waits: list[float] = []
    with connect(sandbox_params(conn, **options), sleep=waits.append) as s:
        dv = s.dataverse
        company = dv.create("cdm_companies", {"cdm_companycode": "USMF", "cdm_name": "Contoso USA"})
        ids = [r["accountid"] for r in dv.query("accounts", select=["accountid"])]
        assert len(ids) == ROWS
        bind = f"/cdm_companies({company})"
        control.admin(conn, "faults", FAULTS)
        try:
            result = dv.update_multiple("accounts", ({"accountid": i, "msdyn_company@odata.bind": bind}
                                                     for i in ids), errors="collect")
        finally:
            control.admin(conn, "faults", "")
        counts = dv.count_by("accounts", ["_msdyn_company_value"])
        bulk = [e for e in s.journal.entries() if "CRM.UpdateMultiple" in e.url]
    assert (result.total, result.succeeded, result.failures) == (ROWS, ROWS, [])  # one pass finishes
    assert counts == [{"_msdyn_company_value": company, "count": ROWS}]  # every row, none created twice
    reasons = {r for e in bulk for r in e.retry_reasons}
    assert {"429", "503", "504"} <= reasons  # throttling and unavailability were waited out
    assert reasons & {"ReadError", "RemoteProtocolError"}  # and cut connections repeated
    assert all(e.status == 204 for e in bulk)  # every request ended in success
    waited = sum(e.wait_s for e in bulk)
    assert waited >= sum(1 for e in bulk for r in e.retry_reasons if r in ("429", "503"))  # Retry-After: 1
    assert sum(waits) == pytest.approx(sum(e.wait_s for e in s.journal.entries()), abs=0.01)  # all waited
    assert all(e.request_id for e in bulk)


def test_a_secret_given_by_reference_never_appears(sandbox: dict[str, Any], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = Path(sandbox["client_secret_file"]).read_text().strip()
    wrong = "wrong-but-still-secret-7c1e9a"
    monkeypatch.setenv("DW_TEST_WRONG_SECRET", wrong)
    caplog.set_level(logging.DEBUG)
    p = sandbox_params(sandbox)
    texts = [repr(p), str(p), p.model_dump_json()]
    with connect(p) as s:
        s.dataverse.whoami()
        list(s.finops.query("LegalEntities"))
        s.dmf.poll_s = 0.2
        s.dmf.export_package("CustomerGroups-Export", tmp_path / "g.zip", legal_entity="USMF")
        tokens = [s.tokens.token(scope_for(p.environments.dataverse_url)),
                  s.tokens.token(scope_for(p.environments.finops_url))]
        errors: list[Exception] = []
        with pytest.raises(HttpError) as not_found:
            s.dataverse.get("accounts", "00000000-0000-0000-0000-000000000001")
        errors.append(not_found.value)
        wrong_audience = make_client(HttpConfig.from_params(p), s.journal,
                                     auth=s.tokens.auth_for(p.environments.finops_url))
        with pytest.raises(AuthError) as refused:
            DataverseClient(wrong_audience, p.environments.dataverse_url).whoami()
        wrong_audience.close()
        errors.append(refused.value)
        texts += [json.dumps(s.journal.as_dicts()), repr(s)]
    with connect(sandbox_params(sandbox, **{"auth.client_secret": "env:DW_TEST_WRONG_SECRET"})) as bad:
        with pytest.raises(AuthError) as bad_secret:
            bad.dataverse.whoami()
        errors.append(bad_secret.value)
        texts.append(json.dumps(bad.journal.as_dicts()))
    texts += [t for e in errors for t in (str(e), repr(e), repr(e.args))]
    texts += [caplog.text, *(r.getMessage() for r in caplog.records)]
    assert len(caplog.records) > 10  # the stack, httpx and msal did log
    leaks = [t for t in texts for value in (secret, wrong, *tokens) if value in t]
    assert leaks == []


DMF_FAULTS = "429=0.15,503=0.1,504=0.1,drop=0.1,seed=5,retry=1"


def _dmf_jobs(conn: dict[str, Any]) -> int:
    """The DMF jobs the sandbox holds (one `kv` row per execution id, see docs/sandbox.md)."""
    db = sqlite3.connect(f"file:{Path(conn['state_dir']) / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM _kv WHERE k LIKE 'dmf.job.%'").fetchone()[0])
    finally:
        db.close()


def test_dmf_jobs_start_once_each_under_429s_503s_504s_and_dropped_connections(
        start_sandbox: Any, tmp_path: Path) -> None:
    conn = start_sandbox("existing-existing", rows=20, fresh=True)
    # Attempts enough for 45 % faults; the waits (Retry-After: 1, honoured) are recorded, not slept.
    options = {"options.http.backoff_s": 0.02, "options.http.retry_attempts": 15}
    runs = 12
    waits: list[float] = []
    with connect(sandbox_params(conn, **options), sleep=waits.append) as s:
        s.dmf.poll_s = 0.02
        before = _dmf_jobs(conn)
        control.admin(conn, "faults", DMF_FAULTS)
        try:
            for i in range(runs // 2):
                package = s.dmf.export_package("CustomerGroups-Export", tmp_path / f"g{i}.zip",
                                               legal_entity="USMF")
                assert s.dmf.import_package(package, "CustomerGroups-Import",
                                            legal_entity="GBSI") == "Succeeded"
        finally:
            control.admin(conn, "faults", "")
        starts = [e for e in s.journal.entries() if e.url.endswith(("ExportToPackage", "ImportFromPackage"))]
    assert _dmf_jobs(conn) - before == runs  # one job per start, none doubled, none lost
    failed = [e for e in starts if e.status != 200]
    assert failed and {str(e.status) for e in failed if e.status} & {"429", "503", "504"}  # faults hit starts
    assert len(starts) > runs  # so some starts were tried again
    assert 1.0 in waits  # the injected Retry-After: 1 was waited out as given
