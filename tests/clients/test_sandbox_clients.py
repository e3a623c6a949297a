"""The clients against a real sandbox process over verified HTTPS, wired from parameters alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from dw_helpers import sandbox_params

from dwlib.clients import (
    AuthError,
    ConnectionLostError,
    DataverseClient,
    HttpConfig,
    HttpError,
    Session,
    connect,
    make_client,
)

StartSandbox = Any


@pytest.fixture(scope="module")
def writable(start_sandbox: StartSandbox) -> dict[str, Any]:
    """A sandbox of this module's own: these tests write to it."""
    return start_sandbox("existing-existing", rows=40, fresh=True)


@pytest.fixture
def session(writable: dict[str, Any]) -> Iterator[Session]:
    with connect(sandbox_params(writable)) as s:
        yield s


def test_a_sandbox_params_file_signs_in_per_audience(sandbox: dict[str, Any]) -> None:
    with connect(sandbox_params(sandbox)) as s:
        assert s.dataverse.whoami()["UserId"]
        companies = {r["LegalEntityId"] for r in s.finops.query("LegalEntities", select=["LegalEntityId"])}
        assert "DAT" in companies
        s.dataverse.whoami()
        token_calls = [e for e in s.journal.entries() if e.url.endswith("/oauth2/v2.0/token")]
        assert len(token_calls) == 2  # one per audience, then reused
        assert all(e.status == 200 for e in s.journal.entries())


@pytest.mark.parametrize("thumbprint", [False, True], ids=["PS256-x5t#S256", "RS256-x5t"])
def test_certificate_credential(sandbox: dict[str, Any], thumbprint: bool) -> None:
    # msal hands the signed assertion to its http client as bytes; the stack must send it as text.
    # With a SHA-1 thumbprint msal signs RS256 (x5t), with the certificate alone PS256 (x5t#S256).
    certificate: dict[str, Any] = {"path": sandbox["client_certificate_file"],
                                   "private_key": f"file:{sandbox['client_private_key_file']}"}
    if thumbprint:
        pem = Path(sandbox["client_certificate_file"]).read_bytes()
        certificate["thumbprint"] = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA1()).hex()
    p = sandbox_params(sandbox, **{"auth.method": "certificate", "auth.certificate": certificate})
    with connect(p) as s:
        assert s.dataverse.whoami()["UserId"]
        assert list(s.finops.query("LegalEntities", top=1))
        (token_call, *_) = [e for e in s.journal.entries() if e.url.endswith("/oauth2/v2.0/token")]
        assert token_call.status == 200


def test_device_code_sign_in_for_a_consultant(start_sandbox: StartSandbox) -> None:
    conn = start_sandbox("existing-existing", rows=5, device_code_approve_after_s=0.2)
    prompts: list[str] = []
    p = sandbox_params(conn, **{"auth.method": "device_code"})
    with connect(p, device_prompt=prompts.append) as s:
        assert s.dataverse.whoami()["UserId"]
        assert len(prompts) == 1 and "enter the code" in prompts[0]
        assert list(s.finops.query("LegalEntities", top=1))  # second audience: silently, no new prompt
        assert len(prompts) == 1


def test_rows_alternate_keys_and_a_batch_with_a_change_set(session: Session) -> None:
    dv = session.dataverse
    number = f"T-{uuid.uuid4().hex[:8]}"
    account = dv.create("accounts", {"name": "Test", "accountnumber": number})
    assert dv.get("accounts", {"accountnumber": number}, select=["accountid"])["accountid"] == account
    dv.update("accounts", account, {"name": "Renamed"})
    assert dv.get("accounts", account)["name"] == "Renamed"
    other = f"T-{uuid.uuid4().hex[:8]}"
    dv.upsert("accounts", {"accountnumber": other}, {"name": "Upserted"})
    assert dv.get("accounts", {"accountnumber": other})["name"] == "Upserted"

    batch = dv.batch()
    with batch.changeset() as cs:
        ref = cs.create("accounts", {"name": "Parent", "accountnumber": f"P-{number}"})
        cs.create("contacts", {"lastname": "Child", "parentcustomerid_account@odata.bind": ref})
    batch.get("accounts", {"$select": "name", "$filter": f"accountnumber eq 'P-{number}'"})
    parts = batch.execute()
    assert [p.status for p in parts] == [204, 204, 200]
    parent = dv.get("accounts", {"accountnumber": f"P-{number}"}, select=["accountid"])["accountid"]
    children = list(dv.query("contacts", select=["_parentcustomerid_value"], filter="lastname eq 'Child'"))
    assert [c["_parentcustomerid_value"] for c in children] == [parent]

    dv.delete("accounts", account)
    with pytest.raises(HttpError) as exc:
        dv.get("accounts", account)
    assert exc.value.status == 404 and exc.value.request_id


