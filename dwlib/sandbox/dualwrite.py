"""The sandbox's dual-write runtime: link, legal entities, table-map states, jobs and live sync.

One `DualWrite` per sandbox (`runtime_of(sbx)`), persisted in the store so it survives a restart:

- Power Platform integration link (`kv pp_link`, read by RetrieveFinanceAndOperationsIntegrationDetails)
  and the dual-write connection with its legal entities (at most 250; initial writes for at most 40);
- the table maps of `dwlib.catalog` and their states, Not running → Initializing → Running ⇄
  Paused → Resuming, with the documented refusals (edits only when Not running, Pause only from
  Running, no legal-entity edits during initial writes, …);
- initial-sync jobs (`dw_initial_sync`) as asyncio tasks, with a job history;
- live sync (`dw_live`) as a write hook: a committed write on one side is written to the other in
  the same transaction, or queued in order while the map is paused.

Portal (`portal.py`) and gateway (`gateway.py`) endpoints call the actions here; every action
returns a request record (`requestId`, `state` 1 Waiting / 2 Completed / 3 Error).

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
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any

from dwlib import catalog

from . import dmf, dw_live, dw_records, profiles
from .dw_initial_sync import JobLog, SyncScope, initial_sync
from .dw_limits import RuntimeLimits
from .prepare import REFRESH_KEY
from .schema import ENTITIES
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


class DualWrite:
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
        self._recover()

    # --- persistence ----------------------------------------------------------------------------

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

    # --- Power Platform integration and the connection ------------------------------------------

    def pp_link(self) -> dict[str, str] | None:
        """The Power Platform integration link (`{"Url","TenantId","Id"}`) or None."""
        return self.store.kv_get("pp_link")

    def setup_power_platform_integration(self) -> dict[str, str]:
        """LCS: Power Platform Integration > Setup. Links this Dataverse to the F&O environment."""
        link = {
            "Url": self.finops_url,
            "TenantId": self.settings.tenant_id,
            "Id": self.settings.finops_environment_id,
        }
        self.store.kv_set("pp_link", link)
        return link

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

    def configure(self) -> dict[str, Any]:
        """LCS: Dual-write application > Configure — installs the dual-write solutions and app users
        in Dataverse and applies the solutions (the table maps appear)."""
        if self.pp_link() is None:
            raise DualWriteError(
                "Power Platform Integration is not set up for this environment (Dataverse answers "
                "0x80048d0b 'Dataverse instance isn't integrated with finance and operations'): in LCS, "
                "Environment details > Power Platform Integration > Setup first.",
                409,
            )
        with self.store.transaction():
            added = profiles.install_dual_write_solutions(self.store)
            self.apply_solutions()
        return {"solutionsAdded": added, "maps": len(catalog.table_maps())}

    def apply_solutions(self) -> int:
        """Dual-write workspace: Apply Solution — the catalogue's maps appear in Dataverse."""
        with self.store.transaction():
            for m in catalog.table_maps():
                dw_records.write_entity_map(self.store, self.effective_map(m.name))
            conn = self.connection()
            if conn is not None:
                conn["solutionsApplied"] = True
                self.store.kv_set("dw.connection", conn)
            self.store.kv_set("dw.solutions_applied", True)
        return len(catalog.table_maps())

    def _finops_legal_entities(self) -> dict[str, dict[str, Any]]:
        return {r["LegalEntityId"].lower(): r for r in self.store.find(ENTITIES["LegalEntities"], {})}

    def _check_companies(self) -> None:
        """Companies with one name, or a blank name, make saving the connection set fail
        (initial-setup troubleshooting: "multiple legal entities/companies with the same name")."""
        seen: set[str] = set()
        for row in self.store.find(ENTITIES["cdm_companies"], {}):
            name = (row.get("cdm_name") or "").strip().lower()
            if not name or name in seen:
                raise DualWriteError(
                    "Saving connection set failed! An item with the same key has already been added.", 409
                )
            seen.add(name)

    def _companies_for(self, codes: Iterable[str]) -> list[str]:
        known = self._finops_legal_entities()
        wanted = list(dict.fromkeys(c.strip() for c in codes if c.strip()))
        missing = [c for c in wanted if c.lower() not in known]
        if missing:
            raise DualWriteError(
                f"legal entities {missing} do not exist in finance and operations "
                f"(it has {', '.join(sorted(r['LegalEntityId'] for r in known.values()))})",
                404,
            )
        return [known[c.lower()]["LegalEntityId"] for c in wanted]

    def _live_limit(self, count: int) -> None:
        limit = self.limits().live_sync_legal_entities
        if count > limit:
            raise DualWriteError(
                f"Live synchronization supports up to {limit} legal entities; the connection would have "
                f"{count}. Remove legal entities you don't need (sync-limits).",
                409,
            )

    def link(
        self, legal_entities: Iterable[str] | None = None, *, start_maps: bool | None = None
    ) -> dict[str, Any]:
        """LCS: Link to Power Platform environment — the connection with its legal entities.

        `legal_entities` defaults to every F&O legal entity ("the dual-write connection is created
        for all legal entities"); `start_maps` defaults to what the setup guidance says for the
        scenario (maps live for a new, empty F&O with DAT: profiles new-new and new-existing).
        Linking creates no `cdm_companies` row: the Legal entities (cdm_companies) map brings the
        companies ("Enable the Cdm_companies table map. This synchronizes companies from the Finance
        and Operations app to Dataverse", bootstrap FAQ), so starting the maps runs that map with its
        initial sync and the others skipping it (a new F&O has no other data to copy).
        """
        if not self.store.kv_get("dw.solutions_applied", False):
            self.configure()
        codes = self._companies_for(
            legal_entities
            if legal_entities is not None
            else [r["LegalEntityId"] for r in self._finops_legal_entities().values()]
        )
        self._live_limit(len(codes))
        self._check_companies()
        with self.store.transaction():
            old = self.connection()
            conn = {
                "cid": old["cid"] if old else str(uuid.uuid4()),
                "cname": old["cname"]
                if old
                else f"{self.settings.organization_id}-{self.settings.finops_environment_id}",
                "legalEntities": codes,
                "solutionsApplied": True,
                "linkedOn": utcnow(),
                "finopsUrl": self.finops_url,  # the environment linked: a move leaves it behind
            }
            self.store.kv_set("dw.connection", conn)
            dw_records.set_partitions(self.store, codes)
        if start_maps is None:
            start_maps = self.settings.profile in ("new-new", "new-existing")
        if start_maps:
            companies = catalog.dependency_order([COMPANIES_MAP])
            self.run(companies, initial_sync=True)
            others = [m.name for m in catalog.table_maps() if m.name not in companies]
            self.run(catalog.dependency_order(others, include_dependencies=False), initial_sync=False)
        return conn

    def _busy(self, states: Iterable[str], doing: str) -> None:
        for m in catalog.table_maps():
            state = self.map_record(m.name)["state"]
            if state in states:
                raise DualWriteError(
                    f"{doing} failed: table map '{m.name}' is {DISPLAY[state]}"
                    f"{' (initial writes)' if state == 'Initializing' else ''}; "
                    "try again when it has finished.",
                    409,
                )

    def add_legal_entities(
        self, codes: Iterable[str], *, skip_initial_writes: bool = False
    ) -> dict[str, Any]:
        """Environment details > Legal entities > Add legal entity.

        Unless skipped (or the list grows beyond 40), running and paused maps re-run the initial
        write for the new legal entities (jobs in the background).
        """
        conn = self._need_connection()
        new = [
            c
            for c in self._companies_for(codes)
            if c.lower() not in {x.lower() for x in conn["legalEntities"]}
        ]
        self._busy(("Initializing",), "Adding legal entities")
        total = len(conn["legalEntities"]) + len(new)
        self._live_limit(total)
        self._check_companies()
        with self.store.transaction():
            conn["legalEntities"] = [*conn["legalEntities"], *new]
            self.store.kv_set("dw.connection", conn)
            dw_records.set_partitions(self.store, conn["legalEntities"])
        writes = bool(new) and not skip_initial_writes and total <= self.limits().initial_sync_legal_entities
        if writes:
            maps = [
                m.name
                for m in catalog.table_maps()
                if self.map_record(m.name)["state"] in ("Running", "Paused")
            ]
            # One after the other, in dependency order: the Legal entities map writes the new
            # companies' cdm_companies rows, which the company-specific maps after it need.
            self._spawn(self._initial_writes(catalog.dependency_order(maps, include_dependencies=False), new))
        return {"added": new, "legalEntities": conn["legalEntities"], "initialWrites": writes}

    def remove_legal_entity(self, code: str) -> dict[str, Any]:
        """Environment details > Legal entities > remove one (refused during initial writes or pause)."""
        conn = self._need_connection()
        self._busy(("Initializing", "Paused"), "Removing a legal entity")
        kept = [c for c in conn["legalEntities"] if c.lower() != code.lower()]
        if len(kept) == len(conn["legalEntities"]):
            raise DualWriteError(f"legal entity {code!r} is not in the dual-write connection", 404)
        conn["legalEntities"] = kept
        self.store.kv_set("dw.connection", conn)
        dw_records.set_partitions(self.store, kept)
        return conn

    def reset(self, *, force: bool = False, legal_entities: Iterable[str] = ()) -> dict[str, Any]:
        """Reset link: all maps must be stopped unless `force`; clears the dual-write configuration,
        maps, legal-entity mapping and initial sync history; the maps need Apply Solution again."""
        conn = self._need_connection()
        running = [m.name for m in catalog.table_maps() if self.map_record(m.name)["state"] != "NotRunning"]
        if running and not force:
            raise DualWriteError(
                "You must stop all dual-write maps before Reset link (or select Force "
                f"Reset); still running: {', '.join(running)}.",
                409,
            )
        codes = self._companies_for(legal_entities)
        with self.store.transaction():
            dw_records.clear_configuration(self.store)
            for key in (*self.store.kv_keys("dw.map."), *self.store.kv_keys("dw.job.")):
                self.store.conn.execute("DELETE FROM _kv WHERE k = ?", (key,))
            self.store.conn.execute("DELETE FROM dw_queue")
            self.store.kv_set("dw.solutions_applied", False)
            # The connection set is restored from the Power Platform integration setup (reset.md).
            conn.update(legalEntities=codes, solutionsApplied=False, resetOn=utcnow(),
                        finopsUrl=self.finops_url)
            self.store.kv_set("dw.connection", conn)
        return conn

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

    def _need_maps(self) -> None:
        self._need_connection()
        if not self.store.kv_get("dw.solutions_applied", False):
            raise DualWriteError(
                "No table maps: apply the dual-write solutions first (Dual-write workspace > "
                "Apply Solution).",
                409,
            )

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

    def _scope(self, legal_entities: list[str], project: str) -> SyncScope:
        running = {
            m.name for m in catalog.table_maps() if self.map_record(m.name)["state"] in ("Running", "Paused")
        }
        return SyncScope(
            self.store,
            self.dataverse_url,
            self.limits(),
            legal_entities,
            running,
            project,
            on_company_created=lambda row: dw_records.company_owner(self.store, row),
            export_locale=dmf.package_locale(self.store, user_locale=self.settings.dmf_locale),
        )

    def _new_job(self, m: catalog.TableMap, rec: dict[str, Any]) -> JobLog:
        seq = self.store.kv_get("dw.job_seq", 0) + 1
        self.store.kv_set("dw.job_seq", seq)
        execution = f"{rec['project']}-{seq}"
        log = JobLog(execution, m.name, rec["master"], top=self.limits().top_errors)
        log.record["seq"] = seq
        return log

    def _save_job(self, m: catalog.TableMap, log: JobLog) -> None:
        rec = self.map_record(m.name)
        rec["lastJob"] = log.record["executionId"]
        self._save(rec)
        self.store.kv_set(f"dw.job.{log.record['executionId']}", log.record)
        if log.record["status"] != "Executing":
            # F&O's DMF job history shows it too (see dmf.py): the FinOps job name is the execution id.
            self.store.kv_set(f"dmf.job.{log.record['executionId']}", log.dmf_job())

    async def _initial_syncs(self, req: dict[str, Any], names: list[str]) -> None:
        first_error: str | None = None
        for name in names:
            m = self.effective_map(name)
            rec = self.map_record(name)
            log = self._new_job(m, rec)
            self._save_job(m, log)
            conn = self.connection() or {"legalEntities": []}
            try:
                ok = await initial_sync(self._scope(conn["legalEntities"], rec["project"]), m, log)
            except Exception as exc:  # a bug must not leave the map Initializing forever
                log.fail(f"Initial sync failed unexpectedly: {exc}")
                ok = False
            self._save_job(m, log)
            rec = self.map_record(name)
            if ok:
                self._set_state(
                    m, rec, "Running", f"initial sync completed ({log.record['upsertCount']} rows)"
                )
            else:
                self._set_state(
                    m, rec, "NotRunning", f"initial sync failed with {log.record['errorCount']} errors"
                )
                first_error = first_error or log.record["errors"][0]["errorMessage"]
        self._finish(req, first_error)

    async def _initial_writes(self, names: list[str], legal_entities: list[str]) -> None:
        for name in names:
            await self._initial_write(name, legal_entities)

    async def _initial_write(self, name: str, legal_entities: list[str]) -> None:
        m = self.effective_map(name)
        rec = self.map_record(name)
        log = self._new_job(m, rec)
        scope = self._scope(legal_entities, rec["project"])
        scope.running.add(m.name)  # the map itself runs; only its dependencies are checked
        await initial_sync(scope, m, log)
        self._save_job(m, log)

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

    # --- jobs -------------------------------------------------------------------------------------

    def jobs(self, name: str | None = None) -> list[dict[str, Any]]:
        """Initial-sync job history (newest first), optionally of one map."""
        wanted = self._map(name).name if name else None
        out = [self.store.kv_get(k) for k in self.store.kv_keys("dw.job.")]
        return sorted((j for j in out if wanted in (None, j["map"])), key=lambda j: j["seq"], reverse=True)

    def job(self, execution_id: str) -> dict[str, Any]:
        job = self.store.kv_get(f"dw.job.{execution_id}")
        if job is None:
            raise DualWriteError(f"unknown initial sync execution {execution_id!r}", 404)
        return job


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


def runtime_of(sbx: Any) -> DualWrite:
    """The sandbox's one runtime, created on first use and registered as a write hook."""
    if "dualwrite" not in sbx.extras:
        rt = DualWrite(sbx.store, sbx.settings, sbx.base_url)
        sbx.extras["dualwrite"] = rt
        sbx.extras.setdefault("write_hooks", []).append(lambda event: dw_live.on_write(rt, event))
    return sbx.extras["dualwrite"]
