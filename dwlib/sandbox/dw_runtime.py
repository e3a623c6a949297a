"""The dual-write runtime's vocabulary and its persisted records: map states, requests, tasks.

`RuntimeBase` holds what every part of the runtime (`dualwrite.DualWrite`) reads and writes: the
limits, each table map's runtime record (state, project, master, edits, activity) and its
effective map, the request records the portal and gateway poll, the background tasks, and the
connection as stored. The actions build on it: `dw_jobs` (initial-sync jobs), `dw_maps` (map
actions), `dw_connection` (Power Platform link, connection, legal entities).

Example:
    >>> STATES
    ('NotRunning', 'Initializing', 'Running', 'Paused', 'Resuming')
    >>> DISPLAY["NotRunning"]
    'Not running'
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

from dwlib import catalog

from . import dw_records
from .dw_limits import RuntimeLimits
from .state import Settings
from .store import Store, utcnow

STATES = ("NotRunning", "Initializing", "Running", "Paused", "Resuming")
DISPLAY = {
    "NotRunning": "Not running",
    "Initializing": "Initializing",
    "Running": "Running",
    "Paused": "Paused",
    "Resuming": "Resuming",
}
ACTIONS = {"start": "1", "stop": "4", "pause": "5", "resume": "6", "init": "8"}  # gateway action codes
REQUEST_WAITING, REQUEST_COMPLETED, REQUEST_ERROR = "1", "2", "3"
EDIT_REFUSED = (
    "Before you change table mappings, they must be stopped (not running). "
    "Otherwise, your changes won't be saved."
)
RESUME_MODES = ("catchup", "skip-preserve", "skip-discard")
COMPANIES_MAP = "Legal entities (cdm_companies)"  # the map that brings the companies to Dataverse
_KEEP_REQUESTS = 10
_KEEP_ACTIVITY = 50


@dataclasses.dataclass(frozen=True)
class RunChoice:
    """What Run does for one map: initial sync or not, and which side is master for conflicts.

    >>> RunChoice(initial_sync=False, master="finops").master
    'finops'
    """

    initial_sync: bool = True
    master: str = "dataverse"


class DualWriteError(Exception):
    """An action the runtime refuses, with the message a consultant would see; `status` is the
    HTTP status the portal and gateway answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

