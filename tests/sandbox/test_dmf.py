"""DMF package API: packages, signed blobs, the job state machine, and the flows through HTTPS."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from dwlib.sandbox import control, dmf, dmf_blobs, dmf_jobs, dmf_package, profiles
from dwlib.sandbox.context import AuthError, Principal, Sandbox
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.state import Paths, Settings, write_private
from dwlib.sandbox.store import Store

CUSTOMERS = dmf_package.DMF_ENTITIES["CustomersV3"]
ACTION = "/data/DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."


class _NoTokens:
    def authenticate(self, request: Request, audience: str) -> Principal:
        raise AuthError("missing", "in-process tests do not authenticate")


@pytest.fixture
def sbx(tmp_path: Path) -> Iterator[Sandbox]:
    paths = Paths(tmp_path)
    write_private(paths.identity_key, os.urandom(32))
    settings = Settings(profile="existing-existing", rows=40)
    store = Store(paths.db)
    profiles.seed(store, settings)
    yield Sandbox(paths=paths, settings=settings, store=store, identity=_NoTokens(),
                  base_url="https://127.0.0.1:9")
    store.close()


def _customer(**values: Any) -> list[Any]:
    return [values.get(c) for c in CUSTOMERS.columns]


def _package(path: Path, rows: list[list[Any]], group: str = "CustomersV3-Import") -> Path:
    for _ in dmf_package.write_package(path, group, [(CUSTOMERS, iter(rows))]):
        pass
    return path


def _call(svc: dmf_jobs.DmfService, action: str, body: dict[str, Any]) -> Any:
    return svc.call(dmf_jobs.ACTION_PREFIX + action, body)


def _nested(result: dict[str, Any]) -> Any:
    """The `value` of ExportToPackage / GetExportedPackageUrl: `{"value": {"value": …}}` as documented."""
    assert set(result["value"]) == {"value"}, result
    return result["value"]["value"]


async def _finish(svc: dmf_jobs.DmfService, execution_id: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := _call(svc, "GetExecutionSummaryStatus", {"executionId": execution_id})["value"]) \
            not in ("Succeeded", "PartiallySucceeded", "Failed", "Canceled"):
        assert time.monotonic() < deadline, f"job {execution_id} still {status}"
        await asyncio.sleep(0.01)
    return str(status)


# --- packages --------------------------------------------------------------------------------------


def test_package_round_trip_is_csv_unicode(tmp_path: Path) -> None:
    rows = [_customer(CustomerAccount="US-9", PartyType="Organization", OrganizationName='Say "hi", Ltd',
                      CustomerGroupId="10", CreditLimit=12.5)]
    data = _package(tmp_path / "p.zip", rows).read_bytes()
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert {"Manifest.xml", "PackageHeader.xml", "Customers V3.csv"} == set(zf.namelist())
    raw = zf.read("Customers V3.csv")
    assert raw.startswith(b"\xff\xfe") and raw.decode("utf-16").startswith("CUSTOMERACCOUNT,PARTYTYPE,")
    assert "\r\n" in raw.decode("utf-16") and "DATAAREAID" not in raw.decode("utf-16")
    group, entities = dmf_package.read_package(data)
    (pe,) = entities
    assert group == "CustomersV3-Import" and pe.dmf is CUSTOMERS
    values = dict(zip(pe.fields.values(), pe.rows[0], strict=True))
    assert values["OrganizationName"] == 'Say "hi", Ltd' and values["CreditLimit"] == "12.5"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _manifest(entity: str) -> bytes:
    return dmf_package.manifest_xml("G", [CUSTOMERS], "Import").replace("Customers V3", entity).encode()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"Manifest.xml": b"<x/>", "nothing": b""}, None),
        ({"PackageHeader.xml": b""}, "not a data package"),
        ({"Manifest.xml": _manifest("Vendors V9")},
         "Entity Vendors V9 does not exist in the target environment"),
        ({"Manifest.xml": _manifest("Customers V3")}, "has no file Customers V3.csv"),
        ({"Manifest.xml": _manifest("Customers V3"), "Customers V3.csv": b"CUSTOMERACCOUNT\r\nUS-1\r\n"},
         "Selected file is not Unicode"),
        ({"Manifest.xml": _manifest("Customers V3"),
          "Customers V3.csv": "SHOESIZE\r\n42\r\n".encode("utf-16")}, "mapping is incorrect"),
    ],
)
def test_bad_packages_are_refused_with_the_reason(files: dict[str, bytes], message: str | None) -> None:
    if message is None:  # a manifest without entities is an empty, valid package
        assert dmf_package.read_package(_zip(files))[1] == []
        return
    with pytest.raises(dmf_package.DmfError, match=message):
        dmf_package.read_package(_zip(files))
    with pytest.raises(dmf_package.DmfError, match="not a data package"):
        dmf_package.read_package(b"not a zip")


# --- blobs -----------------------------------------------------------------------------------------


def test_blob_signatures(tmp_path: Path) -> None:
    blobs = dmf_blobs.Blobs(tmp_path, b"k" * 32, "https://127.0.0.1:9")
    url = urlsplit(blobs.url("a.zip", "rw"))
    blobs.check("a.zip", url.query, "w")
    blobs.check("a.zip", url.query, "r")
    with pytest.raises(dmf_blobs.BlobAuthError, match="authenticate") as bad:
        blobs.check("b.zip", url.query, "r")  # signed for another blob
    assert bad.value.status == 403 and bad.value.code == "AuthenticationFailed"
    with pytest.raises(dmf_blobs.BlobAuthError) as forged:
        blobs.check("a.zip", url.query.replace("sp=rw", "sp=rwd"), "r")
    assert forged.value.code == "AuthenticationFailed"
    with pytest.raises(dmf_blobs.BlobAuthError) as expired:
        blobs.check("a.zip", urlsplit(blobs.url("a.zip", "rw", ttl_s=-5)).query, "r")
    assert "Signed expiry time" in expired.value.detail
    with pytest.raises(dmf_blobs.BlobAuthError) as read_only:
        blobs.check("a.zip", urlsplit(blobs.url("a.zip", "r")).query, "w")
    assert read_only.value.code == "AuthorizationPermissionMismatch"
    other_key = dmf_blobs.Blobs(tmp_path, b"x" * 32, "https://127.0.0.1:9")
    with pytest.raises(dmf_blobs.BlobAuthError):
        other_key.check("a.zip", url.query, "r")
    for name in ("../x", "a/b", ""):
        with pytest.raises(dmf_blobs.BlobAuthError, match="invalid characters"):
            blobs.path(name)


def test_blob_endpoint_in_process(sbx: Sandbox) -> None:
    app = Starlette(routes=dmf.routes(sbx))
    svc = sbx.extras["dmf"]

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=sbx.base_url) as http:
            url = svc.blobs.url("pkg.zip", "rw")
            missing = await http.put(url, content=b"zip")
            assert missing.status_code == 400
            assert missing.headers["x-ms-error-code"] == "MissingRequiredHeader"
            assert "<HeaderName>x-ms-blob-type</HeaderName>" in missing.text
            wrong = await http.put(url, content=b"zip", headers={"x-ms-blob-type": "AppendBlob"})
            assert wrong.status_code == 400 and wrong.headers["x-ms-error-code"] == "InvalidHeaderValue"
            assert (await http.get(url)).status_code == 404
            put = await http.put(url, content=b"zip bytes", headers={"x-ms-blob-type": "BlockBlob"})
            assert put.status_code == 201 and put.headers["Content-MD5"]
            got = await http.get(url)
            assert got.content == b"zip bytes" and got.headers["x-ms-blob-type"] == "BlockBlob"
            assert (sbx.paths.blobs / "pkg.zip").read_bytes() == b"zip bytes"
            forged = await http.get(url.replace("sig=", "sig=A"))
            assert forged.status_code == 403 and "<Code>AuthenticationFailed</Code>" in forged.text
            expired = await http.get(svc.blobs.url("pkg.zip", "r", ttl_s=-1))
            assert expired.status_code == 403 and "Signed expiry time" in expired.text
            read_only = await http.put(svc.blobs.url("pkg.zip", "r"), content=b"x",
                                       headers={"x-ms-blob-type": "BlockBlob"})
            assert read_only.status_code == 403
            assert (sbx.paths.blobs / "pkg.zip").read_bytes() == b"zip bytes"

    asyncio.run(go())


# --- jobs (in process) -----------------------------------------------------------------------------


def test_export_runs_as_a_job_and_builds_the_package(sbx: Sandbox) -> None:
    svc = dmf_jobs.service_of(sbx)

    async def go() -> str:
        eid = _nested(_call(svc, "ExportToPackage", {
            "definitionGroupId": "CustomersV3-Export", "packageName": "cust", "executionId": "",
            "reExecute": False, "legalEntityId": "GBSI"}))
        # Queued: nothing has run yet, so there is no package URL.
        assert _call(svc, "GetExecutionSummaryStatus", {"executionId": eid})["value"] == "NotRun"
        assert _nested(_call(svc, "GetExportedPackageUrl", {"executionId": eid})) == ""
        assert await _finish(svc, eid) == "Succeeded"
        return str(eid)

    eid = asyncio.run(go())
    url = _nested(_call(svc, "GetExportedPackageUrl", {"executionId": eid}))
    name = urlsplit(url).path.removeprefix("/blob/dmf/")
    _, (pe,) = dmf_package.read_package((sbx.paths.blobs / name).read_bytes())
    expected = sbx.store.find(ENTITIES["CustomersV3"], {"dataAreaId": "gbsi"})
    assert expected and sorted(r[0] for r in pe.rows) == sorted(c["CustomerAccount"] for c in expected)
    assert json.loads(_call(svc, "GetExecutionErrors", {"executionId": eid})["value"]) == []
    job = svc.job(eid)
    assert job is not None and job["entities"]["Customers V3"]["exported"] == len(expected)


def test_import_upserts_and_reports_row_errors(sbx: Sandbox) -> None:
    svc = dmf_jobs.service_of(sbx)
    existing = sbx.store.find(ENTITIES["CustomersV3"], {"dataAreaId": "usmf"}, limit=1)[0]
    rows = [
        _customer(CustomerAccount="US-NEW1", PartyType="Organization", OrganizationName="New Co",
                  CustomerGroupId="20", SalesCurrencyCode="USD", PaymentTerms="Net30", CreditLimit=100),
        _customer(CustomerAccount=existing["CustomerAccount"], PartyType=existing["PartyType"],
                  OrganizationName="Renamed", CustomerGroupId=existing["CustomerGroupId"]),
        _customer(CustomerAccount="US-BAD1", PartyType="Organization", OrganizationName="Bad group",
                  CustomerGroupId="ZZ"),
        _customer(CustomerAccount="US-BAD2", PartyType="Robot", CustomerGroupId="10", CreditLimit="lots"),
    ]
    _package(sbx.paths.blobs / "in.zip", rows)
    url = svc.blobs.url("in.zip", "rw")

    async def go() -> str:
        eid = _call(svc, "ImportFromPackage", {"packageUrl": url, "definitionGroupId": "CustomersV3-Import",
                                             "executionId": "imp-1", "execute": True, "overwrite": True,
                                             "legalEntityId": "usmf"})["value"]
        assert eid == "imp-1"
        return await _finish(svc, eid)

    assert asyncio.run(go()) == "PartiallySucceeded"
    customers = ENTITIES["CustomersV3"]
    new = sbx.store.get(customers, {"dataAreaId": "usmf", "CustomerAccount": "US-NEW1"})
    assert new is not None and new["CreditLimit"] == 100
    renamed = sbx.store.get(customers, {"dataAreaId": "usmf", "CustomerAccount": existing["CustomerAccount"]})
    assert renamed["OrganizationName"] == "Renamed"
    assert not sbx.store.find(customers, {"CustomerAccount": "US-BAD1"})
    errors = json.loads(_call(svc, "GetExecutionErrors", {"executionId": "imp-1"})["value"])
    assert [(e["LineNumber"], e["RecordKey"], e["EntityName"]) for e in errors] == [
        (4, "US-BAD1", "Customers V3"), (5, "US-BAD2", "Customers V3")]
    assert errors[0]["ErrorMessage"] == (  # F&O's table validation, as OData writes get it
        "Warning: The value 'ZZ' in field 'Customer group' is not found in the related table "
        "'Customer groups'.")
    assert "Robot" in errors[1]["ErrorMessage"] and "'lots'" in errors[1]["ErrorMessage"]
    stats = svc.job("imp-1")["entities"]["Customers V3"]
    assert (stats["created"], stats["updated"], stats["errors"]) == (1, 1, 2)

    file_url = _call(svc, "GetImportStagingErrorFileUrl",
                     {"executionId": "imp-1", "entityName": "Customers V3"})
    name = urlsplit(file_url["value"]).path.removeprefix("/blob/dmf/")
    text = (sbx.paths.blobs / name).read_bytes().decode("utf-16")
    assert text.splitlines()[0].endswith("LINENUMBER,ERRORMESSAGE")
    assert "US-BAD1" in text and "US-NEW1" not in text
    assert _call(svc, "GetImportStagingErrorFileUrl",
                    {"executionId": "imp-1", "entityName": "Currencies"})["value"] == ""


def test_import_where_every_row_fails_is_failed_and_a_missing_package_fails_the_job(sbx: Sandbox) -> None:
    svc = dmf_jobs.service_of(sbx)
    _package(sbx.paths.blobs / "bad.zip",
             [_customer(CustomerAccount="X", PartyType="Person", CustomerGroupId="ZZ")])

    async def go(name: str, eid: str) -> str:
        _call(svc, "ImportFromPackage", {"packageUrl": svc.blobs.url(name, "rw"),
                                         "definitionGroupId": "NewProject", "executionId": eid,
                                         "execute": True, "legalEntityId": "DEMF"})
        return await _finish(svc, eid)

    assert asyncio.run(go("bad.zip", "all-bad")) == "Failed"
    assert svc.groups()["NewProject"] == {"operation": "Import", "entities": ["CustomersV3"]}
    assert asyncio.run(go("never-uploaded.zip", "no-pkg")) == "Failed"
    (error,) = json.loads(_call(svc, "GetExecutionErrors", {"executionId": "no-pkg"})["value"])
    assert "was not found: PUT it" in error["ErrorMessage"]


@pytest.mark.parametrize(
    ("action", "body", "message"),
    [
        ("GetExecutionSummaryStatus", {}, "parameter executionId is missing"),
        ("ExportToPackage", {"definitionGroupId": "Nope", "packageName": "p"},
         "Export data project Nope does not exist: .* use one of .*CustomerMaster-Export"),
        ("ExportToPackage", {"definitionGroupId": "CustomersV3-Import", "packageName": "p"},
         "does not exist"),
        ("ExportToPackage",
         {"definitionGroupId": "CustomersV3-Export", "packageName": "p", "legalEntityId": "XX"},
         "Legal entity XX does not exist"),
        ("ImportFromPackage", {"packageUrl": "https://evil.example/blob/dmf/p.zip?sig=x",
                               "definitionGroupId": "G"}, "is not a blob URL of this environment"),
        ("ImportFromPackage", {"packageUrl": "https://127.0.0.1:9/blob/dmf/p.zip?sp=r&se=x&sig=bad",
                               "definitionGroupId": "G"}, "could not be downloaded"),
        ("GetAzureWriteUrl", {"uniqueFileName": "../etc/passwd"}, "not a valid blob name"),
        ("DeleteEverything", {}, "No action Microsoft.Dynamics.DataEntities.DeleteEverything"),
    ],
)
def test_bad_calls_are_refused(sbx: Sandbox, action: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(dmf_package.DmfError, match=message):
        dmf_jobs.service_of(sbx).call(dmf_jobs.ACTION_PREFIX + action, body)


def test_one_job_per_execution_id_and_unknown_ids_are_unknown(sbx: Sandbox) -> None:
    svc = dmf_jobs.service_of(sbx)
    assert _call(svc, "GetExecutionSummaryStatus", {"executionId": "nope"})["value"] == "Unknown"
    assert _call(svc, "GetExecutionErrors", {"executionId": "nope"})["value"] == "[]"
    body = {"definitionGroupId": "Currencies-Export", "packageName": "cur", "executionId": "e1",
            "legalEntityId": "USMF"}

    async def go() -> None:
        assert _nested(_call(svc, "ExportToPackage", body)) == "e1"
        created = svc.job("e1")
        assert created is not None
        # A client repeating a start whose answer it lost gets the same job, not a second one.
        assert _nested(_call(svc, "ExportToPackage", body)) == "e1"
        assert _nested(_call(svc, "ExportToPackage", {**body, "reExecute": True})) == "e1"  # still queued
        assert svc.job("e1") == created and len(svc._tasks) == 1
        await _finish(svc, "e1")
        finished = svc.job("e1")
        assert _nested(_call(svc, "ExportToPackage", body)) == "e1"
        assert svc.job("e1") == finished  # not run again
        with pytest.raises(dmf_package.DmfError,
                           match="Execution e1 already exists for Export of Currencies-Export"):
            _call(svc, "ExportToPackage", {**body, "definitionGroupId": "CustomerGroups-Export"})
        with pytest.raises(dmf_package.DmfError, match="Execution e1 already exists"):
            _call(svc, "ExportToPackage", {**body, "legalEntityId": "GBSI"})
        _call(svc, "ExportToPackage", {**body, "reExecute": True})  # re-executing a finished job runs it
        assert svc.job("e1")["status"] == "NotRun"  # type: ignore[index]
        assert await _finish(svc, "e1") == "Succeeded"
        url = svc.blobs.url("x.zip", "rw")
        with pytest.raises(dmf_package.DmfError, match="execute=false"):
            _call(svc, "ImportFromPackage", {"packageUrl": url, "definitionGroupId": "G", "execute": False})

    asyncio.run(go())


class _AnyToken:
    def authenticate(self, request: Request, audience: str) -> Principal:
        return Principal(oid="o", tenant_id="t", kind="app", app_id="a", name="app", audience=audience)


def test_an_import_is_refused_while_another_import_is_queued_or_running(sbx: Sandbox) -> None:
    """ImportFromPackage "must not be called in parallel" (data-management-api.md): refused with
    F&O's error body while another import is NotRun or Executing; exports are not held up."""
    from dwlib.sandbox import finops

    sbx.identity = _AnyToken()  # type: ignore[assignment]
    svc = dmf_jobs.service_of(sbx)
    _package(sbx.paths.blobs / "a.zip", [_customer(CustomerAccount="US-PAR1", PartyType="Organization",
                                                   CustomerGroupId="10")])
    body = {"packageUrl": svc.blobs.url("a.zip", "rw"), "definitionGroupId": "CustomersV3-Import",
            "execute": True, "overwrite": True, "legalEntityId": "USMF"}
    app = Starlette(routes=finops.routes(sbx))

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=sbx.base_url) as http:
            async def start(eid: str) -> httpx.Response:
                return await http.post(f"/data/DataManagementDefinitionGroups/{dmf_jobs.ACTION_PREFIX}"
                                       "ImportFromPackage", json={**body, "executionId": eid})

            assert (await start("first")).json()["value"] == "first"
            assert svc.job("first")["status"] == "NotRun"  # type: ignore[index]
            refused = await start("second")
            assert refused.status_code == 400
            error = refused.json()["error"]
            assert error["message"] == "An error has occurred."  # F&O's shape: the text is in innererror
            assert error["innererror"]["message"].startswith(
                "Another import is in progress: job first of data project CustomersV3-Import is NotRun.")
            assert svc.job("second") is None
            # The same start repeated (its answer was lost) names the same job: not a parallel import.
            assert (await start("first")).json()["value"] == "first"
            export = _call(svc, "ExportToPackage", {"definitionGroupId": "Currencies-Export",
                                                    "packageName": "c"})
            assert await _finish(svc, "first") == "Succeeded"
            assert await _finish(svc, _nested(export)) == "Succeeded"
            assert (await start("second")).json()["value"] == "second"  # once the first has finished
            assert await _finish(svc, "second") == "Succeeded"

    asyncio.run(go())


