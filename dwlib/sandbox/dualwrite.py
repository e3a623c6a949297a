"""The sandbox's dual-write runtime: link, legal entities, table-map states, jobs and live sync.

One `DualWrite` per sandbox (`runtime_of(sbx)`), persisted in the store so it survives a restart.
The class is assembled from one layer per concern, each in its module:

- `dw_runtime.RuntimeBase`: the vocabulary (map states, request states, gateway action codes),
  the limits, each map's runtime record, request records and background tasks;
- `dw_jobs.InitialSyncJobs`: initial-sync jobs (`dw_initial_sync`) as asyncio tasks, with a history;
- `dw_maps.MapActions`: the table maps of `dwlib.catalog` and their states, Not running →
  Initializing → Running ⇄ Paused → Resuming, with the documented refusals (edits only when Not
  running, Pause only from Running, …);
- `dw_connection.ConnectionActions`: the Power Platform integration link (`kv pp_link`, read by
  RetrieveFinanceAndOperationsIntegrationDetails) and the dual-write connection with its legal
  entities (at most 250; initial writes for at most 40; no legal-entity edits during initial writes);
- here: recovery after a restart, and live sync (`dw_live`) registered as a write hook: a
  committed write on one side is written to the other in the same transaction, or queued in order
  while the map is paused.

Portal (`portal.py`) and gateway (`gateway.py`) endpoints call the actions here; every action
returns a request record (`requestId`, `state` 1 Waiting / 2 Completed / 3 Error).
"""

from __future__ import annotations

from typing import Any

from dwlib import catalog

from . import dw_live
from .dw_connection import ConnectionActions
from .prepare import REFRESH_KEY
from .state import Settings
from .store import Store


class DualWrite(ConnectionActions):
    """The dual-write runtime over a sandbox store (see the module docstring).

    Example:
        >>> import tempfile, pathlib
        >>> from dwlib.sandbox import profiles
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> settings = Settings(profile="new-new", rows=0); _ = profiles.seed(st, settings)
        >>> dw = DualWrite(st, settings, "https://127.0.0.1:1")
        >>> dw.map_record("Customers V3 (accounts)")["state"]
        'NotRunning'
    """
    def __init__(self, store: Store, settings: Settings, base_url: str) -> None:
        super().__init__(store, settings, base_url)
        self._recover()

    def _recover(self) -> None:
        """Jobs and catch-ups do not survive a restart: say so, and leave maps in a state with actions.
        After a database refresh (`prepare.refresh`) the Power Platform integration names this
        environment again: lifecycle actions do not affect it (environment-lifecycle-database-movements)."""
        if self.store.kv_get(REFRESH_KEY) is not None:
            with self.store.transaction():
                if self.pp_link() is not None:
                    self.setup_power_platform_integration()
                self.store.kv_set(REFRESH_KEY, None)
        for m in catalog.table_maps():
            rec = self.map_record(m.name)
            if rec["state"] == "Initializing":
                self._set_state(m, rec, "NotRunning", "initial sync interrupted by a sandbox restart")
            elif rec["state"] == "Resuming":
                self._set_state(m, rec, "Paused", "catch-up interrupted by a sandbox restart: resume again")


def runtime_of(sbx: Any) -> DualWrite:
    """The sandbox's one runtime, created on first use and registered as a write hook."""
    if "dualwrite" not in sbx.extras:
        rt = DualWrite(sbx.store, sbx.settings, sbx.base_url)
        sbx.extras["dualwrite"] = rt
        sbx.extras.setdefault("write_hooks", []).append(lambda event: dw_live.on_write(rt, event))
    return sbx.extras["dualwrite"]