class RuntimeBase:
    """The records of the dual-write runtime over a sandbox store (see the module docstring)."""

    def __init__(self, store: Store, settings: Settings, base_url: str) -> None:
        self.store = store
        self.settings = settings
        self.base_url = base_url
        self.dataverse_url = f"{base_url}/dataverse"
        self.finops_url = f"{base_url}/finops"
        self._tasks: set[asyncio.Task[Any]] = set()
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS dw_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, map_id TEXT, "
            "origin TEXT, op TEXT, row TEXT, bytes INTEGER, queuedon TEXT)"
        )

    # --- persistence ----------------------------------------------------------------------------

    def limits(self) -> RuntimeLimits:
        """The documented limits, with the overrides a test set (`set_limits`)."""
        return RuntimeLimits.documented(**self.store.kv_get("dw.limits", {}))

    def set_limits(self, overrides: dict[str, int]) -> RuntimeLimits:
        """Override limits (tests use small numbers); `{}` restores the documented ones."""
        names = {f.name for f in dataclasses.fields(RuntimeLimits)}
        bad = [k for k, v in overrides.items() if k not in names or not isinstance(v, int) or v < 0]
        if bad:
            raise DualWriteError(
                f"unknown or invalid limits {bad}: use non-negative integers for {', '.join(sorted(names))}"
            )
        self.store.kv_set("dw.limits", dict(overrides))
        return self.limits()

    def map_record(self, name: str) -> dict[str, Any]:
        """The runtime record of a map: state, project, master, removed columns, requests, activity."""
        m = self._map(name)
        return self.store.kv_get(f"dw.map.{m.id}") or {
            "id": m.id,
            "name": m.name,
            "tid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dw-template:{m.id}")),
            "state": "NotRunning",
            "pid": None,
            "project": None,
            "master": "dataverse",
            "removed": [],
            "defaults": {},
            "lastJob": None,
            "requests": [],
            "activity": [],
            "pausedOn": None,
            "updatedOn": None,
        }

    def _save(self, rec: dict[str, Any]) -> None:
        rec["updatedOn"] = utcnow()
        self.store.kv_set(f"dw.map.{rec['id']}", rec)

    @staticmethod
    def _map(name: str) -> catalog.TableMap:
        try:
            return catalog.table_map(name)
        except catalog.CatalogError as exc:
            raise DualWriteError(str(exc), 404) from None

    def effective_map(self, name: str) -> catalog.TableMap:
        """The catalogue map as edited: without the column rows an edit removed, and with the
        Default value transforms an edit set (by F&O column)."""
        m = self._map(name)
        rec = self.map_record(m.name)
        removed = set(rec["removed"])
        defaults = rec.get("defaults") or {}
        if not removed and not defaults:
            return m
        rows = tuple(
            dataclasses.replace(r, default=defaults[r.finops]) if r.finops in defaults else r
            for r in m.mappings
            if r.dataverse not in removed
        )
        return dataclasses.replace(m, mappings=rows)

    def _set_state(self, m: catalog.TableMap, rec: dict[str, Any], state: str, event: str = "") -> None:
        rec["state"] = state
        rec["pausedOn"] = (
            utcnow()
            if state == "Paused" and rec.get("pausedOn") is None
            else (rec.get("pausedOn") if state in ("Paused", "Resuming") else None)
        )
        rec["activity"] = [*rec["activity"], {"time": utcnow(), "state": DISPLAY[state], "event": event}][
            -_KEEP_ACTIVITY:
        ]
        if rec["project"]:
            dw_records.set_status(self.store, rec["project"], state)
        self._save(rec)

    # --- requests -------------------------------------------------------------------------------

    def _request(self, action: str, maps: Sequence[dict[str, Any]]) -> dict[str, Any]:
        req = {
            "requestId": str(uuid.uuid4()),
            "action": ACTIONS[action],
            "state": REQUEST_WAITING,
            "errorMessage": None,
            "createdOn": utcnow(),
            "modifiedOn": utcnow(),
            "maps": [r["id"] for r in maps],
        }
        self.store.kv_set(f"dw.request.{req['requestId']}", req)
        for rec in maps:
            rec["requests"] = [*rec["requests"], req["requestId"]][-_KEEP_REQUESTS:]
            self._save(rec)
        return req

    def _finish(self, req: dict[str, Any], error: str | None = None) -> dict[str, Any]:
        req.update(
            state=REQUEST_ERROR if error else REQUEST_COMPLETED, errorMessage=error, modifiedOn=utcnow()
        )
        self.store.kv_set(f"dw.request.{req['requestId']}", req)
        return req

    def request(self, request_id: str) -> dict[str, Any]:
        """A request record by id (DualWriteError 404 when unknown)."""
        req = self.store.kv_get(f"dw.request.{request_id}")
        if req is None:
            raise DualWriteError(f"unknown request id {request_id!r}", 404)
        return req

    # --- tasks ----------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until no job or catch-up is running (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- the connection as stored --------------------------------------------------------------

    def pp_link(self) -> dict[str, str] | None:
        """The Power Platform integration link (`{"Url","TenantId","Id"}`) or None."""
        return self.store.kv_get("pp_link")

    def connection(self) -> dict[str, Any] | None:
        """The dual-write connection (`cid`, `cname`, `legalEntities`, `solutionsApplied`) or None."""
        return self.store.kv_get("dw.connection")

    def _need_connection(self) -> dict[str, Any]:
        conn = self.connection()
        if conn is None:
            raise DualWriteError(
                "Dual-write is not linked: in LCS, Environment details > Power Platform Integration > "
                "Dual-write application, select Configure, then Link to Power Platform environment.",
                409,
            )
        return conn

    def _need_maps(self) -> None:
        self._need_connection()
        if not self.store.kv_get("dw.solutions_applied", False):
            raise DualWriteError(
                "No table maps: apply the dual-write solutions first (Dual-write workspace > "
                "Apply Solution).",
                409,
            )