def test_history_survives_a_restart_and_unfinished_jobs_resume(sbx: Sandbox) -> None:
    first = dmf_jobs.service_of(sbx)

    async def start() -> tuple[str, str]:
        done = _nested(_call(first, "ExportToPackage", {"definitionGroupId": "Currencies-Export",
                                                         "packageName": "a"}))
        await _finish(first, done)
        body = {"definitionGroupId": "CustomersV3-Export", "packageName": "b", "legalEntityId": "USMF"}
        return done, _nested(_call(first, "ExportToPackage", body))

    done, queued = asyncio.run(start())  # the loop ends (the process "stops") with `queued` unfinished
    assert first.job(queued)["status"] == "NotRun"
    sbx.extras.clear()
    second = dmf_jobs.service_of(sbx)
    assert second is not first

    async def after_restart() -> str:
        assert _call(second, "GetExecutionSummaryStatus", {"executionId": done})["value"] == "Succeeded"
        return await _finish(second, queued)

    assert asyncio.run(after_restart()) == "Succeeded"
    assert _nested(_call(second, "GetExportedPackageUrl", {"executionId": queued}))


def test_import_goes_through_the_write_hooks(sbx: Sandbox) -> None:
    from dwlib.sandbox.odata import ODataError, WriteEvent

    seen: list[tuple[str, str]] = []

    def hook(event: WriteEvent) -> None:  # an event holds the rows written together
        accounts = [r["CustomerAccount"] for r in event.rows]
        if "US-REFUSED" in accounts:
            raise ODataError(400, "Unable to write data to entity accounts (dual-write).")
        seen.extend((event.op, a) for a in accounts)

    sbx.extras["write_hooks"] = [hook]
    svc = dmf_jobs.service_of(sbx)
    _package(sbx.paths.blobs / "h.zip", [
        _customer(CustomerAccount=a, PartyType="Organization", CustomerGroupId="10")
        for a in ("US-OK", "US-REFUSED")])

    async def go() -> str:
        _call(svc, "ImportFromPackage", {"packageUrl": svc.blobs.url("h.zip", "rw"), "definitionGroupId": "G",
                                       "executionId": "hooked", "execute": True, "legalEntityId": "USMF"})
        return await _finish(svc, "hooked")

    assert asyncio.run(go()) == "PartiallySucceeded"
    assert seen == [("create", "US-OK")]
    assert not sbx.store.find(ENTITIES["CustomersV3"], {"CustomerAccount": "US-REFUSED"})
    (error,) = json.loads(_call(svc, "GetExecutionErrors", {"executionId": "hooked"})["value"])
    assert "dual-write" in error["ErrorMessage"]


