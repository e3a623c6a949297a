"""The gateway's wire shapes (those Dual-write-automations reads), with a delegated token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from dw_helpers import Consultant, MakeRuntime, run_async, session_for

from dwlib import catalog
from dwlib.clients.dualwrite import INTEGRATOR_APP
from dwlib.clients.http import HttpConfig, make_client
from dwlib.sandbox import gateway as sandbox_gateway
from dwlib.sandbox.dualwrite import DualWrite

API = "api/DualWriteManagement/1.0"


@pytest.fixture
def gateway(start_sandbox: Any) -> Iterator[tuple[Consultant, httpx.Client, str]]:
    consultant = Consultant(start_sandbox("existing-new", rows=12, fresh=True))
    consultant.portal("POST", "/lcs/power-platform-integration")
    consultant.portal(
        "POST", "/lcs/dual-write/link", {"legal_entities": ["USMF", "DAT"], "start_maps": False}
    )
    user = session_for(consultant.connection, method="device_code")
    http = make_client(
        HttpConfig(ca_bundle=Path(consultant.connection["ca_bundle"])),
        auth=user.tokens.auth_for(INTEGRATOR_APP),
    )
    yield consultant, http, consultant.connection["gateway_url"]
    http.close()
    user.close()
    consultant.close()


def get(http: httpx.Client, url: str, **kw: Any) -> Any:
    r = http.get(url, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_environments_entities_and_prerequisite_sequences(
    gateway: tuple[Consultant, httpx.Client, str],
) -> None:
    consultant, http, root = gateway
    host = urlsplit(consultant.connection["finops_url"]).netloc
    (env,) = get(http, f"{root}/{API}/Environments", params={"targetType": "AX", "identifier": host})
    assert set(env) >= {"cid", "cname", "targetType", "displayName", "detail", "powerAppsEnvironment"}
    assert env["targetType"] == "AX" and env["detail"] == {"isSolutionAware": True}
    assert get(http, f"{root}/{API}/Environments", params={"targetType": "AX", "identifier": "other"}) == []
    maps = get(http, f"{root}/{API}/Entities", params={"targetType": "AX", "cid": env["cid"]})
    by_name = {m["detail"]["tName"]: m for m in maps}
    accounts = by_name["Customers V3 (accounts)"]
    assert accounts["leftEntity"]["targetType"] == "AX" and accounts["rightEntity"]["name"] == "accounts"
    assert accounts["detail"]["state"] == "6" and accounts["detail"]["actions"] == ["1"]  # NotRunning: Run
    assert accounts["detail"]["template"]["version"]["major"] == 1
    r = http.post(
        f"{root}/{API}/GetTemplatePrerequisiteSequences/{env['cid']}", json=[accounts["detail"]["tid"]]
    )
    assert r.status_code == 200, r.text
    tids = {m["detail"]["tid"]: name for name, m in by_name.items()}
    assert [tids[t] for t in r.json()[0]] == catalog.dependency_order(["Customers V3 (accounts)"])


def test_start_status_and_state_codes(gateway: tuple[Consultant, httpx.Client, str]) -> None:
    consultant, http, root = gateway
    host = urlsplit(consultant.connection["finops_url"]).netloc
    (env,) = get(http, f"{root}/{API}/Environments", params={"targetType": "AX", "identifier": host})
    maps = {
        m["detail"]["tName"]: m["detail"]
        for m in get(http, f"{root}/{API}/Entities", params={"targetType": "AX", "cid": env["cid"]})
    }
    legal = maps["Legal entities (cdm_companies)"]
    body = {
        "action": "1",
        "details": [
            {
                "tid": legal["tid"],
                "pid": legal["pid"],
                "cid": env["cid"],
                "parameters": {
                    "skipInitialSync": False,
                    "conflictResolution": {"option": "1", "master": "AX"},
                },
            }
        ],
    }
    request_id = http.post(f"{root}/{API}/Start", json=body).json()["requestId"]
    deadline = time.monotonic() + 20
    while True:
        (status,) = get(http, f"{root}/{API}/Status/{request_id}")
        last = next(r for r in status["detail"]["lastRequests"] if r["requestId"] == request_id)
        if last["state"] != "1" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert last["state"] == "2" and status["detail"]["state"] == "4"  # Completed; Running
    assert status["detail"]["actions"] == ["4", "5"]  # Stop, Pause
    pid = status["detail"]["pid"]
    # The field mappings as Dual-write-automations reads them (DWFieldMapping), = msdyn_mapping.
    fields = get(http, f"{root}/{API}/{pid}/FieldMappings")
    assert fields["id"] == pid and fields["entityMappingTasks"][0]["legs"][0]["fieldMappings"]
    (row,) = consultant.dv_rows("msdyn_dualwriteentitymaps?$select=msdyn_mapping&$filter=msdyn_name eq "
                                "'Legal entities (cdm_companies)'")
    assert json.loads(row["msdyn_mapping"])["entityMappingTasks"] == fields["entityMappingTasks"]
    details = get(http, f"{root}/api/ProjectExecutionWithCompanies/{pid}")
    assert details["projectName"].startswith("DWM-")
    (execution,) = details["projectExecutionResponses"]
    assert execution["executionStatus"] == "Completed"
    assert {leg["displayName"] for leg in execution["taskExecutionStatuses"][0]["legs"]} >= {
        "From Dynamics 365 for Finance and Operations Entity to Dynamics 365 for Sales Entity"
    }
    r = http.post(
        f"{root}/{API}/Start",
        json={"action": "5", "details": [{"tid": legal["tid"], "pid": pid, "cid": env["cid"]}]},
    )
    (status,) = get(http, f"{root}/{API}/Status/{r.json()['requestId']}")
    assert status["detail"]["state"] == "5"  # Paused
    r = http.post(
        f"{root}/{API}/Start", json={"action": "9", "details": [{"tid": legal["tid"], "cid": env["cid"]}]}
    )
    assert r.status_code == 400 and "unknown action" in r.json()["error"]["message"]


def test_connection_set_and_reset(gateway: tuple[Consultant, httpx.Client, str]) -> None:
    consultant, http, root = gateway
    connection = consultant.portal("GET", "/dualwrite/connection")
    conn_set = get(http, f"{root}/api/ConnectionSet/{connection['cname']}")
    mappings = conn_set["dualWriteDetail"]["legalEntityMappings"]["mappings"]
    assert [m["left"]["name"] for m in mappings] == ["USMF", "DAT"]
    assert {e["targetType"] for e in conn_set["environments"].values()} == {"AX", "CRM"}
    r = http.post(
        f"{root}/api/ConnectionSet/{connection['cid']}/Reset",
        params={"targetType": "AX", "forceReset": "false"},
        json={"legalEntities": ["USMF"]},
    )
    assert r.status_code == 200, r.text
    assert consultant.portal("GET", "/dualwrite/connection")["legalEntities"] == ["USMF"]


LEGAL, CURRENCIES = "Legal entities (cdm_companies)", "Currencies (transactioncurrencies)"
TERMS = "Terms of payment (msdyn_paymentterms)"  # not running after the link (unlike LEGAL), needs only LEGAL


def _details(rt: DualWrite, params: dict[str, Any]) -> list[dict[str, Any]]:
    cid = rt.connection()["cid"]  # type: ignore[index]
    return [{"tid": rt.map_record(name)["tid"], "pid": rt.map_record(name)["pid"], "cid": cid,
             **({"parameters": p} if p is not None else {})} for name, p in params.items()]


def test_each_start_entry_keeps_its_own_parameters(make_runtime: MakeRuntime) -> None:
    """Start with two maps: each `details[]` entry's parameters apply to its own map (DWMapEngine.cs
    builds one entry per map with its skipInitialSync and master), not the last entry's to all."""
    rt = make_runtime("existing-new")

    async def go() -> None:
        body = {"action": "1", "details": _details(rt, {
            TERMS: {"skipInitialSync": False, "conflictResolution": {"option": "1", "master": "AX"}},
            CURRENCIES: {"skipInitialSync": True, "conflictResolution": {"option": "1", "master": "CRM"}},
        })}
        sandbox_gateway._start(rt, None, body)  # type: ignore[arg-type]
        await rt.idle()

    run_async(go())
    terms, currencies = rt.map_record(TERMS), rt.map_record(CURRENCIES)
    assert (terms["state"], terms["master"]) == ("Running", "finops")
    assert terms["lastJob"] and rt.job(terms["lastJob"])["status"] == "Completed"  # it had its initial sync
    assert (currencies["state"], currencies["master"]) == ("Running", "dataverse")
    assert currencies["activity"][-1]["event"] == "run, initial sync skipped"
    assert not currencies.get("lastJob")


