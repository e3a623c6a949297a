""" "Portal" endpoints: the portal-only dual-write actions, so a headless test can play the consultant.

None of this exists as an API in the real products: these are the clicks of LCS (Power Platform
Integration, Dual-write application Configure / Link) and of the F&O dual-write workspace (Apply
Solution, legal entities, Run / Stop / Pause / Resume, map edits, Reset link). They live under
`{base}/_portal/…`, apart from the emulated services, and need the sandbox admin key
(`X-Sandbox-Admin`), like the other test-only endpoints. Answers are JSON; a refused action is
`{"error": "<the message the portal would show>"}` with status 400/404/409.

| method and path | portal action |
|---|---|
| `GET /_portal/` | summary: Power Platform link, connection, maps |
| `POST /_portal/lcs/power-platform-integration` | LCS Power Platform Integration > Setup |
| `POST /_portal/lcs/dual-write/configure` | LCS Dual-write application > Configure |
| `POST /_portal/lcs/dual-write/link` `{legal_entities?, start_maps?}` | Link to Power Platform environment |
| `POST /_portal/dualwrite/apply-solution` | Dual-write workspace > Apply Solution |
| `POST /_portal/dualwrite/legal-entities` `{add, skip_initial_writes?}` | Add legal entity |
| `DELETE /_portal/dualwrite/legal-entities/{code}` | remove a legal entity |
| `POST /_portal/dualwrite/reset` `{force?, legal_entities?}` | Reset link |
| `GET /_portal/dualwrite/maps`, `GET …/maps/{map}` | the table map list, one map (`{map}` = id or name) |
| `POST …/maps/{map}/run` `{initial_sync?, master?, related?}` | Run (with the related maps offered) |
| `POST …/maps/{map}/stop`, `…/pause` `{related?}`, `…/resume` `{mode?}` | Stop, Pause, Resume |
| `PATCH …/maps/{map}` `{remove?, restore?, defaults?}` | edit column rows, only when Not running (*) |
| `GET …/maps/{map}/initial-sync` | Initial sync details (last job and history) |
| `GET …/maps/{map}/queue`, `…/catch-up-errors`, `POST …/catch-up-errors/retry` | queue and catch-up |
| `GET /_portal/dualwrite/jobs/{executionId}`, `GET /_portal/dualwrite/requests/{id}` | a job, a request |
| `GET`/`PUT /_portal/dualwrite/limits` | the dual-write limits (tests lower them) |

(*) `remove` / `restore` take Dataverse columns; `defaults` maps F&O columns to the value of a
Default value transform (`{"CUSTOMERGROUPID": "30"}`, null removes it).

Example:
    >>> [path for _, path, _ in _ROUTES][:2]
    ['/', '/lcs/power-platform-integration']
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dwlib import catalog

from . import dw_live
from .context import Sandbox
from .dualwrite import DualWrite, runtime_of
from .dw_runtime import DualWriteError

ADMIN_HEADER = "X-Sandbox-Admin"
Handler = Callable[[DualWrite, Request, dict[str, Any]], Any]


def _map_name(request: Request) -> str:
    try:
        return catalog.table_map(request.path_params["map"]).name
    except catalog.CatalogError as exc:
        raise DualWriteError(str(exc), 404) from None


def _list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DualWriteError(f"'{key}' must be a list of strings")
    return value


def _edit(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    defaults = body.get("defaults") or {}
    if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
        raise DualWriteError("'defaults' must map F&O columns to default values")
    return rt.edit(
        _map_name(request), remove=_list(body, "remove"), restore=_list(body, "restore"), defaults=defaults
    )


def _summary(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    return {
        "powerPlatformIntegration": rt.pp_link(),
        "connection": rt.connection(),
        "maps": [{"name": m["name"], "id": m["id"], "state": m["displayState"]} for m in rt.maps()],
    }


def _link(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    les = _list(body, "legal_entities") if "legal_entities" in body else None
    return rt.link(les, start_maps=body.get("start_maps"))


def _add_le(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    return rt.add_legal_entities(
        _list(body, "add"), skip_initial_writes=bool(body.get("skip_initial_writes"))
    )


def _reset(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    return rt.reset(force=bool(body.get("force")), legal_entities=_list(body, "legal_entities"))


def _run(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    name = _map_name(request)
    # The Run dialog lists the related maps that are not running yet, in dependency order.
    offered = [n for n in catalog.related_maps(name) if rt.map_record(n)["state"] == "NotRunning"]
    related = _list(body, "related") if "related" in body else offered
    order = catalog.dependency_order([*related, name], include_dependencies=False)
    return rt.run(
        order,
        initial_sync=body.get("initial_sync", True) is not False,
        master=body.get("master", "dataverse"),
    )


def _related_running(rt: DualWrite, name: str, body: dict[str, Any]) -> list[str]:
    extra = [n for n in catalog.related_maps(name) if rt.map_record(n)["state"] == "Running"]
    return [*extra, name] if body.get("related") else [name]


def _initial_sync(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    name = _map_name(request)
    history = rt.jobs(name)
    return {
        "map": name,
        "state": rt.map_view(name)["displayState"],
        "last": history[0] if history else None,
        "history": history,
    }


def _queue(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    try:
        limit, offset = (
            int(request.query_params.get("limit", 100)),
            int(request.query_params.get("offset", 0)),
        )
    except ValueError:
        raise DualWriteError("limit and offset must be integers") from None
    return dw_live.queued(rt, _map_name(request), limit, offset)


def _limits(rt: DualWrite, request: Request, body: dict[str, Any]) -> Any:
    if request.method == "PUT":
        return vars(rt.set_limits(body))
    return vars(rt.limits())


_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", _summary),
    ("POST", "/lcs/power-platform-integration", lambda rt, r, b: rt.setup_power_platform_integration()),
    ("POST", "/lcs/dual-write/configure", lambda rt, r, b: rt.configure()),
    ("POST", "/lcs/dual-write/link", _link),
    ("POST", "/dualwrite/apply-solution", lambda rt, r, b: {"maps": rt.apply_solutions()}),
    ("GET", "/dualwrite/connection", lambda rt, r, b: rt.connection()),
    ("POST", "/dualwrite/legal-entities", _add_le),
    (
        "DELETE",
        "/dualwrite/legal-entities/{code}",
        lambda rt, r, b: rt.remove_legal_entity(r.path_params["code"]),
    ),
    ("POST", "/dualwrite/reset", _reset),
    ("GET", "/dualwrite/maps", lambda rt, r, b: rt.maps()),
    ("GET", "/dualwrite/maps/{map}", lambda rt, r, b: rt.map_view(_map_name(r))),
    ("PATCH", "/dualwrite/maps/{map}", _edit),
    ("POST", "/dualwrite/maps/{map}/run", _run),
    ("POST", "/dualwrite/maps/{map}/stop", lambda rt, r, b: rt.stop([_map_name(r)])),
    ("POST", "/dualwrite/maps/{map}/pause", lambda rt, r, b: rt.pause(_related_running(rt, _map_name(r), b))),
    (
        "POST",
        "/dualwrite/maps/{map}/resume",
        lambda rt, r, b: rt.resume([_map_name(r)], b.get("mode", "catchup")),
    ),
    ("GET", "/dualwrite/maps/{map}/initial-sync", _initial_sync),
    ("GET", "/dualwrite/maps/{map}/queue", _queue),
    (
        "GET",
        "/dualwrite/maps/{map}/catch-up-errors",
        lambda rt, r, b: dw_live.catch_up_errors(rt, _map_name(r)),
    ),
    (
        "POST",
        "/dualwrite/maps/{map}/catch-up-errors/retry",
        lambda rt, r, b: dw_live.retry_catch_up_errors(rt, _map_name(r)),
    ),
    ("GET", "/dualwrite/jobs/{execution}", lambda rt, r, b: rt.job(r.path_params["execution"])),
    ("GET", "/dualwrite/requests/{request}", lambda rt, r, b: rt.request(r.path_params["request"])),
    ("GET", "/dualwrite/limits", _limits),
    ("PUT", "/dualwrite/limits", _limits),
]


def _endpoint(sbx: Sandbox, key: bytes, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get(ADMIN_HEADER, "").encode(), key):
            return JSONResponse(
                {
                    "error": f"the portal endpoints need header {ADMIN_HEADER} with the content of "
                    f"{sbx.paths.admin_key.name}"
                },
                status_code=401,
            )
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise DualWriteError("send a JSON object as the request body")
            result = handler(runtime_of(sbx), request, body)
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": f"the request body is not JSON: {exc}"}, status_code=400)
        except DualWriteError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return JSONResponse(result)

    return endpoint


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """`Mount("/_portal", …)`; also creates the runtime so live sync is hooked in from the start."""
    runtime_of(sbx)
    key = sbx.paths.admin_key.read_bytes().strip()
    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler in _ROUTES:
        by_path.setdefault(path, {})[method] = handler

    def dispatch(handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
        endpoints = {m: _endpoint(sbx, key, h) for m, h in handlers.items()}

        async def endpoint(request: Request) -> Response:
            return await endpoints[request.method](request)

        return endpoint

    return [
        Mount(
            "/_portal",
            routes=[
                Route(path, dispatch(handlers), methods=list(handlers)) for path, handlers in by_path.items()
            ],
        )
    ]
