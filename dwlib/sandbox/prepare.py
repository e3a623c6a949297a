"""How the sandbox of each operations runbook is prepared: the one registry, `PREPARATIONS`.

An operations runbook finds dual-write already set up, and the state it is for. `dw run <id>
--sandbox` (and the tests) start the sandbox with the preparation's `profile`; its history comes up
one of two ways (`History`), then `seed` makes the state the runbook is for:

| id | profile | history | then (`seed`) |
|---|---|---|---|
| `health-check` | `new-data-new` | `SETUP_RUN` | 3 USMF customers renamed in F&O outside dual-write |
| `troubleshoot` | `new-data-new` | `SETUP_RUN` | a traced live-sync refusal; accounts fail initial sync |
| `maintenance` | `maintenance` | `PORTAL` | - (linked for USMF and GBSI, maps Running) |
| `add-legal-entity` | `add-legal-entity` | `PORTAL` | - (DEMF, in F&O with customers, to add) |
| `refresh-relink` | `refresh-relink` | `PORTAL`, `refresh`ed | - (new ids and URLs, a stale configuration) |

Both kinds of history are needed: the health check and troubleshoot read every company and both
Customers V3 maps a full setup leaves (the setup runbook itself, with its gates answered by the
sandbox consultant), while the three runbooks that change a linked pair need only a pair linked for
two companies with one map Running, which `set_up` plays in seconds through the portal endpoints
at the profile's first start (`control.start`; `prepared.json` records it): Power Platform
integration, Configure and Link with the preparation's `linked` legal entities, then the Customers
V3 (accounts) map with its prerequisites Running after an initial sync with F&O as master.

`refresh(root, source)` simulates a database refresh on a stopped sandbox, as LCS and the Power
Platform admin center leave a pair (operations-facts.md §1): the data (with its dual-write
configuration) copied from `source`, or kept in place, while the environment identities and URLs
change (in place: new environment ids and a new port). The Power Platform integration is not
affected by lifecycle actions: it names the target's own F&O again when the sandbox starts. The
copied dual-write configuration (connection, project configurations naming the old Dataverse
URL, runtime configurations, map states) is stale, which the refresh-relink runbook detects.

This module runs setup runbooks (`dwlib.execute`, imported on use), so, like the rest of the
sandbox, only the CLI and the tests use it.

Example:
    >>> PREPARATIONS["health-check"].profile, PREPARATIONS["health-check"].history.value
    ('new-data-new', 'setup run')
    >>> sorted(id for id, p in PREPARATIONS.items() if p.history is History.PORTAL)
    ['add-legal-entity', 'maintenance', 'refresh-relink']

Usage: `profile("health-check")`, then `prepare("health-check", root)` once it runs;
`refresh(Path(".dw/sandbox/refresh-relink"))`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from dwlib import catalog
from dwlib.errors import DwError, SandboxError

from .state import Paths, Settings
from .store import utcnow


class History(Enum):
    """How the dual-write setup an operations runbook finds comes up in its sandbox."""

    SETUP_RUN = "setup run"  # the profile's own setup runbook run to its end, after the start
    PORTAL = "portal"  # played through the portal endpoints at the profile's first start (`set_up`)


def _drift(root: Path) -> None:
    from . import drift  # imported on use: the server imports this module too

    drift.seed(root, rows=3)


def _sync_errors(root: Path) -> None:
    from . import sync_errors  # imports control, which imports this module

    sync_errors.seed(root)


@dataclass(frozen=True)
class Preparation:
    """The sandbox of one operations runbook: the profile started, how its setup comes up, the
    legal entities a portal play links, whether it is then refreshed, and the state seeded after."""

    profile: str
    history: History
    says: str
    linked: tuple[str, ...] = ()
    refreshed: bool = False
    seed: Callable[[Path], None] | None = None


_PAIR = ("USMF", "GBSI")
PREPARATIONS: dict[str, Preparation] = {
    "health-check": Preparation("new-data-new", History.SETUP_RUN, seed=_drift,
                                says="maps running, then 3 USMF customers renamed in F&O outside dual-write"),
    "troubleshoot": Preparation("new-data-new", History.SETUP_RUN, seed=_sync_errors,
                                says="a Dataverse save live sync refuses, in the plug-in trace log; then "
                                     "Customers V3 (accounts) run again with an initial sync that fails "
                                     "(nl-NL source data format)"),
    "maintenance": Preparation("maintenance", History.PORTAL, linked=_PAIR,
                               says="linked for USMF and GBSI, the maps Running"),
    "add-legal-entity": Preparation("add-legal-entity", History.PORTAL, linked=_PAIR,
                                    says="linked for USMF and GBSI; DEMF is the company to add"),
    "refresh-relink": Preparation("refresh-relink", History.PORTAL, linked=_PAIR, refreshed=True,
                                  says="linked for USMF and GBSI, then refreshed"),
}
MAP = "Customers V3 (accounts)"
REFRESH_KEY = "sandbox.refresh"  # kv: a refresh whose Power Platform integration is still to restore
PREPARED = "prepared.json"  # in the sandbox directory: set up (and refreshed) once


def profile(scenario: str) -> str:
    """The sandbox profile a run of `scenario` starts from (a setup scenario's own)."""
    prep = PREPARATIONS.get(scenario)
    return prep.profile if prep else scenario


def played(profile: str) -> Preparation | None:
    """The preparation whose history `control.start` plays at the first start of `profile`."""
    return next((p for p in PREPARATIONS.values() if p.profile == profile and p.history is History.PORTAL),
                None)


def prepare(scenario: str, root: Path, *, echo: Callable[[str], None] = print) -> None:
    """Bring the running sandbox of `root` (started with `profile(scenario)`) into the state
    `scenario` is for: a setup run, then the seed (nothing for a setup, nor for a portal-played
    profile, whose start did it). DwError when the setup runbook does not pass."""
    prep = PREPARATIONS.get(scenario)
    if prep is None or prep.history is History.PORTAL:
        return
    from dwlib import execute  # papermill: only a setup run needs it
    from dwlib.packaged import param_file

    echo(f"preparing the sandbox for {scenario}: {prep.profile} set up first, then {prep.says}")
    params = param_file(f"sandbox-{prep.profile}.yaml")  # shipped with the package (an install too)
    setup = execute.execute(prep.profile, params, {"sandbox.dir": str(root)}, root / "prepare-runs",
                            echo=lambda _line: None)
    if not setup.ok:
        why = setup.error or "a step failed"
        raise DwError(f"preparing the sandbox: the {prep.profile} runbook did not pass ({why}); its record: "
                      f"{setup.record}")
    if prep.seed is not None:
        prep.seed(root)


def prepared(root: Path) -> bool:
    """Whether the sandbox of `root` has had its history played."""
    return (root / PREPARED).exists()


def set_up(connection: Mapping[str, Any], profile: str, *, timeout: float = 300.0) -> list[str]:
    """Link the pair of the portal-played `profile` and run `MAP` with its prerequisites (initial
    sync from F&O); returns one line per portal call. SandboxError when a call is refused or the
    maps do not run."""
    from . import control  # control starts sandboxes and calls this

    base = str(connection["dataverse_url"]).rsplit("/", 1)[0] + "/_portal"
    headers = {"X-Sandbox-Admin": Path(connection["admin_key_file"]).read_text().strip()}
    maps = catalog.dependency_order([MAP])
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/lcs/power-platform-integration", None),
        ("POST", "/lcs/dual-write/configure", None),
        ("POST", "/lcs/dual-write/link",
         {"legal_entities": list(_played(profile).linked), "start_maps": False}),
        ("POST", f"/dualwrite/maps/{catalog.table_map(MAP).id}/run",
         {"related": [m for m in maps if m != MAP], "initial_sync": True, "master": "finops"}),
    ]
    done = []
    with control.http_client(dict(connection), timeout=120) as http:
        def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            r = http.request(method, base + path, headers=headers, json=body)
            if r.status_code >= 300:
                raise SandboxError(f"preparing the {profile} sandbox: {method} {path} refused: "
                                   f"{r.text[:300]}")
            return r.json()

        for method, path, body in calls:
            call(method, path, body)
            done.append(f"{method} {path}")
        deadline = time.monotonic() + timeout
        while True:
            states = {m["name"]: m["displayState"] for m in call("GET", "/dualwrite/maps")
                      if m["name"] in maps}
            if all(s == "Running" for s in states.values()):
                break
            if time.monotonic() > deadline or "Not running" in states.values():
                raise SandboxError(f"preparing the {profile} sandbox: the maps did not run: {states}")
            time.sleep(0.2)
    return done


