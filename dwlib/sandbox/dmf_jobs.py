"""F&O data management (DMF) actions and jobs: `DmfService`, one per sandbox (`service_of`).

The actions (api-surface §4) are `POST {finops_url}/data/DataManagementDefinitionGroups/
Microsoft.Dynamics.DataEntities.{Action}` with a JSON body; `DmfService.call` implements them and
`finops.py` routes to it. Jobs run one at a time (one batch thread), as asyncio tasks that advance
in chunks, and persist in the store under `dmf.job.<executionId>`, so history survives a restart
and unfinished jobs resume. Exports write packages (`dmf_package.write_package`) to blobs
(`dmf_blobs`); imports read them and write each entity's rows (`dmf_import`).

`ImportFromPackage` "must not be called in parallel" (data-management-api.md): a new import is
refused while another import job is NotRun or Executing. `ExportToPackage` and
`GetExportedPackageUrl` answer the nested `{"value": {"value": …}}` of the documented samples.

Example:
    >>> outcome(0, 3)
    'Succeeded'
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from ..catalog.locales import Locale
from .context import Sandbox
from .dmf_blobs import BlobAuthError, Blobs
from .dmf_import import Importer
from .dmf_package import (
    CHUNK_ROWS,
    DMF_ENTITIES,
    DmfEntity,
    DmfError,
    PackageEntity,
    find_entity,
    package_locale,
    read_package,
    write_package,
)
from .schema import ENTITIES
from .store import Store, quote, read_sql, utcnow

ACTION_PREFIX = "Microsoft.Dynamics.DataEntities."
_TERMINAL = {"Succeeded", "PartiallySucceeded", "Failed", "Canceled"}
_GROUPS_KEY = "dmf.definition_groups"
_JOB_PREFIX = "dmf.job."
_IMPORT_RUNNING = {"NotRun", "Executing"}
log = logging.getLogger("dwlib.sandbox.dmf")


def nested(value: str) -> dict[str, str]:
    """The documented shape of ExportToPackage's and GetExportedPackageUrl's `value`.

    >>> nested("exec-1")
    {'value': 'exec-1'}
    """
    return {"value": value}


# --- definition groups (data projects) ------------------------------------------------------------


def seed_definition_groups(store: Store) -> int:
    """Create the data projects every F&O has here; returns how many.

    One `{Entity}-Export` and `{Entity}-Import` per DMF entity, plus `CustomerMaster-Export` /
    `-Import` with terms of payment, customer groups and Customers V3 in dependency order.

    >>> import tempfile, pathlib
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> seed_definition_groups(st) == 2 * len(DMF_ENTITIES) + 2
    True
    """
    groups: dict[str, Any] = {}
    for name in DMF_ENTITIES:
        for op in ("Export", "Import"):
            groups[f"{name}-{op}"] = {"operation": op, "entities": [name]}
    for op in ("Export", "Import"):
        groups[f"CustomerMaster-{op}"] = {"operation": op,
                                          "entities": ["PaymentTerms", "CustomerGroups", "CustomersV3"]}
    store.kv_set(_GROUPS_KEY, groups)
    return len(groups)


# --- the service ---------------------------------------------------------------------------------


def service_of(sbx: Sandbox) -> DmfService:
    """The sandbox's one DmfService (created on first use, kept in `sbx.extras["dmf"]`).

    service_of(sbx).call("Microsoft.Dynamics.DataEntities.GetExecutionSummaryStatus",
                         {"executionId": "x"})["value"]  → 'Unknown'
    """
    if "dmf" not in sbx.extras:
        sbx.extras["dmf"] = DmfService(sbx)
    svc: DmfService = sbx.extras["dmf"]
    return svc


def _blob_stem(execution_id: str) -> str:
    # Execution ids are free text; blob names are not.
    return hashlib.sha256(execution_id.encode()).hexdigest()[:20]


class DmfService:
    """The DMF actions and the job queue of one sandbox.

    Jobs run one after another (`NotRun` while queued), each in chunks of `CHUNK_ROWS` rows with
    `step_delay_s` between chunks, so clients see `Executing` and the server stays responsive.

    svc = service_of(sbx); svc.call(ACTION_PREFIX + "ExportToPackage", {...})
    """

    step_delay_s = 0.02
    max_errors = 10_000  # errors kept per job for GetExecutionErrors (all are counted)

    def __init__(self, sbx: Sandbox) -> None:
        self.sbx = sbx
        self.store = sbx.store
        self.blobs = Blobs(sbx.paths.blobs, sbx.paths.identity_key.read_bytes(), sbx.base_url)
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resumed = False
        self.actions: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {  # name → (type, handler)
            "GetAzureWriteUrl": ("Edm.String", self._get_azure_write_url),
            "ImportFromPackage": ("Edm.String", self._import_from_package),
            "ExportToPackage": ("Edm.String", self._export_to_package),
            "GetExportedPackageUrl": ("Edm.String", self._get_exported_package_url),
            "GetExecutionSummaryStatus": ("Microsoft.Dynamics.DataEntities.DMFExecutionSummaryStatus",
                                          self._get_execution_summary_status),
            "GetExecutionErrors": ("Edm.String", self._get_execution_errors),
            "GetImportStagingErrorFileUrl": ("Edm.String", self._get_import_staging_error_file_url),
        }

    # --- entry point ------------------------------------------------------------------------------

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run `action` (`Microsoft.Dynamics.DataEntities.<name>`) with JSON `body`; the response body.

        Raises DmfError (→ an F&O error response) for an unknown action or bad parameters.
        """
        self._resume()
        name = action.removeprefix(ACTION_PREFIX)
        entry = self.actions.get(name) if action.startswith(ACTION_PREFIX) else None
        if entry is None:
            raise DmfError(f"No action {action} on DataManagementDefinitionGroups: call "
                           f"{ACTION_PREFIX}<action> with one of {', '.join(self.actions)}.", 404)
        kind, handler = entry
        return {"@odata.context": f"{self.sbx.finops_url}/data/$metadata#{kind}", "value": handler(body)}

    # --- actions ----------------------------------------------------------------------------------

    def _get_azure_write_url(self, body: dict[str, Any]) -> str:
        name = _param(body, "uniqueFileName")
        try:
            url = self.blobs.url(name, "rw")
        except BlobAuthError:
            raise DmfError(f"uniqueFileName {name!r} is not a valid blob name: use letters, digits, '.', '-' "
                           "and '_'.") from None
        # Double-encoded, as the real action returns it: the value is a JSON document as a string.
        return json.dumps({"BlobId": "{" + str(uuid.uuid4()).upper() + "}", "BlobUrl": url})

    def _import_from_package(self, body: dict[str, Any]) -> str:
        name = self.blobs.name_of(_param(body, "packageUrl"))
        group = _param(body, "definitionGroupId")
        if body.get("execute", True) is not True:
            raise DmfError("execute=false (staging only) is not emulated by the sandbox: send execute true.")
        company = self._company(body)
        execution_id, fresh = self._execution_id(body, "Import", group, company, reexecute=False)
        if fresh:
            self._refuse_parallel_import()
            self._start(self._new_job(execution_id, "Import", group, company, package=name))
        return execution_id

    def _refuse_parallel_import(self) -> None:
        """ImportFromPackage runs in a batch and "must not be called in parallel": refuse a new
        import while another one is queued or running (the wording is the sandbox's)."""
        for key in self.store.kv_keys(_JOB_PREFIX):
            job = self.store.kv_get(key)
            if job["operation"] == "Import" and job["status"] in _IMPORT_RUNNING:
                raise DmfError(
                    f"Another import is in progress: job {job['executionId']} of data project "
                    f"{job['definitionGroupId']} is {job['status']}. ImportFromPackage must not be called "
                    "in parallel; call it again when that job has finished.")

    def _export_to_package(self, body: dict[str, Any]) -> dict[str, str]:
        group = _param(body, "definitionGroupId")
        project = self.groups().get(group)
        if project is None or project["operation"] != "Export":
            known = sorted(g for g, p in self.groups().items() if p["operation"] == "Export")
            raise DmfError(f"Export data project {group} does not exist: create it in Data management, or "
                           f"use one of {', '.join(known)}.")
        package_name = _param(body, "packageName")
        company = self._company(body)
        execution_id, fresh = self._execution_id(body, "Export", group, company,
                                                 reexecute=bool(body.get("reExecute", False)))
        if fresh:
            self._start(self._new_job(execution_id, "Export", group, company,
                                      package=f"export-{_blob_stem(execution_id)}.zip",
                                      package_name=package_name))
        return nested(execution_id)

    def _get_exported_package_url(self, body: dict[str, Any]) -> dict[str, str]:
        job = self.job(_param(body, "executionId"))
        if job is None or job["operation"] != "Export" or job["status"] != "Succeeded":
            return nested("")
        return nested(self.blobs.url(job["package"], "r"))

    def _get_execution_summary_status(self, body: dict[str, Any]) -> str:
        job = self.job(_param(body, "executionId"))
        return "Unknown" if job is None else str(job["status"])

    def _get_execution_errors(self, body: dict[str, Any]) -> str:
        job = self.job(_param(body, "executionId"))
        return json.dumps([] if job is None else job["errors"])

    def _get_import_staging_error_file_url(self, body: dict[str, Any]) -> str:
        job = self.job(_param(body, "executionId"))
        dmf = find_entity(_param(body, "entityName"))
        if job is None or dmf is None:
            return ""
        name = _error_file(job["executionId"], dmf)
        return self.blobs.url(name, "r") if self.blobs.path(name).is_file() else ""

    # --- projects, jobs -----------------------------------------------------------------------------

    def groups(self) -> dict[str, Any]:
        """The data projects: name → {"operation": "Export"|"Import", "entities": [entity sets]}."""
        groups: dict[str, Any] = self.store.kv_get(_GROUPS_KEY, {})
        return groups

    def job(self, execution_id: str) -> dict[str, Any] | None:
        """The persisted state of a job (see docs/sandbox.md), or None."""
        job: dict[str, Any] | None = self.store.kv_get(_JOB_PREFIX + execution_id)
        return job

    def _save(self, job: dict[str, Any]) -> None:
        self.store.kv_set(_JOB_PREFIX + job["executionId"], job)

    def _company(self, body: dict[str, Any]) -> str:
        code = str(body.get("legalEntityId") or "DAT").upper()
        if not self.store.find(ENTITIES["LegalEntities"], {"LegalEntityId": code}, limit=1):
            raise DmfError(f"Legal entity {code} does not exist: use a LegalEntityId of /data/LegalEntities.")
        return code

    def _execution_id(self, body: dict[str, Any], operation: str, group: str, company: str,
                      reexecute: bool) -> tuple[str, bool]:
        """The job's id, and whether a job starts: a repeated start of a job that exists (same
        operation, project and company — a client repeating a start whose answer it lost) returns
        its id without a second job; re-executing a finished job runs it again under the same id."""
        execution_id = str(body.get("executionId") or "")
        if not execution_id:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
            return f"{group}-{stamp}-{str(uuid.uuid4()).upper()}", True
        old = self.job(execution_id)
        if old is None:
            return execution_id, True
        if (old["operation"], old["definitionGroupId"], old["legalEntityId"]) != (operation, group, company):
            raise DmfError(f"Execution {execution_id} already exists for {old['operation']} of "
                           f"{old['definitionGroupId']} in {old['legalEntityId']}: pass a new executionId "
                           "(or none to get one).")
        return execution_id, reexecute and old["status"] in _TERMINAL

    def _new_job(
        self, execution_id: str, operation: str, group: str, company: str, **extra: Any
    ) -> dict[str, Any]:
        job = {"executionId": execution_id, "operation": operation, "definitionGroupId": group,
               "legalEntityId": company, "status": "NotRun", "createdOn": utcnow(), "startedOn": None,
               "finishedOn": None, "entities": {}, "errorCount": 0, "errors": [], **extra}
        self._save(job)
        return job

    def _resume(self) -> None:
        """After a restart: queue again the jobs that had not finished (needs the running loop)."""
        if self._resumed:
            return
        self._resumed = True
        for key in self.store.kv_keys(_JOB_PREFIX):
            job = self.store.kv_get(key)
            if job["status"] not in _TERMINAL:
                job.update(status="NotRun", entities={}, errors=[], errorCount=0, startedOn=None)
                self._save(job)
                self._start(job)

    def _start(self, job: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job["executionId"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, execution_id: str) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        await asyncio.sleep(self.step_delay_s)
        async with self._lock:
            job = self.job(execution_id)
            if job is None:
                return
            job.update(status="Executing", startedOn=utcnow())
            self._save(job)
            try:
                steps = self._import(job) if job["operation"] == "Import" else self._export(job)
                for _ in steps:
                    self._save(job)
                    await asyncio.sleep(self.step_delay_s)
                done = sum(s.get("created", 0) + s.get("updated", 0) + s.get("exported", 0)
                           for s in job["entities"].values())
                job["status"] = outcome(job["errorCount"], done)
            except DmfError as exc:
                self._error(job, "", 0, "", exc.message)
                job["status"] = "Failed"
            except Exception as exc:  # a bug must not leave the job Executing for ever
                log.exception("DMF job %s failed", execution_id)
                self._error(job, "", 0, "", f"The job stopped on an unexpected error: {exc!r}")
                job["status"] = "Failed"
            job["finishedOn"] = utcnow()
            self._save(job)

    def _locale(self) -> Locale:
        return package_locale(self.store, user_locale=self.sbx.settings.dmf_locale)

    def _error(self, job: dict[str, Any], entity: str, line: int, key: str, message: str) -> None:
        job["errorCount"] += 1
        if len(job["errors"]) < self.max_errors:
            job["errors"].append({"EntityName": entity, "LineNumber": line, "RecordKey": key,
                                  "ErrorMessage": message})

    # --- export ---------------------------------------------------------------------------------------

    def _export(self, job: dict[str, Any]) -> Iterator[None]:
        group = job["definitionGroupId"]
        project = self.groups().get(group)
        if project is None:
            raise DmfError(f"Export data project {group} was deleted while the job waited.")
        parts = [(DMF_ENTITIES[name], self._rows(DMF_ENTITIES[name], job["legalEntityId"]))
                 for name in project["entities"]]
        job["entities"] = {d.label: {"status": "Executing", "exported": 0} for d, _ in parts}
        loc = self._locale()
        for d, written in write_package(self.blobs.path(job["package"]), group, parts, loc):
            job["entities"][d.label]["exported"] = written
            yield
        for stats in job["entities"].values():
            stats["status"] = "Succeeded"

    def _rows(self, d: DmfEntity, company: str) -> Iterator[list[Any]]:
        """Rows of `d` for `company` in key order, read by key ranges (no cursor held across steps)."""
        (key,) = [k for k in d.entity.key if k != "dataAreaId"]
        cols = ", ".join(f"{read_sql(d.entity, c)} AS {quote(c)}" for c in d.columns)
        where, params = ("", [])
        if d.company_specific:
            where, params = f"{quote('dataAreaId')} = ? AND ", [company.lower()]
        last = ""
        while rows := self.store.query(
            f"SELECT {cols} FROM {quote(d.entity.table)} WHERE {where}{quote(key)} > ? ORDER BY {quote(key)} "
            f"LIMIT {CHUNK_ROWS}", [*params, last]):
            yield from (list(r) for r in rows)
            last = rows[-1][key]

    # --- import ---------------------------------------------------------------------------------------

    def _import(self, job: dict[str, Any]) -> Iterator[None]:
        path = self.blobs.path(job["package"])
        if not path.is_file():
            raise DmfError(f"The package {job['package']} was not found: PUT it to the URL GetAzureWriteUrl "
                           "returned before calling ImportFromPackage.")
        _, entities = read_package(path.read_bytes())
        groups = self.groups()
        if job["definitionGroupId"] not in groups:
            # As F&O does, an import creates its data project from the package.
            groups[job["definitionGroupId"]] = {"operation": "Import",
                                                "entities": [p.dmf.entity.name for p in entities]}
            self.store.kv_set(_GROUPS_KEY, groups)
        for pe in entities:
            stats: dict[str, Any] = {"status": "Executing", "staged": len(pe.rows), "created": 0,
                                     "updated": 0, "errors": 0}
            job["entities"][pe.dmf.label] = stats
            failed: list[tuple[int, list[str], str]] = []
            importer = Importer(self.sbx, pe, job["legalEntityId"].lower(), self._locale())
            for start in range(0, len(pe.rows), CHUNK_ROWS):
                for line, row, message, key in importer.chunk(start, CHUNK_ROWS, stats):
                    self._error(job, pe.dmf.label, line, key, message)
                    failed.append((line, row, message))
                yield
            if failed:
                self._write_error_file(job["executionId"], pe, failed)
            stats["status"] = outcome(stats["errors"], stats["created"] + stats["updated"])

    def _write_error_file(
        self, execution_id: str, pe: PackageEntity, failed: list[tuple[int, list[str], str]]
    ) -> None:
        """The staging error file: the rows that failed, as uploaded, with line and message."""
        buf = io.StringIO(newline="")
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow([*pe.fields, "LINENUMBER", "ERRORMESSAGE"])
        out.writerows([*row, line, message] for line, row, message in failed)
        data = b"\xff\xfe" + buf.getvalue().encode("utf-16-le")  # CSV-Unicode, as uploaded
        self.blobs.path(_error_file(execution_id, pe.dmf)).write_bytes(data)


def _error_file(execution_id: str, dmf: DmfEntity) -> str:
    return f"errors-{_blob_stem(execution_id)}-{dmf.target}.csv"


def outcome(errors: int, done: int) -> str:
    """The summary status of a finished job (or entity) from its error and success counts.

    >>> outcome(0, 5), outcome(2, 5), outcome(2, 0)
    ('Succeeded', 'PartiallySucceeded', 'Failed')
    """
    if not errors:
        return "Succeeded"
    return "PartiallySucceeded" if done else "Failed"


def _param(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise DmfError(f"The parameter {name} is missing or empty: send it as a string in the JSON body.")
    return value
