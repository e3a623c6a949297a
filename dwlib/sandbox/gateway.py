"""The dual-write management gateway shapes Microsoft's Dual-write-automations drives.

Undocumented and "not supported by Microsoft" (api-surface.md §5.3, MS-OSS): the sandbox serves
the same paths under `gateway_url = {base}/gateway` so the opt-in gateway adapter of
`dwlib.clients.dualwrite` has something faithful to talk to. Tokens must be delegated (a user)
for the audience `https://IntegratorApp.com`.

Paths under `gateway_url` (`API` = `api/DualWriteManagement/1.0`):

- `GET API/Environments?targetType=AX&identifier={F&O host}` → `[{cid, cname, targetType,
  displayName, detail{isSolutionAware}, powerAppsEnvironment}]` (`foEnvironment` of `DWEnvironment`
  is set by the tool itself)
- `GET API/Entities?targetType=AX&cid={cid}` → maps `[{leftEntity, rightEntity, detail{tid, tName,
  pid, state, template, templates, lastRequest, lastRequests, actions, isProjectDeleted}}]`; a
  request as `DWMapLastRequest`; `lastRequest` left out while the map has had none (the tool reads
  it into a struct, which cannot take null)
- `POST API/Start` `{action, details[{tid, pid, cid, parameters}]}` → `{requestId}`; action 1 start,
  4 stop, 5 pause, 6 resume, 8 init (create the project); each entry's `parameters` apply to its
  own map
- `GET API/Status/{requestId}` → the request's maps, each with `detail.lastRequests` (state 1
  Waiting, 2 Completed, 3 Error)
- `POST API/GetTemplatePrerequisiteSequences/{cid}` `["<tid>"]` → `[[tid, …]]` in run order
- `GET API/{pid}/FieldMappings` → the map's field mappings (`DWFieldMapping`: `entityMappingTasks[
  {legs[{fieldMappings[{syncDirection, sourceField, destinationField, valueTransforms}]}]}]`), the
  same document as its `msdyn_mapping`
- `GET api/ProjectExecutionWithCompanies/{pid}` → `{projectName, projectExecutionResponses[
  {legalEntityId, executionStatus, taskExecutionStatuses[{legs[…, importErrors]}]}]}` with every
  field of `InitialSyncDetails.cs` (dates as strings: the tool's DateTime fields take no null)
- `GET api/ConnectionSet/{cname}` → the connection set with every field of `DWConnectionSet.cs`,
  `dualWriteDetail.legalEntityMappings`
- `POST api/ConnectionSet/{cid}/Reset?targetType=AX&forceReset={bool}` `{legalEntities}` → Reset link

Map `state` codes are `DWEnums.MapStatus`: Running 4, Paused 5, NotRunning 6, InitialSync 2, CatchUp 3.

Example:
    >>> PREFIX
    '/api/DualWriteManagement/1.0'
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dwlib import catalog

from . import dw_records
from .context import AuthError, Sandbox
from .dualwrite import DualWrite, runtime_of
from .dw_records import STATUS_CODES
from .dw_runtime import DualWriteError, RunChoice
from .identity import INTEGRATOR_APP

PREFIX = "/api/DualWriteManagement/1.0"
_ACTION_NAMES = {"1": "start", "4": "stop", "5": "pause", "6": "resume", "8": "init"}
_MASTERS = {"CRM": "dataverse", "AX": "finops"}
_NO_DATE = "0001-01-01T00:00:00Z"  # .NET's DateTime.MinValue: a date not set yet
_ACTIONS_BY_STATE = {
    "NotRunning": ["1"],
    "Initializing": [],
    "Running": ["4", "5"],
    "Paused": ["6"],
    "Resuming": [],
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _version(m: catalog.TableMap) -> dict[str, int]:
    major, minor, build, revision = (int(p) for p in m.version.split("."))
    return {
        "major": major,
        "minor": minor,
        "build": build,
        "revision": revision,
        "majorRevision": 0,
        "minorRevision": revision,
    }


def _map(rt: DualWrite, m: catalog.TableMap) -> dict[str, Any]:
    rec = rt.map_record(m.name)
    template = {
        "id": rec["tid"],
        "name": m.name,
        "readOnly": True,
        "displayName": m.name,
        "author": "Microsoft",
        "version": _version(m),
        "tags": [],
        "description": m.name,
        "createdDateTime": "2024-01-15T08:00:00Z",
    }
    last = [_request_view(rt.request(r)) for r in rec["requests"]]
    return {
        "leftEntity": {"targetType": "AX", "name": m.finops_entity, "displayName": m.finops_entity},
        "rightEntity": {"targetType": "CRM", "name": m.dataverse_table, "displayName": m.dataverse_table},
        "detail": {
            "tid": rec["tid"],
            "tName": m.name,
            "tags": [],
            "templates": [template],
            "template": template,
            "pid": rec["pid"],
            "state": str(STATUS_CODES[rec["state"]]),
            **({"lastRequest": last[-1]} if last else {}),
            "lastRequests": last,
            "actions": _ACTIONS_BY_STATE[rec["state"]],
            "isProjectDeleted": False,
        },
    }


def _request_view(req: dict[str, Any]) -> dict[str, Any]:
    """A request as `DWMapLastRequest` (DWMaps.cs)."""
    return {
        "requestId": req["requestId"],
        "action": req["action"],
        "createdOn": req["createdOn"],
        "modifiedOn": req["modifiedOn"],
        "state": req["state"],
        "errorMessage": req["errorMessage"],
        "errorUri": None,
        "rootActivityId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dw-activity:{req['requestId']}")),
    }


def _by_tid(rt: DualWrite, tid: str) -> catalog.TableMap:
    for m in catalog.table_maps():
        if rt.map_record(m.name)["tid"] == tid:
            return m
    raise DualWriteError(f"unknown template id {tid!r}", 404)


def _by_pid(rt: DualWrite, pid: str) -> catalog.TableMap:
    for m in catalog.table_maps():
        if rt.map_record(m.name)["pid"] == pid:
            return m
    raise DualWriteError(f"unknown project id {pid!r}", 404)


def _environments(rt: DualWrite, request: Request, body: Any) -> Any:
    conn = rt.connection()
    identifier = request.query_params.get("identifier", "")
    linked = (conn or {}).get("finopsUrl", rt.finops_url)  # a moved environment needs a relink
    host = urlsplit(linked).netloc
    if conn is None or identifier.lower() not in (host.lower(), linked.lower()):
        return []
    return [
        {
            "cid": conn["cid"],
            "cname": conn["cname"],
            "targetType": "AX",
            "displayName": host,
            "detail": {"isSolutionAware": True},
            "powerAppsEnvironment": rt.settings.organization_id,
        }
    ]


def _need_cid(rt: DualWrite, cid: str) -> None:
    conn = rt.connection()
    if conn is None or conn["cid"] != cid:
        raise DualWriteError(f"unknown connection id {cid!r}", 404)


def _entities(rt: DualWrite, request: Request, body: Any) -> Any:
    _need_cid(rt, request.query_params.get("cid", ""))
    return [_map(rt, catalog.table_map(m["name"])) for m in rt.maps()]


def _start(rt: DualWrite, request: Request, body: Any) -> Any:
    """`Start`: each `details[]` entry names one map with its own `parameters` (DWMapEngine.cs):
    start `{skipInitialSync, conflictResolution{option, master CRM|AX}}`, resume
    `{dualWriteSkipCatchUpSyncParameters{skipCatchUpSyncPreserveData}}`; stop, pause, init none."""
    if not isinstance(body, dict) or not isinstance(body.get("details"), list) or not body["details"]:
        raise DualWriteError('send {"action": "1|4|5|6|8", "details": [{"tid", "pid", "cid", "parameters"}]}')
    action = str(body.get("action"))
    if action not in _ACTION_NAMES:
        raise DualWriteError(f"unknown action {action!r}: use 1 start, 4 stop, 5 pause, 6 resume, 8 init")
    verb = _ACTION_NAMES[action]
    names: list[str] = []
    choices: dict[str, RunChoice] = {}
    modes: dict[str, str] = {}
    for detail in body["details"]:
        if not isinstance(detail, dict):
            raise DualWriteError("each details[] entry is an object {tid, pid, cid, parameters}")
        _need_cid(rt, detail.get("cid", ""))
        name = _by_tid(rt, detail.get("tid", "")).name
        names.append(name)
        params = detail.get("parameters") or {}
        if not isinstance(params, dict):
            raise DualWriteError(f"parameters of {name!r} must be an object, not {params!r}")
        if verb == "start":
            choices[name] = _run_choice(name, params)
        elif verb == "resume":
            modes[name] = _resume_mode(name, params)
    if verb == "start":
        req = rt.run(names, choices=choices)
    elif verb == "resume":
        req = rt.resume(names, modes=modes)
    elif verb == "init":
        req = rt.init(names)
    else:
        req = getattr(rt, verb)(names)
    return {"requestId": req["requestId"]}


def _run_choice(name: str, params: dict[str, Any]) -> RunChoice:
    """One map's start parameters; without them the initial sync is skipped, Dataverse is master."""
    skip = params.get("skipInitialSync", True)
    if not isinstance(skip, bool):
        raise DualWriteError(f"skipInitialSync of {name!r} must be true or false, not {skip!r}")
    master = (params.get("conflictResolution") or {}).get("master", "CRM")
    if master not in _MASTERS:
        raise DualWriteError(f"conflictResolution.master of {name!r} must be CRM or AX, not {master!r}")
    return RunChoice(initial_sync=not skip, master=_MASTERS[master])


