"""The dual-write runtime's table-map actions: init, run, stop, pause, resume, edit.

Not running → Initializing → Running ⇄ Paused → Resuming, with the documented refusals (edits only
when Not running, Pause only from Running, …); every action returns a request record.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dwlib import catalog

from . import dw_live, dw_records
from .dw_jobs import InitialSyncJobs
from .dw_runtime import DISPLAY, EDIT_REFUSED, RESUME_MODES, DualWriteError, RunChoice


class MapActions(InitialSyncJobs):
    """The table map list and the actions on maps (see the module docstring)."""

    # --- table maps -----------------------------------------------------------------------------

    def maps(self) -> list[dict[str, Any]]:
        """Every map with its state and last initial-sync job (the dual-write table map list)."""
        applied = self.store.kv_get("dw.solutions_applied", False)
        return [self.map_view(m.name) for m in catalog.table_maps()] if applied else []

    def map_view(self, name: str) -> dict[str, Any]:
        rec = self.map_record(name)
        m = self.effective_map(name)
        return {
            **rec,
            "displayState": DISPLAY[rec["state"]],
            "lookups": m.lookup_count,
            "related": catalog.related_maps(m.name),
        }

    def _ensure_project(self, m: catalog.TableMap, rec: dict[str, Any]) -> None:
        if rec["pid"] is None:
            conn = self._need_connection()
            pid = rec["pid"] = str(uuid.uuid4())
            rec["project"] = f"DWM-{conn['cid']}-{pid}"
            dw_records.create_project(self.store, m, rec["project"], pid, self.dataverse_url,
                                      conn["legalEntities"])
            self._save(rec)

    def init(self, names: Sequence[str]) -> dict[str, Any]:
        """Create the projects of maps that have none (gateway action 8)."""
        self._need_maps()
        recs = [self.map_record(n) for n in names]
        req = self._request("init", recs)
        with self.store.transaction():
            for n, rec in zip(names, recs, strict=True):
                self._ensure_project(self._map(n), rec)
        return self._finish(req)

    def run(
        self,
        names: Sequence[str],
        *,
        initial_sync: bool = True,
        master: str = "dataverse",
        choices: Mapping[str, RunChoice] | None = None,
    ) -> dict[str, Any]:
        """Run maps in the given order (Run dialog: selected map and related maps).

        Not running maps start (with an initial sync unless skipped, `master` deciding conflicts;
        `choices` give a map its own, by name, as the gateway's per-map `parameters` do), Paused
        maps resume, Running maps are left alone; Initializing or Resuming maps refuse.
        """
        default = RunChoice(initial_sync, master)
        picked = {self._map(n).name: c for n, c in (choices or {}).items()}
        for choice in (default, *picked.values()):
            if choice.master not in ("dataverse", "finops"):
                raise DualWriteError(f"master must be 'dataverse' or 'finops', not {choice.master!r}")
        self._need_maps()
        maps = [self._map(n) for n in dict.fromkeys(names)]
        recs = [self.map_record(m.name) for m in maps]
        for m, rec in zip(maps, recs, strict=True):
            if rec["state"] in ("Initializing", "Resuming"):
                raise DualWriteError(
                    f"Run is not available for '{m.name}': it is {DISPLAY[rec['state']]}.", 409
                )
        resume = [m.name for m, rec in zip(maps, recs, strict=True) if rec["state"] == "Paused"]
        start = [(m, rec) for m, rec in zip(maps, recs, strict=True) if rec["state"] == "NotRunning"]
        req = self._request("start", [rec for _, rec in start])
        syncing = []
        with self.store.transaction():
            for m, rec in start:
                choice = picked.get(m.name, default)
                self._ensure_project(m, rec)
                rec["master"] = choice.master
                if choice.initial_sync:
                    syncing.append(m.name)
                    self._set_state(m, rec, "Initializing", f"run with initial sync, master {choice.master}")
                else:
                    self._set_state(m, rec, "Running", "run, initial sync skipped")
        if resume:
            self.resume(resume)
        if syncing:
            self._spawn(self._initial_syncs(req, syncing))
            return req
        return self._finish(req)

    def stop(self, names: Sequence[str]) -> dict[str, Any]:
        """Stop Running maps (Stop is available only when a map is Running)."""
        return self._switch(names, "stop", "NotRunning", "stopped")

    def pause(self, names: Sequence[str]) -> dict[str, Any]:
        """Pause Running maps; if one selected map isn't Running, none pauses."""
        return self._switch(names, "pause", "Paused", "paused: new writes are queued")

    def _switch(self, names: Sequence[str], action: str, state: str, event: str) -> dict[str, Any]:
        """Move Running maps to `state` in one request (all or none)."""
        recs = self._only(names, "Running", action.capitalize())
        req = self._request(action, recs)
        with self.store.transaction():
            for rec in recs:
                self._set_state(self._map(rec["name"]), rec, state, event)
        return self._finish(req)

    def resume(
        self, names: Sequence[str], mode: str = "catchup", modes: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Resume Paused maps: catch up the queue in order (default), or skip to live sync
        preserving the queued records as catch-up errors for retry, or discarding them; `modes`
        give a map its own mode, by name."""
        picked = {self._map(n).name: m for n, m in (modes or {}).items()}
        for chosen in (mode, *picked.values()):
            if chosen not in RESUME_MODES:
                raise DualWriteError(f"resume mode must be one of {', '.join(RESUME_MODES)}, not {chosen!r}")
        recs = self._only(names, "Paused", "Resume")
        req = self._request("resume", recs)
        with self.store.transaction():
            for rec in recs:
                m = self._map(rec["name"])
                chosen = picked.get(rec["name"], mode)
                if chosen == "catchup":
                    self._set_state(m, rec, "Resuming", "resuming: catching up queued records")
                    self._spawn(dw_live.catch_up(self, m.name))
                else:
                    dw_live.drop_queue(self, m.name, keep_as_errors=chosen == "skip-preserve")
                    self._set_state(m, rec, "Running", f"skipped to live synchronization ({chosen})")
        return self._finish(req)

    def _only(self, names: Sequence[str], state: str, action: str) -> list[dict[str, Any]]:
        self._need_maps()
        recs = [self.map_record(n) for n in dict.fromkeys(names)]
        wrong = [r for r in recs if r["state"] != state]
        if wrong:
            listed = ", ".join(f"'{r['name']}' is {DISPLAY[r['state']]}" for r in wrong)
            raise DualWriteError(
                f"{action} is available only for {DISPLAY[state]} maps: {listed}. No map was changed.", 409
            )
        return recs

    def edit(
        self,
        name: str,
        *,
        remove: Iterable[str] = (),
        restore: Iterable[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Edit a map's column rows; only when Not running ("Customizing mappings").

        `remove` / `restore` column rows by Dataverse column; `defaults` sets the Default value
        transform of column rows by F&O column (case-insensitive), the value written to F&O when
        the Dataverse value is empty; a value None or "" removes the transform.
        """
        m = self._map(name)
        rec = self.map_record(m.name)
        if rec["state"] != "NotRunning":
            raise DualWriteError(EDIT_REFUSED, 409)
        mapped = {r.dataverse for r in m.mappings if r.dataverse}
        keys = set(m.integration_key)
        removing, restoring = set(remove), set(restore)
        bad = sorted((removing | restoring) - mapped)
        if bad:
            raise DualWriteError(f"{m.name} has no column rows for {bad}")
        if removing & keys:
            raise DualWriteError(f"integration key columns {sorted(removing & keys)} cannot be removed")
        rec["removed"] = sorted((set(rec["removed"]) | removing) - restoring)
        rec["defaults"] = _merge_defaults(m, rec.get("defaults") or {}, defaults or {})
        with self.store.transaction():
            self._save(rec)
            dw_records.write_entity_map(self.store, self.effective_map(m.name))
        return self.map_view(m.name)


def _merge_defaults(m: catalog.TableMap, old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`old` Default transforms with `new` applied, keyed by the catalogue's F&O column names; only
    column rows that write F&O from a Dataverse column can take one."""
    columns = {r.finops.lower(): r.finops for r in m.mappings if r.finops and r.dataverse and r.to_finops}
    bad = sorted(c for c in new if c.lower() not in columns)
    if bad:
        raise DualWriteError(
            f"{m.name} has no column rows writing F&O columns {bad} from Dataverse; "
            f"use one of {', '.join(sorted(columns.values()))}"
        )
    out = dict(old)
    for column, value in new.items():
        if value in (None, ""):
            out.pop(columns[column.lower()], None)
        else:
            out[columns[column.lower()]] = value
    return out
