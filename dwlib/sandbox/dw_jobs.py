"""The dual-write runtime's initial-sync jobs: run in the background, with a job history.

Each job is `dw_initial_sync.initial_sync` over the connection's legal entities; its log is kept
under `dw.job.<executionId>` and, once finished, in F&O's DMF job history (`dmf.job.<id>`).
"""

from __future__ import annotations

from typing import Any

from dwlib import catalog

from . import dmf_package, dw_records
from .dw_initial_sync import JobLog, SyncScope, initial_sync
from .dw_runtime import DualWriteError, RuntimeBase


class InitialSyncJobs(RuntimeBase):
    """Initial syncs (Run with initial sync) and initial writes (legal entities added), and their history."""

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
            export_locale=dmf_package.package_locale(self.store, user_locale=self.settings.dmf_locale),
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
            # F&O's DMF job history shows it too (see dmf_jobs.py): the FinOps job name is the execution id.
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