def _resume_mode(name: str, params: dict[str, Any]) -> str:
    """One map's resume parameters: catch up unless told to skip (preserving the queue or not)."""
    skip = params.get("dualWriteSkipCatchUpSyncParameters")
    if skip is None:
        return "catchup"
    preserve = skip.get("skipCatchUpSyncPreserveData") if isinstance(skip, dict) else None
    if not isinstance(preserve, bool):
        raise DualWriteError("dualWriteSkipCatchUpSyncParameters.skipCatchUpSyncPreserveData of "
                             f"{name!r} must be true or false")
    return "skip-preserve" if preserve else "skip-discard"


def _status(rt: DualWrite, request: Request, body: Any) -> Any:
    req = rt.request(request.path_params["request"])
    return [_map(rt, catalog.table_map(mid)) for mid in req["maps"]]


def _prerequisites(rt: DualWrite, request: Request, body: Any) -> Any:
    _need_cid(rt, request.path_params["cid"])
    if not isinstance(body, list) or not all(isinstance(t, str) for t in body):
        raise DualWriteError('send a JSON list of template ids, e.g. ["<tid>"]')
    out = []
    for tid in body:
        order = catalog.dependency_order([_by_tid(rt, tid).name])
        out.append([rt.map_record(n)["tid"] for n in order])
    return out


