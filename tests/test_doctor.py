"""`dw doctor --record DIR` against a sandbox: the read-only calls answer, each request and response
is saved as JSON with an index, and nothing in them is a secret, a token or personal data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import Consultant, leaks, session_for

from dwlib import doctor
from dwlib.clients import DmfError
from dwlib.sandbox import dmf_package

ROOT = Path(__file__).resolve().parents[1]
DW = str(Path(sys.executable).with_name("dw"))
SECRET_VAR = "DW_DOCTOR_SECRET"


def _failed_import(connection: dict[str, Any], tmp_path: Path) -> str:
    """A DMF import with a row F&O refuses: a job with errors to read."""
    customers = dmf_package.DMF_ENTITIES["CustomersV3"]
    row = {"CustomerAccount": "US-DOC1", "PartyType": "Organization", "CustomerGroupId": "ZZ"}
    package = tmp_path / "bad.zip"
    for _ in dmf_package.write_package(package, "CustomersV3-Import", [(customers, iter([[row.get(c) for c in
                                                                                  customers.columns]]))]):
        pass
    with session_for(connection) as s:
        s.dmf.poll_s = 0.05
        url = s.dmf.write_url(package.name)
        s.dmf.upload(url, package)
        execution = s.dmf.start_import(url, "CustomersV3-Import", legal_entity="USMF")
        with pytest.raises(DmfError):
            s.dmf.wait(execution)
    return execution


@pytest.fixture(scope="module")
def recorded(start_sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    connection = start_sandbox("existing-existing", rows=20, fresh=True)
    work = tmp_path_factory.mktemp("doctor")
    consultant = Consultant(connection)
    try:
        consultant.portal("POST", "/lcs/power-platform-integration")
        consultant.portal("POST", "/lcs/dual-write/link", {"legal_entities": ["USMF"], "start_maps": False})
        consultant.portal("POST", "/dualwrite/maps/legal-entities/run", {"initial_sync": False})
    finally:
        consultant.close()
    execution = _failed_import(connection, work)
    secret = Path(connection["client_secret_file"]).read_text().strip()
    env = {**os.environ, SECRET_VAR: secret, "XDG_CACHE_HOME": str(work / "cache")}
    done = subprocess.run(
        [DW, "doctor", "-f", str(ROOT / "params" / "sandbox-existing-existing.yaml"),
         "-p", f"sandbox.dir={connection['state_dir']}", "-p", f"auth.client_secret=env:{SECRET_VAR}",
         "--record", str(work / "out"), "--execution-id", execution],
        capture_output=True, text=True, timeout=300, env=env, cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"connection": connection, "secret": secret, "out": work / "out", "stdout": done.stdout,
            "stderr": done.stderr, "execution": execution}


def _files(out: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("*.json"))}


def test_every_read_is_recorded_as_parseable_request_and_response_files(recorded: dict[str, Any]) -> None:
    files = _files(recorded["out"])
    index = files["index.json"]
    assert [r["id"] for r in index["reads"]] == [r.id for r in doctor.READS]  # the job reads too
    for read in index["reads"]:
        assert read["verifies"] and read["status"] is not None, read
        request, response = files[read["request"]], files[read["response"]]
        assert request["method"] in ("GET", "POST") and request["url"].startswith("https://127.0.0.1:")
        assert response["status"] == read["status"] and "headers" in response
        assert request["headers"].get("authorization") == "***"  # present, and masked
    assert f"{len(index['reads'])} reads (redacted)" in recorded["stdout"]


def test_the_answers_show_what_they_verify(recorded: dict[str, Any]) -> None:
    files = _files(recorded["out"])
    by_id = {r["id"]: files[r["response"]] for r in files["index.json"]["reads"]}
    assert by_id["dataverse-link"]["body"]["Url"] == recorded["connection"]["finops_url"]
    projects = by_id["finops-project-status"]["body"]["value"]
    assert {p["Status"] for p in projects} == {"Running"}  # enum names
    assert {p["IsDelete"] for p in projects} == {"No", "Yes"}
    assert by_id["dmf-status-unknown"]["body"]["value"] == "Unknown"
    assert by_id["dmf-job-status"]["body"]["value"] in ("Failed", "PartiallySucceeded")
    errors = json.loads(by_id["dmf-job-errors"]["body"]["value"])
    assert errors and "not found in the related table" in errors[0]["ErrorMessage"]
    mapping = json.loads(by_id["dataverse-entity-map"]["body"]["value"][0]["msdyn_mapping"])
    assert mapping["entityMappingTasks"][0]["legs"][0]["fieldMappings"]
    options = by_id["dataverse-status-options"]["body"]["OptionSet"]["Options"]
    labels = {o["Label"]["UserLocalizedLabel"]["Label"] for o in options}
    assert labels >= {"Running", "Paused", "Not running"}
    keys = by_id["dataverse-company-key"]["body"]["value"]
    assert ["cdm_companycode"] in [k["KeyAttributes"] for k in keys]


def test_the_reads_per_table_show_its_company_navigation_property_and_its_bulk_messages(
        recorded: dict[str, Any]) -> None:
    files = _files(recorded["out"])
    by_id = {r["id"]: (r["status"], files[r["response"]]["body"]) for r in files["index.json"]["reads"]}
    tables = ["msdyn_paymentterm", "msdyn_customergroup", "account", "contact", "msdyn_vendor"]
    for table in tables:
        status, body = by_id[f"dataverse-company-navigation-{table}"]
        (relationship,) = body["value"]
        assert status == 200 and relationship["ReferencingAttribute"] == "msdyn_company"
        assert relationship["ReferencingEntityNavigationPropertyName"] == "msdyn_company"
        for message in ("createmultiple", "updatemultiple", "upsertmultiple"):
            status, body = by_id[f"dataverse-bulk-{message}-{table}"]
            assert status == 200 and len(body["value"]) == 1  # the sandbox's tables in scope take them all
    # Under 50,000 rows the aggregate answers (only a larger table shows the limit's error).
    status, body = by_id["dataverse-aggregate-limit"]
    assert status == 200 and body["value"][0]["n"] > 0


def test_no_secret_token_or_signature_in_any_recorded_byte(recorded: dict[str, Any]) -> None:
    files = list(recorded["out"].iterdir())
    assert len(files) == 2 * len(doctor.READS) + 1
    for path in files:
        data = path.read_bytes()
        assert leaks(data, [recorded["secret"]]) == [], path
        assert b"sig=" not in data.replace(b"sig=***", b""), path
    for stream in (recorded["stdout"], recorded["stderr"]):
        assert leaks(stream.encode(), [recorded["secret"]]) == []


def test_personal_data_secrets_and_signatures_are_redacted() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"
    row = {"contactid": "6f1b0c57-1111-2222-3333-444444444444", "fullname": "Léa Laurent",
           "emailaddress1": "lea@example.com", "telephone1": "+33 1 23 45 67 89",
           "PersonLastName": "Laurent", "_parentcustomerid_value": "a",
           "fullname@OData.Community.Display.V1.FormattedValue": "Léa Laurent",
           "access_token": jwt, "note": f"Bearer {jwt}", "cdm_companycode": "USMF",
           "value": json.dumps({"BlobUrl": "https://x.blob.core.windows.net/dmf/p.zip?sv=1&sig=S3CRET%2B&se=1",
                                "upn": "lea@contoso.com"})}
    clean = doctor.redact({"value": [row]})["value"][0]
    personal = ["Laurent", "lea@example.com", "+33 1", "S3CRET", "lea@contoso"]
    assert leaks(json.dumps(clean).encode(), personal) == []
    assert clean["contactid"] == row["contactid"] and clean["cdm_companycode"] == "USMF"  # not personal
    assert clean["fullname"] == clean["access_token"] == "***" and clean["note"] == "Bearer ***"
    assert json.loads(clean["value"])["BlobUrl"].endswith("&sig=***&se=1")