def _import(sbx: Sandbox, name: str, rows: list[list[Any]]) -> tuple[str, dict[str, Any]]:
    svc = dmf_jobs.service_of(sbx)
    _package(sbx.paths.blobs / f"{name}.zip", rows)

    async def go() -> str:
        _call(svc, "ImportFromPackage", {"packageUrl": svc.blobs.url(f"{name}.zip", "rw"),
                                         "definitionGroupId": "G", "executionId": name, "execute": True,
                                         "legalEntityId": "USMF"})
        return await _finish(svc, name)

    status = asyncio.run(go())
    return status, svc.job(name)["entities"]["Customers V3"]


def test_an_import_writes_the_rows_that_pass_together_and_a_key_twice_as_the_file_orders_it(
        sbx: Sandbox) -> None:
    events: list[tuple[str, list[str]]] = []
    sbx.extras["write_hooks"] = [lambda e: events.append((e.op, [r["CustomerAccount"] for r in e.rows]))]
    rows = [_customer(CustomerAccount=f"US-S{i}", PartyType="Organization", CustomerGroupId="10",
                      OrganizationName=f"Set {i}") for i in range(5)]
    rows.insert(2, _customer(CustomerAccount="US-S0", PartyType="Organization", CustomerGroupId="10",
                             OrganizationName="Set 0, later"))  # the same key again: the later row wins
    rows.insert(4, _customer(CustomerAccount="US-BAD", PartyType="Organization", CustomerGroupId="ZZ"))
    status, stats = _import(sbx, "set", rows)
    assert status == "PartiallySucceeded"
    assert (stats["created"], stats["updated"], stats["errors"]) == (5, 1, 1)
    # One event for the five new rows written together, then the repeated key's row by itself.
    assert events == [("create", [f"US-S{i}" for i in range(5)]), ("update", ["US-S0"])]
    got = sbx.store.get(ENTITIES["CustomersV3"], {"dataAreaId": "usmf", "CustomerAccount": "US-S0"})
    assert got is not None and got["OrganizationName"] == "Set 0, later"