def _executions(rt: DualWrite, request: Request, body: Any) -> Any:
    """`InitialSyncDetails` (InitialSyncDetails.cs): one response per legal entity of each job."""
    m = _by_pid(rt, request.path_params["pid"])
    rec = rt.map_record(m.name)
    responses = []
    for job in rt.jobs(m.name):
        for le in job["legalEntities"]:
            code = le["legalEntityId"]
            legs = [_leg(job, name, leg, [e for e in job["errors"]
                                          if e["legalEntityId"] == code and e["leg"] == name])
                    for name, leg in le["legs"].items()]
            upserts = sum(leg["importRecordsInsertedCount"] + leg["importRecordsUpdatedCount"]
                          for leg in le["legs"].values())
            responses.append(_execution(rt, m, rec, job, code, le["status"], legs, upserts, le["errorCount"]))
        if not job["legalEntities"] and job["errors"]:  # failed before any legal entity was copied
            failed = {**_leg(job, "", {"status": "Error"}, []), "details": job["errors"][0]["errorMessage"]}
            responses.append(_execution(rt, m, rec, job, "", job["status"], [failed], 0, job["errorCount"]))
    return {"projectName": rec["project"], "projectExecutionResponses": responses}


def _execution(rt: DualWrite, m: catalog.TableMap, rec: dict[str, Any], job: dict[str, Any], company: str,
               status: str, legs: list[dict[str, Any]], upserts: int, errors: int) -> dict[str, Any]:
    """One `ProjectExecutionRespons`."""
    return {
        "responseId": job["executionId"],
        "displayName": m.name,
        "projectName": rec["project"],
        "legalEntityName": company,
        "legalEntityId": company,
        "schedule": None,
        "submittedOn": job["submittedOn"],
        "executionStatus": status,
        "lastExecutionStatusChangeOn": job["finishedOn"] or job["submittedOn"],
        "taskExecutionStatuses": [
            {"name": m.name, "status": status, "isRunning": job["status"] == "Executing", "legs": legs}],
        "runtimeMappingExecutionRequestName": None,
        "isDataManagementProject": False,
        "dataManagementOperation": None,
        "tenant": rt.settings.tenant_id,
        "initialSyncRequestId": job["executionId"],
        "id": job["executionId"],
        "upsertCount": upserts,
        "errorCount": errors,
        "owner": None,
        "createdDateTime": job["submittedOn"],
        "tags": [],
    }