def test_bulk_messages_and_grouped_counts(session: Session) -> None:
    dv = session.dataverse
    tag = uuid.uuid4().hex[:8]
    rows = [{"lastname": f"Bulk {tag}", "msdyn_contactpersonid": f"{tag}-{i}"} for i in range(25)]
    created = dv.create_multiple("contacts", rows)
    assert len(created.ids) == 25 and len(set(created.ids)) == 25
    dv.update_multiple("contacts", [{"contactid": i, "firstname": "Updated"} for i in created.ids])
    dv.upsert_multiple("contacts", [{"msdyn_contactpersonid": f"{tag}-{i}", "firstname": "Upserted"}
                                    for i in range(20, 30)], key=["msdyn_contactpersonid"])
    counts = dv.count_by("contacts", ["firstname"], filter=f"startswith(msdyn_contactpersonid,'{tag}')")
    assert {c["firstname"]: c["count"] for c in counts} == {"Updated": 20, "Upserted": 10}


def test_finops_queries_writes_and_innererror(session: Session) -> None:
    fo = session.finops
    usmf = list(fo.query("CustomersV3", select=["CustomerAccount", "dataAreaId"], company="USMF"))
    assert usmf and {r["dataAreaId"] for r in usmf} == {"usmf"}
    every = list(fo.query("CustomersV3", select=["CustomerAccount"], cross_company=True))
    assert len(every) > len(usmf)
    group = f"T{uuid.uuid4().hex[:6]}"
    key = {"dataAreaId": "usmf", "CustomerGroupId": group}
    fo.create("CustomerGroups", {**key, "Description": "test"})
    fo.update("CustomerGroups", key, {"Description": "changed"})
    assert fo.get("CustomerGroups", key)["Description"] == "changed"
    with pytest.raises(HttpError) as exc:
        fo.create("CustomerGroups", {**key, "Description": "again"})
    assert exc.value.status >= 400 and exc.value.message and exc.value.message != "An error has occurred."


def test_finops_batch_with_a_change_set(session: Session) -> None:
    fo = session.finops
    tag = uuid.uuid4().hex[:5].upper()
    batch = fo.batch()
    with batch.changeset() as cs:
        for n in (1, 2):
            cs.create("CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": f"B{tag}{n}",
                                         "Description": "batch"})
    batch.get("CustomerGroups", {"$filter": "Description eq 'batch'", "cross-company": "true"})
    parts = batch.execute()
    assert [p.status for p in parts] == [201, 201, 200]
    assert {r["CustomerGroupId"] for r in parts[2].json()["value"]} >= {f"B{tag}1", f"B{tag}2"}


def test_dmf_export_then_import(session: Session, tmp_path: Path) -> None:
    dmf = session.dmf
    dmf.poll_s = 0.2
    package = dmf.export_package("CustomerGroups-Export", tmp_path / "groups.zip", legal_entity="USMF")
    assert package.read_bytes()[:2] == b"PK"
    before = {r["CustomerGroupId"] for r in session.finops.query("CustomerGroups", company="GBSI")}
    status = dmf.import_package(package, "CustomerGroups-Import", legal_entity="GBSI")
    assert status in ("Succeeded", "PartiallySucceeded")
    usmf = {r["CustomerGroupId"] for r in session.finops.query("CustomerGroups", company="USMF")}
    after = {r["CustomerGroupId"] for r in session.finops.query("CustomerGroups", company="GBSI")}
    assert usmf <= after and before <= after
    assert not any("sig=" in e.url and "sig=***" not in e.url for e in session.journal.entries())


def test_tls_is_verified_against_the_configured_ca_only(sandbox: dict[str, Any]) -> None:
    p = sandbox_params(sandbox)
    with make_client(HttpConfig()) as untrusting:
        dv = DataverseClient(untrusting, p.environments.dataverse_url)
        with pytest.raises(ConnectionLostError) as exc:
            dv.whoami()
    assert "not trusted" in str(exc.value) and "environments.ca_bundle" in exc.value.fix


def test_a_wrong_secret_is_one_error_naming_the_fix(sandbox: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DW_TEST_WRONG_SECRET", "not-the-sandbox-secret-123")
    p = sandbox_params(sandbox, **{"auth.client_secret": "env:DW_TEST_WRONG_SECRET"})
    with connect(p) as s, pytest.raises(AuthError) as exc:
        s.dataverse.whoami()
    assert "AADSTS7000215" in str(exc.value)
    assert exc.value.fix == "put the current secret value (not its ID) where auth.client_secret points"


def test_a_token_for_the_wrong_audience_is_one_error_naming_the_fix(sandbox: dict[str, Any]) -> None:
    p = sandbox_params(sandbox)
    with connect(p) as s:
        wrong = make_client(HttpConfig.from_params(p), s.journal,
                            auth=s.tokens.auth_for(p.environments.finops_url))
        with pytest.raises(AuthError) as exc:
            DataverseClient(wrong, p.environments.dataverse_url).whoami()
        wrong.close()
    assert "wrong_audience" in str(exc.value)
    assert exc.value.fix.startswith("the token is for another resource")


def test_an_expired_token_is_renewed_once_then_one_error_naming_the_fix(start_sandbox: StartSandbox) -> None:
    conn = start_sandbox("existing-existing", rows=5, token_lifetime_s=0)  # every token born expired
    with connect(sandbox_params(conn)) as s:
        with pytest.raises(AuthError) as exc:
            s.dataverse.whoami()
        statuses = [e.status for e in s.journal.entries() if "/WhoAmI" in e.url]
    assert statuses == [401, 401]  # refused, renewed, refused again: then the error
    assert "expired" in str(exc.value) and "clock" in exc.value.fix
