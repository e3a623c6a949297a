"""The dual-write admin's documented reads against fake services: map states through formatted
values and enum names (an unknown value is an error, not "Not running"), and `msdyn_mapping` in
the shape Dual-write-automations reads."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from client_fakes import FakeService

from dwlib.clients import DataverseClient, FinOpsClient, HttpConfig, make_client
from dwlib.clients.dualwrite import DualWriteAdminError, MapState, PortalAdmin

DV, FO = "https://org.example/dv", "https://fo.example/fo"
ACCOUNTS = "Customers V3 (accounts)"
FORMATTED = "msdyn_status@OData.Community.Display.V1.FormattedValue"


def admin(fake: FakeService, runtime: list[dict[str, Any]], projects: list[dict[str, Any]],
          mappings: list[dict[str, Any]] | None = None) -> PortalAdmin:
    fake.on("GET", "/dv/api/data/v9.2/msdyn_dualwriteruntimeconfigs")(
        lambda r, m: httpx.Response(200, json={"value": runtime}))
    fake.on("GET", "/dv/api/data/v9.2/msdyn_dualwriteentitymaps")(
        lambda r, m: httpx.Response(200, json={"value": mappings or []}))
    fake.on("GET", "/fo/data/DualWriteProjectConfigurations")(
        lambda r, m: httpx.Response(200, json={"value": projects}))
    http = make_client(HttpConfig(), transport=fake.transport)
    return PortalAdmin(DataverseClient(http, DV), FinOpsClient(http, FO))


def runtime_row(**extra: Any) -> dict[str, Any]:
    return {"msdyn_name": "DWM-1", "msdyn_status": 4, "msdyn_internalentityname": "Customers V3",
            "msdyn_externalentityname": "accounts", "versionnumber": 7, **extra}


def project_row(status: Any) -> dict[str, Any]:
    return {"RecId": 5637144577, "ProjectName": "DWM-1", "Status": status,
            "InternalEntityName": "Customers V3", "ExternalEntityName": "accounts", "IsDelete": "No"}


def test_the_state_is_the_formatted_value_dataverse_gives_when_asked(fake: FakeService) -> None:
    state = admin(fake, [runtime_row(**{FORMATTED: "Paused"})], []).map_states([ACCOUNTS])[ACCOUNTS]
    assert (state.state, state.source) == (MapState.PAUSED, "msdyn_dualwriteruntimeconfigs")
    assert state.version == 7
    (asked,) = [r for r in fake.requests if "msdyn_dualwriteruntimeconfigs" in r.url.path]
    assert asked.headers["Prefer"] == 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'
    assert not [r for r in fake.requests if "DualWriteProjectConfigurations" in r.url.path]


@pytest.mark.parametrize(("status", "expected"), [
    ("InitialSync", MapState.INITIALIZING), ("CatchUp", MapState.RESUMING),
    ("NotRunning", MapState.NOT_RUNNING), ("Running", MapState.RUNNING),
])
def test_without_a_formatted_value_the_state_is_the_f_and_o_enum_name(fake: FakeService, status: str,
                                                                     expected: MapState) -> None:
    state = admin(fake, [runtime_row()], [project_row(status)]).map_states([ACCOUNTS])[ACCOUNTS]
    assert (state.state, state.source, state.version) == (expected, "DualWriteProjectConfigurations", 7)


@pytest.mark.parametrize(("runtime", "projects", "where"), [
    ([runtime_row(**{FORMATTED: "Frozen"})], [], "msdyn_dualwriteruntimeconfigs.msdyn_status holds the map "
                                                 "state 'Frozen'"),
    ([], [project_row(4)], "DualWriteProjectConfigurations.Status holds the map state 4"),  # a raw code
    ([], [project_row("Suspended")], "DualWriteProjectConfigurations.Status holds the map state 'Suspended'"),
    ([runtime_row()], [], "the state of 'Customers V3 \\(accounts\\)' cannot be read"),
])
def test_a_state_value_the_client_does_not_know_is_an_error_not_not_running(
        fake: FakeService, runtime: list[dict[str, Any]], projects: list[dict[str, Any]], where: str) -> None:
    with pytest.raises(DualWriteAdminError, match=where):
        admin(fake, runtime, projects).map_states([ACCOUNTS])


def test_a_map_without_any_configuration_has_never_run(fake: FakeService) -> None:
    state = admin(fake, [], []).map_states([ACCOUNTS])[ACCOUNTS]
    assert state.state == MapState.NOT_RUNNING and state.source == "no project configuration yet"


def _mapping(transforms: list[dict[str, Any]]) -> str:
    field = {"syncDirection": "2", "sourceField": "CUSTOMERGROUPID",
             "destinationField": "msdyn_customergroupid", "isSystemGenerated": False,
             "valueTransforms": transforms}
    return json.dumps({"name": ACCOUNTS, "entityMappingTasks": [{"name": ACCOUNTS, "legs": [
        {"sourceSchema": "Customers V3", "destinationSchema": "accounts", "fieldMappings": [field]}]}]})


def test_column_defaults_are_read_where_dual_write_automations_reads_them(fake: FakeService) -> None:
    rows = [{"msdyn_mapping": _mapping([{"transformType": "Default", "defaultValue": "30"}])}]
    assert admin(fake, [], [], rows).column_defaults(ACCOUNTS) == {"CUSTOMERGROUPID": "30"}
    (asked,) = [r for r in fake.requests if "msdyn_dualwriteentitymaps" in r.url.path]
    assert asked.url.params["$filter"] == "msdyn_name eq 'Customers V3 (accounts)'"


def test_a_mapping_in_another_shape_is_an_error(fake: FakeService) -> None:
    old = {"name": ACCOUNTS, "legs": [{"fieldMappings": []}]}  # legs at the top: not what dual-write writes
    with pytest.raises(DualWriteAdminError, match=r"not in the shape dual-write uses \(entityMappingTasks"):
        admin(fake, [], [], [{"msdyn_mapping": json.dumps(old)}]).column_defaults(ACCOUNTS)