def _leg(job: dict[str, Any], name: str, leg: dict[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """One `SyncLeg`: its export and its import (the tool's DateTime fields take no null)."""
    started, finished = job["submittedOn"], job["finishedOn"] or _NO_DATE
    return {
        "displayName": leg.get("displayName", name),
        "status": leg["status"],
        "details": None,
        "exportStatus": leg["status"],
        "exportDetails": None,
        "exportJob": None,
        "exportStarted": started,
        "exportFinished": finished,
        "exportRecordCount": leg.get("exportRecordCount", 0),
        "exportRecordErrorCount": 0,
        "exportNewVersionToken": None,
        "exportRangeInfo": {"start": None, "end": None},
        "importStatus": leg["status"],
        "importDetails": None,
        "importJob": None,
        "importStarted": started,
        "importFinished": finished,
        "importRecordsInsertedCount": leg.get("importRecordsInsertedCount", 0),
        "importRecordsUpdatedCount": leg.get("importRecordsUpdatedCount", 0),
        "importRecordsErrorCount": leg.get("importRecordsErrorCount", 0),
        "exportErrors": [],
        "exportUri": None,
        "importErrors": [{"recordId": e["recordId"], "sourceField": e["sourceField"],
                          "errorMessage": e["errorMessage"]} for e in errors],
        "importErrorUri": None,
    }


def _field_mappings(rt: DualWrite, request: Request, body: Any) -> Any:
    m = _by_pid(rt, request.path_params["pid"])
    return dw_records.mapping_json(rt.effective_map(m.name), project_id=request.path_params["pid"])


def _connection_set(rt: DualWrite, request: Request, body: Any) -> Any:
    """`DWConnectionSet` (DWConnectionSet.cs): both environments and the legal-entity mapping."""
    conn = rt.connection()
    if conn is None or conn["cname"] != request.path_params["cname"]:
        raise DualWriteError(f"unknown connection set {request.path_params['cname']!r}", 404)
    dv_host, fo_host = urlsplit(rt.dataverse_url).netloc, urlsplit(rt.finops_url).netloc
    dv_name = f"{dv_host}/dataverse"
    return {
        "name": conn["cname"],
        "displayName": conn["cname"],
        "environments": {dv_name: _environment(rt, conn, dv_name, "CRM", rt.dataverse_url),
                         fo_host: _environment(rt, conn, fo_host, "AX", rt.finops_url)},
        "targetTypeList": ["AX", "CRM"],
        "dataPartitionMappings": [],
        "tenant": rt.settings.tenant_id,
        "forDualWrite": True,
        "dualWriteDetail": {
            "trialExpiresOn": _NO_DATE,
            "legalEntityMappings": {
                "leftEnvironment": fo_host,
                "rightEnvironment": dv_name,
                "mappings": [{"left": {"name": c, "id": c}, "right": {"name": c, "id": c}}
                             for c in conn["legalEntities"]],
            },
            "conflictResolution": {"option": "1", "master": "CRM"},
            "alertSettings": [],
            "autoPauseThresholdSettings": [],
            "isOnFirstPartyAuth": True,
            "isSolutionAware": True,
            "solutionAwareRequests": [],
            "actionDetails": [],
            "errorTableNames": [],
            "dualWriteScheduleLogicAppRunId": None,
            "scheduledRequests": [],
            "isTrialEnvironment": False,
            "errorTableUpdateInProgress": False,
            "catchupCleanupTriggerName": None,
        },
        "bypassApiHubConnector": False,
        "id": conn["cid"],
        "owner": None,
        "createdDateTime": conn["linkedOn"],
        "tags": [],
    }


def _environment(rt: DualWrite, conn: dict[str, Any], name: str, kind: str, url: str) -> dict[str, Any]:
    """One `DWConnSetEnvironment` of the connection set."""
    return {
        "name": name,
        "connectionSetName": conn["cname"],
        "targetType": kind,
        "sharedEnums": [],
        "schemas": [],
        "connectionDisplayName": name,
        "environmentDisplayName": urlsplit(url).netloc,
        "metadataUrl": None,
        "environmentInfo": None,
        "powerAppsEnvironment": rt.settings.organization_id,
        "directUrl": url,
        "isDevInstance": False,
        "bypassApiHubConnector": False,
        "needsIntegrationKey": False,
        "excludeHardCodedIntegrationKeys": False,
    }


def _reset(rt: DualWrite, request: Request, body: Any) -> Any:
    _need_cid(rt, request.path_params["cid"])
    force = request.query_params.get("forceReset", "false").lower() == "true"
    les = body.get("legalEntities", []) if isinstance(body, dict) else []
    return rt.reset(force=force, legal_entities=les)


_Handler = Callable[[DualWrite, Request, Any], Any]


def _endpoint(sbx: Sandbox, handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            principal = sbx.identity.authenticate(request, INTEGRATOR_APP)
        except AuthError as exc:
            return _error(401, "Unauthorized", exc.reason)
        if principal.is_app:
            return _error(
                401,
                "Unauthorized",
                "The dual-write management service needs a delegated (user) token "
                "for https://IntegratorApp.com; app-only tokens are not accepted.",
            )
        raw = await request.body()
        try:
            result = handler(runtime_of(sbx), request, json.loads(raw) if raw else None)
        except json.JSONDecodeError as exc:
            return _error(400, "BadRequest", f"the request body is not JSON: {exc}")
        except DualWriteError as exc:
            return _error(
                exc.status,
                "BadRequest" if exc.status < 404 else "Conflict" if exc.status == 409 else "NotFound",
                exc.message,
            )
        return JSONResponse(result)

    return endpoint


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """`Mount("/gateway", …)` with the gateway paths (see the module docstring)."""
    runtime_of(sbx)
    table: list[tuple[str, str, _Handler]] = [
        ("GET", f"{PREFIX}/Environments", _environments),
        ("GET", f"{PREFIX}/Entities", _entities),
        ("POST", f"{PREFIX}/Start", _start),
        ("GET", f"{PREFIX}/Status/{{request}}", _status),
        ("POST", f"{PREFIX}/GetTemplatePrerequisiteSequences/{{cid}}", _prerequisites),
        ("GET", f"{PREFIX}/{{pid}}/FieldMappings", _field_mappings),
        ("GET", "/api/ProjectExecutionWithCompanies/{pid}", _executions),
        ("GET", "/api/ConnectionSet/{cname}", _connection_set),
        ("POST", "/api/ConnectionSet/{cid}/Reset", _reset),
    ]
    return [Mount("/gateway", routes=[Route(p, _endpoint(sbx, h), methods=[m]) for m, p, h in table])]