def _played(profile: str) -> Preparation:
    prep = played(profile)
    if prep is None:
        names = sorted(p.profile for p in PREPARATIONS.values() if p.history is History.PORTAL)
        raise SandboxError(f"profile {profile} has no history played at its start: use one of "
                           f"{', '.join(names)}")
    return prep


def refresh(root: Path, source: Path | None = None) -> Settings:
    """Simulate a database refresh of the stopped sandbox in `root` (see the module text): copy the
    state of the stopped sandbox in `source`, or keep it and give the environments new identities
    and URLs. Returns the sandbox's settings. SandboxError when a sandbox runs or is missing."""
    from . import control

    for where in filter(None, (root, source)):
        if control.status(where).running:
            raise SandboxError(f"the sandbox in {where} is running: stop it first (dw sandbox stop --dir "
                               f"{where}); "
                               "a database is copied while its environment is offline")
        if not Paths(where).db.exists():
            raise SandboxError(f"there is no sandbox in {where}: create it with dw sandbox start --dir "
                               f"{where}")
    paths = Paths(root)
    settings = Settings.load(paths.settings)
    if source is not None:
        if source.resolve() == root.resolve():
            raise SandboxError("--from names the sandbox being refreshed: give the directory of another one")
        with sqlite3.connect(Paths(source).db) as src, sqlite3.connect(paths.db) as dst:
            src.backup(dst)
        # A copy within one tenant, signed in to with the same app registration: its application
        # user came with the copied Dataverse.
        origin = Settings.load(Paths(source).settings)
        settings.tenant_id, settings.client_id = origin.tenant_id, origin.client_id
        settings.save(paths.settings)
        if Paths(source).blobs.is_dir():
            shutil.copytree(Paths(source).blobs, paths.blobs, dirs_exist_ok=True)
    else:
        settings.organization_id = str(uuid.uuid4())
        settings.finops_environment_id = str(uuid.uuid4())
        settings.port = 0  # a copy is another environment, at other URLs
        settings.save(paths.settings)
    with sqlite3.connect(paths.db) as db:
        db.execute("INSERT OR REPLACE INTO _kv (k, v) VALUES (?, ?)",
                   (REFRESH_KEY, json.dumps({"on": utcnow(), "from": str(source or root)})))
    return settings
