"""The gateway adapter reads the gateway's answers in the shapes Dual-write-automations reads; an
answer in another shape (or not JSON) is a ResponseError naming the endpoint, never a KeyError."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from client_fakes import FakeService

from dwlib.clients import DataverseClient, FinOpsClient, ResponseError
from dwlib.clients.dualwrite import DualWriteAdminError, GatewayAdmin

GATEWAY = "https://gw.example"
API = "/api/DualWriteManagement/1.0"
MAP = "Legal entities (cdm_companies)"
GOOD: dict[str, Any] = {
    "Environments": [{"cid": "c1", "cname": "n1", "targetType": "AX", "displayName": "fo.example",
                      "detail": {"isSolutionAware": True}, "powerAppsEnvironment": "p1"}],
    "Entities": [{"leftEntity": {}, "rightEntity": {}, "detail": {
        "tid": "t1", "tName": MAP, "pid": "p1", "state": "4",
        "lastRequests": [{"requestId": "r1", "state": "2", "errorMessage": None}]}}],
    "Start": {"requestId": "r1"},
    "Status": None,  # the maps of the request: Entities
    "Prerequisites": [["t1"]],
    "ConnectionSet": {"dualWriteDetail": {"legalEntityMappings": {"mappings": [
        {"left": {"name": "USMF", "id": "USMF"}, "right": {"name": "USMF", "id": "USMF"}}]}}},
    "Executions": {"projectName": "DWM-1", "projectExecutionResponses": []},
}
PATHS = {"Environments": ("GET", f"{API}/Environments"), "Entities": ("GET", f"{API}/Entities"),
         "Start": ("POST", f"{API}/Start"), "Status": ("GET", f"{API}/Status/r1"),
         "Prerequisites": ("POST", f"{API}/GetTemplatePrerequisiteSequences/c1"),
         "ConnectionSet": ("GET", "/api/ConnectionSet/n1"),
         "Executions": ("GET", "/api/ProjectExecutionWithCompanies/p1")}
CALLS: dict[str, Callable[[GatewayAdmin], Any]] = {
    "Environments": lambda gw: gw.connection_id(),
    "Entities": lambda gw: gw.maps(),
    "Start": lambda gw: gw.request("4", {MAP: None}),
    "Status": lambda gw: gw.request_states("r1"),
    "Prerequisites": lambda gw: gw.prerequisites(MAP),
    "ConnectionSet": lambda gw: gw.linked_legal_entities(),
    "Executions": lambda gw: gw.initial_sync_outcome(MAP),
}


def gateway(fake: FakeService, answers: dict[str, Any]) -> GatewayAdmin:
    for name, (method, path) in PATHS.items():
        value = answers[name] if answers[name] is not None else answers["Entities"]

        def answer(request: httpx.Request, m: re.Match[str], value: Any = value) -> httpx.Response:
            return value if isinstance(value, httpx.Response) else httpx.Response(200, json=value)

        fake.on(method, path)(answer)
    http = httpx.Client(transport=fake.transport)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "unsupported by Microsoft": known, and meant
        return GatewayAdmin(DataverseClient(http, "https://dv.example"), FinOpsClient(http, "https://fo.example"),
                            http=http, gateway_url=GATEWAY)


def test_the_reads_take_the_shapes_dual_write_automations_reads(fake: FakeService) -> None:
    gw = gateway(fake, GOOD)
    assert gw.connection_id() == "c1" and [m["detail"]["tName"] for m in gw.maps()] == [MAP]
    assert gw.request("4", {MAP: None}) == "r1"
    (state,) = gw.request_states("r1")
    assert (state.map, state.state.name, state.error) == (MAP, "COMPLETED", "")
    assert gw.prerequisites(MAP) == [MAP] and gw.linked_legal_entities() == ["USMF"]
    assert gw.initial_sync_outcome(MAP) == ("Unknown", [])


BAD: list[tuple[str, Any, str]] = [
    ("Environments", httpx.Response(200, text="<html>sign in</html>"), "expected JSON"),
    ("Environments", [{"cname": "n1"}], "no 'cid'"),
    ("Environments", {"cid": "c1"}, "not the shape .*no item 0"),
    ("Entities", [{"detail": {"tName": MAP}}], "no 'tid'"),
    ("Entities", [{"leftEntity": {}}], "no 'detail'"),
    ("Start", {"id": "r1"}, "no 'requestId'"),
    ("Start", ["r1"], "not the shape"),
    ("Status", [{"detail": {"tName": MAP, "tid": "t1", "pid": "p1", "state": "4", "lastRequests": []}}],
     "does not list the request"),
    ("Status", [{"detail": {"tName": MAP, "tid": "t1", "pid": "p1", "state": "4",
                            "lastRequests": [{"requestId": "r1", "state": "7"}]}}], "not the shape"),
    ("Prerequisites", [], "not the shape .*IndexError"),
    ("Prerequisites", [["t9"]], "no 't9'"),
    ("ConnectionSet", {"dualWriteDetail": {}}, "no 'legalEntityMappings'"),
    ("Executions", {"projectName": "DWM-1"}, "no 'projectExecutionResponses'"),
    ("Executions", {"projectExecutionResponses": [{"executionStatus": "Error"}]},
     "no 'taskExecutionStatuses'"),
]


@pytest.mark.parametrize(("endpoint", "answer", "problem"), BAD)
def test_an_answer_in_another_shape_is_a_response_error_naming_the_endpoint(
        fake: FakeService, endpoint: str, answer: Any, problem: str) -> None:
    answers = {**GOOD, endpoint: answer}
    if endpoint == "Status":
        answers["Status"] = answer  # not the maps of Entities
    gw = gateway(fake, answers)
    with pytest.raises(ResponseError, match=problem) as exc:
        CALLS[endpoint](gw)
    method, path = PATHS[endpoint]
    assert exc.value.method == method and exc.value.url.startswith(GATEWAY + path)
    assert "portal adapter" in exc.value.fix


def test_no_connection_is_a_clear_error_not_an_index_error(fake: FakeService) -> None:
    with pytest.raises(DualWriteAdminError, match="knows no dual-write connection"):
        gateway(fake, {**GOOD, "Environments": []}).connection_id()
