"""Start, inspect and stop sandboxes: the Python API under `dw sandbox …` and the test fixtures.

A sandbox runs as a detached `python -m dwlib.sandbox serve --dir DIR` process logging to
`DIR/sandbox.log`; `start` returns once `/_sandbox/health` answers over HTTPS verified against the
sandbox's own CA, with the contents of `DIR/connection.yaml`.

Clients sign in with `dwlib.clients` (parameters `sandbox: {dir: …}` take everything from
`connection.yaml`); the sandbox never imports the library's clients.

Example:
    conn = start("existing-existing", root=Path("/tmp/sbx"), rows=100).connection
    with dwlib.clients.connect(load_params({"scenario": "existing-existing",
                                            "sandbox": {"dir": "/tmp/sbx"}})) as session:
        session.dataverse.whoami()["UserId"]
    stop(Path("/tmp/sbx"))
    >>> default_dir("new-new").as_posix()
    '.dw/sandbox/new-new'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Unpack

import httpx
import yaml

from ..errors import SandboxError
from . import prepare, server
from .schema import ENTITIES
from .state import Paths, Settings

_children: dict[int, subprocess.Popen[bytes]] = {}  # started by this process: reaped on stop


def default_dir(profile: str) -> Path:
    """Where a sandbox of `profile` lives unless `--dir` says otherwise (relative to the cwd).

    >>> default_dir("existing-existing").name
    'existing-existing'
    """
    return Path(".dw") / "sandbox" / profile


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of `start` and `serve` (shared by `dw sandbox` and `python -m dwlib.sandbox`).

    >>> p = argparse.ArgumentParser(); add_options(p)
    >>> p.parse_args(["--profile", "new-new", "--rows", "5"]).rows
    5
    """
    parser.add_argument("--profile", help="setup scenario to emulate, e.g. existing-existing")
    parser.add_argument("--rows", type=int,
                        help=f"rows to seed per main table (default {server.DEFAULT_ROWS})")
    parser.add_argument("--dir", type=Path, help="state directory (default .dw/sandbox/<profile>)")
    parser.add_argument("--port", type=int, help="HTTPS port on 127.0.0.1 (default: the port the sandbox "
                                                 "had, a free one the first time); another port moves it")
    parser.add_argument("--move-port", action="store_true",
                        help="move the sandbox to a free port: its environments' URLs change, so the "
                             "dual-write link needs a relink, as after a documented environment move")
    parser.add_argument("--faults", help="e.g. latency=20ms,429=0.05,503=0.02,504=0.01,drop=0.01,seed=7 "
                                          "(also 500=R, and 5xx=R for any of 500/503/504)")
    parser.add_argument("--limits", help="e.g. requests=100,window=10,exec=5,concurrency=4,finops=8")
    parser.add_argument("--dmf-locale", dest="dmf_locale",
                        help="Language locale of F&O's DMF source data formats when seeded (default en-us; "
                             "e.g. nl-NL writes decimal commas and day-month-year dates in packages)")


def resolve_dir(profile: str | None, root: Path | None) -> Path:
    """The absolute state directory for `--profile`/`--dir`; SandboxError when neither is given.

    >>> resolve_dir(None, Path("/tmp/sbx")).as_posix()
    '/tmp/sbx'
    """
    if root is None:
        if profile is None:
            raise SandboxError("give --profile (e.g. --profile existing-existing) or --dir of a sandbox")
        root = default_dir(profile)
    return root.resolve()


def read_connection(root: Path) -> dict[str, Any] | None:
    """The parsed `connection.yaml` of `root`, or None when there is none.

    >>> read_connection(Path("/nonexistent")) is None
    True
    """
    try:
        return yaml.safe_load(Paths(root).connection.read_text())
    except FileNotFoundError:
        return None


