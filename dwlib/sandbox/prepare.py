"""The history an operations runbook's sandbox has before the runbook: set up, and for
`refresh-relink` refreshed.

The six setup profiles start before dual-write; the operations profiles start after it. `set_up`
plays that history through the portal endpoints, as the consultant did at setup: Power Platform
integration, Configure and Link with the legal entities of `LINKED`, then the Customers V3
(accounts) map with its prerequisites Running after an initial sync with F&O as master. Per
profile:

| profile | what the runbook finds |
|---|---|
| `maintenance` | the maps Running; writes made while they are paused queue |
| `add-legal-entity` | linked for USMF and GBSI; DEMF (in F&O, with customers) is the company to add |
| `refresh-relink` | set up, then `refresh`ed: other identities and URLs, a configuration naming the old |

`refresh(root, source)` simulates a database refresh on a stopped sandbox, as LCS and the Power
Platform admin center leave a pair (operations-facts.md §1): the data (with its dual-write
configuration) copied from `source`, or kept in place, while the environment identities and URLs
change (in place: new environment ids and a new port). The Power Platform integration is not
affected by lifecycle actions: it names the target's own F&O again when the sandbox starts. The
copied dual-write configuration (connection, project configurations naming the old Dataverse
URL, runtime configurations, map states) is stale, which the refresh-relink runbook detects.

Example:
    >>> sorted(LINKED)
    ['add-legal-entity', 'maintenance', 'refresh-relink']

Usage: `set_up(connection, "maintenance")`; `refresh(Path(".dw/sandbox/refresh-relink"))`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dwlib import catalog
from dwlib.errors import SandboxError

from .state import Paths, Settings
from .store import utcnow

LINKED: dict[str, tuple[str, ...]] = {
    "refresh-relink": ("USMF", "GBSI"),
    "maintenance": ("USMF", "GBSI"),
    "add-legal-entity": ("USMF", "GBSI"),
}
MAP = "Customers V3 (accounts)"
REFRESH_KEY = "sandbox.refresh"  # kv: a refresh whose Power Platform integration is still to restore
PREPARED = "prepared.json"  # in the sandbox directory: set up (and refreshed) once


def prepared(root: Path) -> bool:
    """Whether the sandbox of `root` has had its history played."""
    return (root / PREPARED).exists()


def set_up(connection: Mapping[str, Any], profile: str, *, timeout: float = 300.0) -> list[str]:
    """Link the pair of `profile` and run `MAP` with its prerequisites (initial sync from F&O);
    returns one line per portal call. SandboxError when a call is refused or the maps do not run."""
    from . import control  # control starts sandboxes and calls this

    base = str(connection["dataverse_url"]).rsplit("/", 1)[0] + "/_portal"
    headers = {"X-Sandbox-Admin": Path(connection["admin_key_file"]).read_text().strip()}
    maps = catalog.dependency_order([MAP])
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/lcs/power-platform-integration", None),
        ("POST", "/lcs/dual-write/configure", None),
        ("POST", "/lcs/dual-write/link", {"legal_entities": list(LINKED[profile]), "start_maps": False}),
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
