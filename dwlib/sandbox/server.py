"""The sandbox process: state directory, credentials, app assembly, HTTPS on a pre-bound socket.

`configure` validates options and persists them in `sandbox.json`; `serve` runs the sandbox of a
configured state directory in the foreground until SIGINT/SIGTERM. The socket is bound before
anything is served, so the real port (also for `--port 0`) is known and written to
`connection.yaml` (keys in docs/sandbox.md) before the first request can arrive.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> configure(root, profile="new-new", rows=0).profile
    'new-new'

    serve(root)  # blocks; `dw sandbox start` runs it in the background
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TypedDict, Unpack

import trustme
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..catalog.locales import LocaleError, locale
from ..errors import SandboxError
from . import dataverse, dmf, finops, gateway, identity, platform, portal, profiles
from .context import Sandbox
from .limits import Faults, Guard
from .state import PROFILES, Limits, Paths, Settings, new_secret, write_private
from .store import Store
from .traps import Traps

DEFAULT_ROWS = 1000
SEEDED_KEY = "sandbox.seeded"
ADMIN_HEADER = "X-Sandbox-Admin"
log = logging.getLogger("dwlib.sandbox")


# --- state directory --------------------------------------------------------------------------------


def ensure_credentials(paths: Paths) -> None:
    """Create what is missing of CA, TLS leaf, client secret and certificate, identity and admin keys.

    Existing files are kept, so clients that trust `ca.pem` keep trusting a restarted sandbox.

    >>> import tempfile, pathlib
    >>> paths = Paths(pathlib.Path(tempfile.mkdtemp())); ensure_credentials(paths)
    >>> oct(paths.identity_key.stat().st_mode & 0o777)
    '0o600'
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    tls = (paths.ca, paths.server_cert, paths.server_key, paths.client_cert, paths.client_key)
    if not all(p.exists() for p in tls):
        ca = trustme.CA(organization_name="dw sandbox")
        leaf = ca.issue_cert("127.0.0.1", "localhost", common_name="dw sandbox")
        # msal signs certificate assertions with RS256/PS256: the credential needs an RSA key.
        client = ca.issue_cert("client.dw-sandbox.invalid", common_name="dw sandbox app credential",
                               key_type=trustme.KeyType.RSA)
        paths.ca.write_bytes(ca.cert_pem.bytes())
        paths.server_cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        write_private(paths.server_key, leaf.private_key_pem.bytes())
        paths.client_cert.write_bytes(client.cert_chain_pems[0].bytes())
        write_private(paths.client_key, client.private_key_pem.bytes())
    secrets_ = {paths.client_secret: lambda: new_secret().encode(),
                paths.identity_key: lambda: os.urandom(32),
                paths.admin_key: lambda: new_secret().encode()}
    for path, make in secrets_.items():
        if not path.exists():
            write_private(path, make())


class Options(TypedDict, total=False):
    """The settings of a sandbox that `configure` (and `control.start`/`serve`) take besides the
    profile; an absent or None one keeps what the directory has."""

    rows: int | None
    port: int | None
    faults: str | None
    limits: str | None
    token_lifetime_s: int | None
    device_code_approve_after_s: float | None
    dmf_locale: str | None


def configure(root: Path, *, profile: str | None = None, **options: Unpack[Options]) -> Settings:
    """Validate options, merge them into the directory's `sandbox.json` and save it.

    A new directory needs `profile`; an existing one keeps its profile and rows (the data was
    seeded with them) and takes new port, faults, limits and token settings. Raises SandboxError.

    >>> import tempfile, pathlib
    >>> configure(pathlib.Path(tempfile.mkdtemp()), profile="nope")
    Traceback (most recent call last):
    ...
    dwlib.errors.SandboxError: unknown profile 'nope': use one of new-new, new-existing, new-data-new, \
new-data-existing, existing-new, existing-existing, refresh-relink, maintenance, add-legal-entity
    """
    paths = Paths(root)
    rows, port = options.get("rows"), options.get("port")
    faults, limits = options.get("faults"), options.get("limits")
    if profile is not None and profile not in PROFILES:
        raise SandboxError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    if rows is not None and rows < 0:
        raise SandboxError(f"--rows must be 0 or more, not {rows}")
    if port is not None and not 0 <= port <= 65535:
        raise SandboxError(f"--port must be between 0 and 65535 (0 picks a free port), not {port}")
    try:
        parsed_faults = None if faults is None else Faults.parse(faults)
    except ValueError as exc:
        raise SandboxError(f"--faults: {exc}") from None
    try:
        parsed_limits = None if limits is None else Limits.parse(limits)
    except ValueError as exc:
        raise SandboxError(f"--limits: {exc}") from None
    dmf_locale = options.get("dmf_locale")
    if dmf_locale is not None:
        try:
            dmf_locale = locale(dmf_locale).name
        except LocaleError as exc:
            raise SandboxError(f"--dmf-locale: {exc}") from None
    if paths.settings.exists():
        settings = Settings.load(paths.settings)
        if dmf_locale not in (None, settings.dmf_locale):
            raise SandboxError(f"{root} was seeded with DMF locale {settings.dmf_locale}, not {dmf_locale}: "
                               "change the Language locale of the source data format in F&O (Data management "
                               "> Source data formats), or use another --dir")
        if profile not in (None, settings.profile):
            raise SandboxError(f"{root} holds a sandbox of profile {settings.profile!r}, not {profile!r}: "
                               "use another --dir, or delete that directory to start over")
        if rows not in (None, settings.rows):
            raise SandboxError(f"{root} was seeded with {settings.rows} rows, not {rows}: "
                               "use another --dir, or delete that directory to start over")
    elif profile is None:
        raise SandboxError(f"no sandbox in {root} yet: give --profile to create one")
    else:
        settings = Settings(profile=profile, rows=DEFAULT_ROWS if rows is None else rows,
                            dmf_locale=dmf_locale or "en-us")
    if port is not None:
        settings.port = port
    if parsed_faults is not None:
        settings.faults = parsed_faults.spec
    if parsed_limits is not None:
        settings.limits = parsed_limits
    for name in ("token_lifetime_s", "device_code_approve_after_s"):
        if options.get(name) is not None:
            setattr(settings, name, options.get(name))
    root.mkdir(parents=True, exist_ok=True)
    settings.save(paths.settings)
    return settings