def _read_pid(root: Path) -> int | None:
    try:
        return int(Paths(root).pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether `pid` is a live sandbox process (not a zombie, not a recycled pid)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process reuses the pid
    proc = Path(f"/proc/{pid}")
    if proc.exists():  # Linux: rule out zombies and unrelated processes that reuse the pid
        with contextlib.suppress(OSError):
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes()
            return state != "Z" and b"sandbox" in cmdline
    return True


def http_client(connection: dict[str, Any], **kwargs: Any) -> httpx.Client:
    """An `httpx.Client` that trusts the sandbox CA (TLS stays verified).

    with http_client(conn, timeout=30) as http:
        http.get(conn["dataverse_url"] + "/api/data/v9.2/WhoAmI")
    """
    return httpx.Client(verify=ssl.create_default_context(cafile=connection["ca_bundle"]), **kwargs)


def _healthy(connection: dict[str, Any], timeout: float = 2.0) -> bool:
    try:
        with http_client(connection, timeout=timeout) as http:
            response = http.get(f"{connection['admin_url']}/health")
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json().get("pid") == connection["pid"]


def admin(connection: dict[str, Any], setting: Literal["faults", "limits"], spec: str | None = None
          ) -> dict[str, Any]:
    """Read (spec None) or replace the faults or limits of a running sandbox.

    Returns the sandbox's current faults and limits. Raises SandboxError when it refuses the spec.

    admin(conn, "faults", "429=0.1,seed=3")["faults"]["throttle"]
    """
    key = Path(connection["admin_key_file"]).read_text().strip()
    url = f"{connection['admin_url']}/{setting}"
    with http_client(connection, timeout=30, headers={server.ADMIN_HEADER: key}) as http:
        response = http.get(url) if spec is None else http.post(url, json={"spec": spec})
    if response.status_code != 200:
        raise SandboxError(f"the sandbox refused {setting} {spec!r}: {response.json().get('error')}")
    return dict(response.json())


def traps(connection: dict[str, Any], specs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Read (specs None) or replace the traps of a running sandbox (`dwlib.sandbox.traps.Trap`
    fields: method, path, nth, at, signal, pid, process); returns them, with `fired` once they went off.

    traps(conn, [{"method": "POST", "path": "/finops/data/LegalEntities$", "process": "ipykernel"}])
    """
    key = Path(connection["admin_key_file"]).read_text().strip()
    url = f"{connection['admin_url']}/traps"
    with http_client(connection, timeout=30, headers={server.ADMIN_HEADER: key}) as http:
        response = http.get(url) if specs is None else http.post(url, json={"traps": specs})
    if response.status_code != 200:
        raise SandboxError(f"the sandbox refused the traps {specs!r}: {response.json().get('error')}")
    return list(response.json()["traps"])


def _log_tail(root: Path, lines: int = 25) -> str:
    try:
        text = Paths(root).log.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Started:
    """What `start` did: the connection details, whether the sandbox was already running, and the
    port it moved from (None when it kept its URLs).

    >>> Started(Path("/tmp/sbx"), {"pid": 1}).already_running
    False
    """

    root: Path
    connection: dict[str, Any]
    already_running: bool = False
    moved_from: int | None = None


MOVED = ("its environments' URLs changed, so the Power Platform integration and the dual-write link "
         "still name the old ones, as after an environment move: relink (Power Platform integration setup, "
         "then the dual-write link); the runbook's link check reports it")


def _saved_port(root: Path) -> int:
    """The port a sandbox directory keeps its URLs on (0: none yet)."""
    try:
        return Settings.load(Paths(root).settings).port
    except (FileNotFoundError, ValueError):
        return 0


def _free_or_explain(root: Path, port: int, kept: bool) -> None:
    """SandboxError unless `port` can be listened on; for the port a sandbox keeps, say how to move."""
    try:
        server.bind(port).close()
    except SandboxError:
        if not kept:
            raise
        raise SandboxError(
            f"port {port} on 127.0.0.1 is in use, and the sandbox in {root} keeps its environments' URLs on "
            f"it (https://127.0.0.1:{port}/…, as a real environment keeps its URL): stop what uses the port, "
            f"or move the sandbox with `dw sandbox start --dir {root} --move-port` (a free port) or "
            f"`--port N`; moving changes its URLs, so the dual-write link needs a relink afterwards"
        ) from None


def _move(options: server.Options, move_port: bool) -> server.Options:
    if move_port and options.get("port") is not None:
        raise SandboxError("give --port N or --move-port, not both")
    return {**options, "port": 0} if move_port else options


def start(
    profile: str | None = None,
    *,
    root: Path | None = None,
    timeout: float | None = None,
    owner_pid: int | None = None,
    move_port: bool = False,
    **options: Unpack[server.Options],
) -> Started:
    """Start the sandbox of `root` (default `.dw/sandbox/<profile>`) in the background; `options`
    (rows, port, faults, limits, token_lifetime_s, device_code_approve_after_s) as for
    `server.configure`.

    A sandbox keeps its port, so its URLs (and the links that name them) stay valid across
    restarts, as a real environment's do. `move_port` (or another `port`) moves it: the
    environments' URLs change and its dual-write link then needs a relink (`Started.moved_from`).

    Returns once it answers over verified HTTPS. When it is already running, returns its
    connection with `already_running=True` and changes nothing. Raises SandboxError on bad
    options, a taken port (for its kept port: saying how to move it), or a process that dies or
    does not answer within `timeout` seconds (default: 2 minutes plus time to seed the rows; the
    message ends with the tail of `sandbox.log`). With `owner_pid` the sandbox stops by itself once
    that process has ended (test fixtures).

    started = start("existing-existing", rows=100, faults="latency=5ms")
    """
    root = resolve_dir(profile, root)
    current = status(root)
    if current.running and current.pid is not None:  # it may still be seeding: wait for it
        return Started(root, _await_ready(root, current.pid, timeout or 120.0), already_running=True)
    options = _move(options, move_port)
    before = _saved_port(root)
    settings = server.configure(root, profile=profile, **options)
    if settings.port:
        # Fail here, with the fix, rather than in the log.
        _free_or_explain(root, settings.port, kept=options.get("port") is None)
    paths = Paths(root)
    paths.connection.unlink(missing_ok=True)
    env = dict(os.environ)
    # The child must import this very dwlib, whatever its working directory.
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with paths.log.open("ab") as log:
        log.write(f"--- dw sandbox start {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        owner = [] if owner_pid is None else ["--owner-pid", str(owner_pid)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "dwlib.sandbox", "serve", "--dir", str(root), *owner],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
            start_new_session=True,  # survives the terminal (and the `dw` command) that started it
        )
    _children[proc.pid] = proc
    paths.pid.write_text(str(proc.pid))
    if timeout is None:
        timeout = 120.0 + settings.rows / 5000  # seeding runs at well over 10,000 rows a second
    connection = _await_ready(root, proc.pid, timeout)
    moved = before if before and before != connection["port"] else None
    prep = prepare.played(settings.profile)
    if prep is not None and not prepare.prepared(root):
        return _prepare(root, settings.profile, prep, connection, timeout, owner_pid)
    return Started(root, connection, moved_from=moved)


def _prepare(root: Path, profile: str, prep: prepare.Preparation, connection: dict[str, Any],
             timeout: float, owner_pid: int | None) -> Started:
    """Play the history of a portal-played profile once (`prepare.PREPARATIONS`): set up, and when
    it is refreshed stop, refresh and start again (at its new URLs)."""
    prepare.set_up(connection, profile)
    if prep.refreshed:
        stop(root)
        prepare.refresh(root)
    (root / prepare.PREPARED).write_text(json.dumps({"profile": profile}))
    if not prep.refreshed:
        return Started(root, connection)
    return start(root=root, timeout=timeout, owner_pid=owner_pid)


def _await_ready(root: Path, pid: int, timeout: float) -> dict[str, Any]:
    """The connection of the sandbox process `pid` once it answers; SandboxError with the log tail."""
    log = Paths(root).log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            child = _children.pop(pid, None)
            code = f" (code {child.returncode})" if child else ""
            raise SandboxError(f"the sandbox in {root} exited{code} before it answered; "
                               f"last lines of {log}:\n{_log_tail(root)}")
        connection = read_connection(root)
        if connection and connection.get("pid") == pid and _healthy(connection):
            return connection
        time.sleep(0.1)
    stop(root)
    raise SandboxError(f"the sandbox in {root} did not answer within {timeout:g} s (stopped it); "
                       f"last lines of {log}:\n{_log_tail(root)}")


def serve(profile: str | None = None, *, root: Path | None = None, owner_pid: int | None = None,
          move_port: bool = False, **options: Unpack[server.Options]) -> None:
    """Run a sandbox in the foreground (`dw sandbox serve`) until Ctrl+C; options as for `start`.

    serve("new-new", root=Path("/tmp/sbx"), port=8443)
    """
    root = resolve_dir(profile, root)
    current = status(root)
    if current.running and current.pid != os.getpid():  # the background child finds its own pid
        raise SandboxError(f"the sandbox in {root} is already running (pid {current.pid}): "
                           f"stop it first with: dw sandbox stop --dir {root}")
    options = _move(options, move_port)
    settings = server.configure(root, profile=profile, **options)
    if settings.port:
        _free_or_explain(root, settings.port, kept=options.get("port") is None)
    server.serve(root, owner_pid=owner_pid)


@dataclass
class Status:
    """A state directory's sandbox: whether it runs, its connection, and rows per table.

    >>> Status(Path("/tmp/sbx"), running=False).rows
    {}
    """

    root: Path
    running: bool
    pid: int | None = None
    profile: str | None = None
    connection: dict[str, Any] | None = None
    rows: dict[str, int] = field(default_factory=dict)


def table_rows(root: Path) -> dict[str, int]:
    """Rows per entity set in the state database (read-only; works whether or not it runs).

    >>> table_rows(Path("/nonexistent"))
    {}
    """
    db = Paths(root).db
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{ent.table}"').fetchone()[0]
                for name, ent in ENTITIES.items() if ent.table in tables}
    finally:
        conn.close()


def status(root: Path, *, with_rows: bool = False) -> Status:
    """The sandbox of `root`: running or not (its process is alive), connection, rows per table.

    >>> status(Path("/nonexistent")).running
    False
    """
    root = root.resolve()
    pid = _read_pid(root)
    running = pid is not None and _alive(pid)
    connection = read_connection(root) if running else None
    profile = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        profile = Settings.load(Paths(root).settings).profile
    return Status(root=root, running=running, pid=pid if running else None, profile=profile,
                  connection=connection, rows=table_rows(root) if with_rows else {})


def stop(root: Path, timeout: float = 10.0) -> bool:
    """Stop the sandbox of `root`: SIGTERM, then SIGKILL after `timeout` s. False if it was not running.

    >>> stop(Path("/nonexistent"))
    False
    """
    root = root.resolve()
    paths = Paths(root)
    pid = _read_pid(root)
    was_running = pid is not None and _alive(pid)
    if pid is not None and was_running:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid):
                break
    if pid is not None and pid in _children:
        _children.pop(pid).wait(timeout=5)
    paths.pid.unlink(missing_ok=True)
    paths.connection.unlink(missing_ok=True)
    return was_running