def test_each_resume_entry_keeps_its_own_catch_up_choice(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("existing-new")

    async def go() -> None:
        rt.run([LEGAL, CURRENCIES], initial_sync=False)
        rt.pause([LEGAL, CURRENCIES])
        body = {"action": "6", "details": _details(rt, {
            LEGAL: {"dualWriteSkipCatchUpSyncParameters": {"skipCatchUpSyncPreserveData": False}},
            CURRENCIES: None,  # no parameters: the default catch-up
        })}
        sandbox_gateway._start(rt, None, body)  # type: ignore[arg-type]
        await rt.idle()

    run_async(go())
    events = {n: rt.map_record(n)["activity"] for n in (LEGAL, CURRENCIES)}
    assert events[LEGAL][-1]["event"] == "skipped to live synchronization (skip-discard)"
    assert any(e["event"].startswith("resuming: catching up") for e in events[CURRENCIES])
    assert {rt.map_record(n)["state"] for n in (LEGAL, CURRENCIES)} == {"Running"}


@pytest.mark.parametrize(("params", "message"), [
    ({"skipInitialSync": "no"}, r"skipInitialSync of 'Terms of payment .*' must be true"),
    ({"conflictResolution": {"master": "FO"}}, "conflictResolution.master of .* must be CRM or AX"),
])
def test_start_parameters_that_make_no_sense_are_refused(make_runtime: MakeRuntime, params: dict[str, Any],
                                                         message: str) -> None:
    rt = make_runtime("existing-new")
    with pytest.raises(sandbox_gateway.DualWriteError, match=message):
        sandbox_gateway._start(rt, None, {"action": "1", "details": _details(rt, {TERMS: params})})  # type: ignore[arg-type]
    assert rt.map_record(TERMS)["state"] == "NotRunning"
