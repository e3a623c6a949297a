"""The platforms around the two environments, as far as the preflight reads them: Lifecycle
Services' environment metadata and the Power Platform admin API's environment list.

- `GET /lcs/environmentinfo/v1/detail/project/{projectId}/?environmentId=`: LCS environment
  metadata (`x-ms-version: 2017-09-15`; "always 200 OK" unless unauthenticated, `IsSuccess` false
  with `ErrorMessage` otherwise);
- `GET /bap/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments?api-version=`: the
  Dataverse environment and the F&O environment's (initial) Power Platform environment;
- `GET`/`POST /_sandbox/platform` `{finops?, dataverse_version?, dataverse_location?,
  finops_location?, dataverse_sku?, finops_sku?}` (admin key): what they report (also Dataverse's
  `RetrieveVersion`); tests change it to fail a check.

The values live in the store (`kv platform`) over documented-looking defaults: an F&O
environment of build 10.0.1935.92 (10.0.38), type Sandbox; both Power Platform environments in
the same location ("europe"), SKU Sandbox.

Example:
    >>> sorted(DEFAULTS)[:3]
    ['dataverse_location', 'dataverse_sku', 'dataverse_version']
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .context import AuthError, Sandbox
from .identity import BAP_RESOURCE, LCS_RESOURCE

ADMIN_HEADER = "X-Sandbox-Admin"
ENVIRONMENTS = "/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments"
LCS_VERSION = "2017-09-15"
DEFAULTS: dict[str, Any] = {
    "finops": {"CurrentApplicationBuildVersion": "10.0.1935.92", "CurrentPlatformVersion": "7.0.7279.85",
               "EnvironmentType": "Sandbox", "DeploymentState": "Deployed"},
    "dataverse_version": "9.2.24012.00206",  # RetrieveVersion (dataverse.py)
    "dataverse_location": "europe",
    "finops_location": "europe",
    "dataverse_sku": "Sandbox",
    "finops_sku": "Sandbox",
}


def state(sbx: Sandbox) -> dict[str, Any]:
    """What the platforms report now (the defaults with the tests' changes)."""
    saved = sbx.store.kv_get("platform") or {}
    return {**DEFAULTS, **saved, "finops": {**DEFAULTS["finops"], **saved.get("finops", {})}}


def _lcs_detail(sbx: Sandbox, request: Request) -> dict[str, Any]:
    project = request.path_params["project"]
    if request.headers.get("x-ms-version") != LCS_VERSION:
        return {"IsSuccess": False, "ErrorMessage": f"The x-ms-version header must be {LCS_VERSION}."}
    if project != str(sbx.settings.lcs_project_id):
        return {"IsSuccess": False, "ErrorMessage": f"Project {project} was not found or access is denied."}
    wanted = request.query_params.get("environmentId")
    env = {"EnvironmentId": sbx.settings.finops_environment_id, "EnvironmentName": "sandbox-finops",
           "ProjectId": sbx.settings.lcs_project_id, "EnvironmentEndpointBaseUrl": f"{sbx.finops_url}/",
           **state(sbx)["finops"]}
    data = [env] if wanted in (None, env["EnvironmentId"]) else []
    return {"ResultPageCurrent": 1, "ResultHasMorePages": False, "Data": data, "IsSuccess": True,
            "OperationActivityId": "00000000-0000-0000-0000-000000000000", "ErrorMessage": None,
            "VersionEOL": "9999-12-31T23:59:59.9999999"}


def _environments(sbx: Sandbox, request: Request) -> dict[str, Any]:
    now = state(sbx)
    linked = sbx.store.kv_get("pp_link") is not None
    dataverse = {
        "id": f"{ENVIRONMENTS}/{sbx.settings.organization_id}",
        "name": sbx.settings.organization_id, "location": now["dataverse_location"],
        "properties": {"displayName": "Sandbox Dataverse", "environmentSku": now["dataverse_sku"],
                       "linkedEnvironmentMetadata": {"instanceUrl": f"{sbx.dataverse_url}/",
                                                     "instanceApiUrl": sbx.dataverse_url}}}
    app = {"type": "Linked", "id": sbx.settings.finops_environment_id, "url": f"{sbx.finops_url}/"}
    if linked:  # Power Platform integration links the F&O environment to this Dataverse environment
        dataverse["properties"]["linkedAppMetadata"] = app
    # Every LCS environment has its "initial Power Platform environment", linked 1:1, without Dataverse.
    initial = {
        "id": f"{ENVIRONMENTS}/{sbx.settings.finops_environment_id}",
        "name": sbx.settings.finops_environment_id, "location": now["finops_location"],
        "properties": {"displayName": "Sandbox F&O (initial)", "environmentSku": now["finops_sku"],
                       "linkedAppMetadata": app}}
    return {"value": [dataverse, initial]}


Handler = Callable[[Sandbox, Request], dict[str, Any]]


def _authenticated(sbx: Sandbox, audience: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            sbx.identity.authenticate(request, audience)
        except AuthError as exc:
            return JSONResponse({"error": {"code": "Unauthorized", "message": exc.reason}}, status_code=401)
        return JSONResponse(handler(sbx, request))

    return endpoint


def _admin(sbx: Sandbox) -> Callable[[Request], Awaitable[Response]]:
    key = sbx.paths.admin_key.read_bytes().strip()

    async def endpoint(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get(ADMIN_HEADER, "").encode(), key):
            return JSONResponse({"error": f"send header {ADMIN_HEADER}"}, status_code=401)
        if request.method == "POST":
            try:
                change = json.loads(await request.body() or b"{}")
            except json.JSONDecodeError as exc:
                return JSONResponse({"error": f"the request body is not JSON: {exc}"}, status_code=400)
            unknown = sorted(set(change) - set(DEFAULTS)) if isinstance(change, dict) else ["(not an object)"]
            if unknown:
                return JSONResponse({"error": f"unknown keys {unknown}: use {sorted(DEFAULTS)}"},
                                    status_code=400)
            saved = sbx.store.kv_get("platform") or {}
            finops = {**saved.get("finops", {}), **change.pop("finops", {})}
            sbx.store.kv_set("platform", {**saved, **change, "finops": finops})
        return JSONResponse(state(sbx))

    return endpoint


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """The LCS and Power Platform admin reads, and the test endpoint that changes what they say."""
    return [
        Route("/lcs/environmentinfo/v1/detail/project/{project}/",
              _authenticated(sbx, LCS_RESOURCE, _lcs_detail), methods=["GET"]),
        Route(f"/bap{ENVIRONMENTS}",
              _authenticated(sbx, BAP_RESOURCE, _environments), methods=["GET"]),
        Route("/_sandbox/platform", _admin(sbx), methods=["GET", "POST"]),
    ]