def test_rows_refused_together_are_written_one_by_one_and_only_the_refused_one_fails(sbx: Sandbox) -> None:
    from dwlib.sandbox.odata import ODataError, WriteEvent

    def refuse_odd(event: WriteEvent) -> None:
        if any(r["CustomerAccount"] == "US-R3" for r in event.rows):
            raise ODataError(400, "Unable to write data to entity accounts (dual-write).")

    sbx.extras["write_hooks"] = [refuse_odd]
    rows = [_customer(CustomerAccount=f"US-R{i}", PartyType="Organization", CustomerGroupId="10")
            for i in range(6)]
    status, stats = _import(sbx, "refused", rows)
    assert status == "PartiallySucceeded" and (stats["created"], stats["errors"]) == (5, 1)
    stored = {r["CustomerAccount"] for r in sbx.store.find(ENTITIES["CustomersV3"], {"dataAreaId": "usmf"})}
    assert {f"US-R{i}" for i in range(6)} - stored == {"US-R3"}


# --- end to end through HTTPS ----------------------------------------------------------------------


def test_import_and_export_through_https(start_sandbox: Any, sandbox_token: Any, tmp_path: Path) -> None:
    conn = start_sandbox("new-data-new", rows=60, fresh=True)
    fo = conn["finops_url"]
    headers = {"Authorization": f"Bearer {sandbox_token(conn, 'finops')}"}
    with control.http_client(conn, timeout=30) as http:
        def act(name: str, body: dict[str, Any], status: int = 200) -> Any:
            r = http.post(f"{fo}{ACTION}{name}", json=body, headers=headers)
            assert r.status_code == status, r.text
            return r.json()

        def wait(eid: str) -> str:
            deadline = time.monotonic() + 30
            while (s := act("GetExecutionSummaryStatus", {"executionId": eid})["value"]) in (
                    "NotRun", "Executing"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            return str(s)

        # Actions need an F&O token; a Dataverse token is refused.
        status_url = f"{fo}{ACTION}GetExecutionSummaryStatus"
        assert http.post(status_url, json={"executionId": "x"}).status_code == 401
        dv = {"Authorization": f"Bearer {sandbox_token(conn, 'dataverse')}"}
        assert http.post(status_url, json={"executionId": "x"}, headers=dv).status_code == 401

        write = act("GetAzureWriteUrl", {"uniqueFileName": "cust-import.zip"})
        assert write["@odata.context"].endswith("$metadata#Edm.String")
        blob_url = json.loads(write["value"])["BlobUrl"]  # a JSON document in a string
        package = _package(tmp_path / "p.zip", [
            _customer(CustomerAccount="FR-NEW", PartyType="Person", PersonFirstName="Léa",
                      PersonLastName="Laurent", CustomerGroupId="30"),
            _customer(CustomerAccount="FR-BAD", PartyType="Organization", CustomerGroupId="ZZ")]).read_bytes()
        assert http.put(blob_url, content=package).status_code == 400  # no x-ms-blob-type
        assert http.put(blob_url, content=package, headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
        eid = act("ImportFromPackage", {"packageUrl": blob_url, "definitionGroupId": "CustomersV3-Import",
                                        "executionId": "", "execute": True, "overwrite": True,
                                        "legalEntityId": "FRRT"})["value"]
        assert wait(eid) == "PartiallySucceeded"
        errors = json.loads(act("GetExecutionErrors", {"executionId": eid})["value"])
        assert [e["RecordKey"] for e in errors] == ["FR-BAD"]
        error_file = act("GetImportStagingErrorFileUrl", {"executionId": eid, "entityName": "Customers V3"})
        assert "FR-BAD" in http.get(error_file["value"]).content.decode("utf-16")
        assert act("GetExecutionSummaryStatus", {"executionId": "no-such-job"})["value"] == "Unknown"

        eid = act("ExportToPackage", {"definitionGroupId": "CustomersV3-Export", "packageName": "frrt",
                                      "executionId": "", "reExecute": False,
                                      "legalEntityId": "FRRT"})["value"]["value"]
        assert wait(eid) == "Succeeded"
        url = act("GetExportedPackageUrl", {"executionId": eid})["value"]["value"]
        got = http.get(url)
        assert got.status_code == 200
        _, (pe,) = dmf_package.read_package(got.content)
        accounts = {r[0] for r in pe.rows}
        assert "FR-NEW" in accounts and "FR-BAD" not in accounts
        listed = http.get(f"{fo}/data/CustomersV3?cross-company=true&$filter=dataAreaId eq 'frrt'&$count=true"
                          "&$top=0", headers=headers).json()
        assert listed["@odata.count"] == len(accounts)
        forged = http.get(url.replace("sig=", "sig=A"))
        assert forged.status_code == 403 and forged.headers["x-ms-error-code"] == "AuthenticationFailed"


def test_an_import_is_live_synced_by_a_running_map_and_queued_by_a_paused_one(tmp_path: Path) -> None:
    # The write hook reads the connection and map states once per import step (`WriteEvent.batch`):
    # a map paused between two steps queues the later rows, as it does between two requests.
    from dwlib import catalog
    from dwlib.sandbox import dualwrite, dw_live

    paths = Paths(tmp_path)
    write_private(paths.identity_key, os.urandom(32))
    settings = Settings(profile="existing-new", rows=12)
    store = Store(paths.db)
    profiles.seed(store, settings)
    sbx = Sandbox(paths=paths, settings=settings, store=store, identity=_NoTokens(), base_url="https://127.0.0.1:9")
    rt = dualwrite.runtime_of(sbx)
    rt.setup_power_platform_integration()
    rt.configure()
    rt.link(start_maps=False)
    accounts = "Customers V3 (accounts)"

    async def run_maps() -> None:
        rt.run(catalog.dependency_order([accounts]), initial_sync=True)
        await rt.idle()

    asyncio.run(run_maps())
    assert rt.map_record(accounts)["state"] == "Running"
    svc = dmf_jobs.service_of(sbx)

    async def imported(execution_id: str, accounts_: list[str]) -> str:
        _package(sbx.paths.blobs / f"{execution_id}.zip", [
            _customer(CustomerAccount=a, PartyType="Organization", OrganizationName=a, CustomerGroupId="10")
            for a in accounts_])
        _call(svc, "ImportFromPackage", {"packageUrl": svc.blobs.url(f"{execution_id}.zip", "rw"),
                                         "definitionGroupId": "G", "executionId": execution_id,
                                         "execute": True, "legalEntityId": "USMF"})
        return await _finish(svc, execution_id)

    def in_dataverse(account: str) -> bool:
        return bool(store.find(ENTITIES["accounts"], {"accountnumber": account}))

    assert asyncio.run(imported("live", ["US-LIVE-1", "US-LIVE-2"])) == "Succeeded"
    assert in_dataverse("US-LIVE-1") and in_dataverse("US-LIVE-2")
    rt.pause([accounts])
    assert asyncio.run(imported("paused", ["US-PAUSED"])) == "Succeeded"
    assert not in_dataverse("US-PAUSED")
    assert dw_live.queued(rt, accounts)["totalQueuedRecordCount"] == 1