def bind(port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:`port` (0 = a free port); SandboxError when taken.

    >>> s = bind(0); s.getsockname()[1] > 0
    True
    >>> s.close()
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response with a body waits ~40 ms (Nagle + the client's delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # Lets a restart reuse its port while old connections sit in TIME_WAIT; a live listener still
    # makes bind fail, so "port in use" is detected.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SandboxError(f"port {port} on 127.0.0.1 is in use: choose another --port, "
                               "or --port 0 for a free one") from None
        raise SandboxError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def connection_info(sbx: Sandbox, pid: int) -> dict[str, Any]:
    """What `connection.yaml` holds: URLs, ids and the paths of the credential files.

    connection_info(sbx, os.getpid())["dataverse_url"]  -> 'https://127.0.0.1:PORT/dataverse'
    """
    p = sbx.paths
    return {
        "tenant_id": sbx.settings.tenant_id,
        "authority": sbx.authority,
        "client_id": sbx.settings.client_id,
        "client_secret_file": str(p.client_secret.resolve()),
        "client_certificate_file": str(p.client_cert.resolve()),
        "client_private_key_file": str(p.client_key.resolve()),
        "ca_bundle": str(p.ca.resolve()),
        "dataverse_url": sbx.dataverse_url,
        "finops_url": sbx.finops_url,
        "gateway_url": sbx.gateway_url,
        "lcs_api_url": f"{sbx.base_url}/lcs",
        "lcs_project_id": sbx.settings.lcs_project_id,
        "lcs_environment_id": sbx.settings.finops_environment_id,
        "power_platform_api_url": f"{sbx.base_url}/bap",
        "admin_url": sbx.admin_url,
        "admin_key_file": str(p.admin_key.resolve()),
        "profile": sbx.settings.profile,
        "pid": pid,
        "port": int(sbx.base_url.rsplit(":", 1)[1]),
        "state_dir": str(p.root.resolve()),
    }


def _write_atomic(path: Path, text: str) -> None:
    # Readers (control.start) poll for the file: they must never see it half written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- app ----------------------------------------------------------------------------------------------


class RequestLog:
    """Gives every response a request id (`REQ_ID`, `x-ms-service-request-id`) and logs one line.

    The line has method, path (never the query string: SAS signatures live there), status and ms.

    uvicorn.Config(RequestLog(Guard(starlette_app, sbx)), ...)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4()).encode()
        started = time.perf_counter()
        status = 0

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, request_id) for k in (b"req_id", b"x-ms-service-request-id")
                            if k not in names]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            log.info("%s %s %s %.0fms", scope["method"], scope["path"], status or "-",
                     (time.perf_counter() - started) * 1000)


def _admin_routes(sbx: Sandbox) -> list[BaseRoute]:
    admin_key = sbx.paths.admin_key.read_bytes().strip()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "profile": sbx.settings.profile, "pid": os.getpid(),
                             "tenant_id": sbx.settings.tenant_id})

    def unauthorized(request: Request) -> Response | None:
        given = request.headers.get(ADMIN_HEADER, "").encode()
        if hmac.compare_digest(given, admin_key):
            return None
        return JSONResponse({"error": f"send header {ADMIN_HEADER} with the content of "
                                      f"{sbx.paths.admin_key.name}"}, status_code=401)

    def admin(setter_name: str) -> Any:
        async def endpoint(request: Request) -> Response:
            if (refused := unauthorized(request)) is not None:
                return refused
            guard: Guard = sbx.extras["guard"]
            if request.method == "POST":
                try:
                    spec = json.loads(await request.body()).get("spec")
                    if not isinstance(spec, str):
                        raise ValueError('send a JSON body {"spec": "..."}')
                    getattr(guard, setter_name)(spec)
                except (ValueError, AttributeError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(guard.describe())
        return endpoint

    async def set_traps(request: Request) -> Response:
        if (refused := unauthorized(request)) is not None:
            return refused
        keeper: Traps = sbx.extras["traps"]
        if request.method == "POST":
            try:
                specs = json.loads(await request.body()).get("traps")
                if not isinstance(specs, list):
                    raise ValueError('send a JSON body {"traps": [{"method": ..., "path": ..., ...}]}')
                keeper.set(specs)
            except (ValueError, AttributeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"traps": keeper.describe()})

    return [
        Route("/health", health, methods=["GET"]),
        Route("/faults", admin("set_faults"), methods=["GET", "POST"]),
        Route("/limits", admin("set_limits"), methods=["GET", "POST"]),
        Route("/traps", set_traps, methods=["GET", "POST"]),
    ]


def build_app(sbx: Sandbox) -> ASGIApp:
    """The whole sandbox as one ASGI app: routes of every module, limits and request ids around it.

    uvicorn.Config(build_app(sbx), ssl_certfile=..., ssl_keyfile=...)
    """
    routes: list[BaseRoute] = [
        Mount("/dataverse", routes=dataverse.routes(sbx)),
        Mount("/finops", routes=finops.routes(sbx)),
        *dmf.routes(sbx),
        *platform.routes(sbx),  # LCS environment metadata, Power Platform admin environments (first:
        Mount("/_sandbox", routes=_admin_routes(sbx)),  # its /_sandbox/platform is not the mount's)
        *identity.routes(sbx),
        *portal.routes(sbx), *gateway.routes(sbx),  # dual-write: portal actions, management gateway
    ]
    # Traps sit inside the guard: a request it refuses (fault, 429) never reaches a route, so it
    # does not count towards a trap either.
    traps = Traps(Starlette(routes=routes))
    guard = Guard(traps, sbx)
    sbx.extras.update(guard=guard, traps=traps)
    return RequestLog(guard)


# --- serve --------------------------------------------------------------------------------------------


class _Stop(Exception):
    """SIGINT/SIGTERM: uvicorn shuts down gracefully, then re-raises the signal; we end with this."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stop


def _watch_owner(owner_pid: int, server: uvicorn.Server) -> None:
    while not server.should_exit:
        time.sleep(1.0)
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            log.info("owner process %d has ended: stopping", owner_pid)
            server.should_exit = True


def serve(root: Path, owner_pid: int | None = None) -> None:
    """Run the configured sandbox of `root` in the foreground until SIGINT/SIGTERM, then return.

    Seeds the profile's data on first start; writes `sandbox.pid` and, once listening,
    `connection.yaml`; removes both when it stops. Logs to stderr. With `owner_pid` it also stops
    when that process has ended (tests: a killed test run leaves no sandbox behind).

    configure(root, profile="new-new", rows=0); serve(root)
    """
    paths = Paths(root.resolve())
    if not paths.settings.exists():
        raise SandboxError(f"no sandbox in {root} yet: give --profile to create one")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load(paths.settings)
    ensure_credentials(paths)
    sock = bind(settings.port)
    if settings.port != sock.getsockname()[1]:
        # The first port (a free one) is kept: the environments' URLs, and the links that name
        # them, stay valid across restarts as a real environment's do.
        settings.port = sock.getsockname()[1]
        settings.save(paths.settings)
    pid = os.getpid()
    paths.pid.write_text(str(pid))
    store = Store(paths.db)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        base_url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        sbx = Sandbox(paths=paths, settings=settings, store=store,
                      identity=identity.EntraIdentity(paths, settings, base_url), base_url=base_url)
        if not store.kv_get(SEEDED_KEY, False):
            log.info("seeding profile %s with %d rows", settings.profile, settings.rows)
            with store.transaction():
                profiles.seed(store, settings)
                store.kv_set(SEEDED_KEY, True)
        config = uvicorn.Config(build_app(sbx), ssl_certfile=str(paths.server_cert),
                                ssl_keyfile=str(paths.server_key), log_config=None, access_log=False,
                                timeout_graceful_shutdown=5)
        _write_atomic(paths.connection, yaml.safe_dump(connection_info(sbx, pid), sort_keys=False))
        log.info("sandbox %s listening on %s", settings.profile, base_url)
        uv = uvicorn.Server(config)
        if owner_pid is not None:
            threading.Thread(target=_watch_owner, args=(owner_pid, uv), daemon=True).start()
        uv.run(sockets=[sock])
    except _Stop:
        log.info("sandbox stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        store.close()
        with contextlib.suppress(OSError, ValueError):
            if int(paths.pid.read_text()) == pid:
                paths.pid.unlink()
                paths.connection.unlink(missing_ok=True)

