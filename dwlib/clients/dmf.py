"""F&O data management (DMF) package API: export and import flows polled to a terminal state.

Export: `ExportToPackage` → poll `GetExecutionSummaryStatus` → `GetExportedPackageUrl` → download.
Import: `GetAzureWriteUrl` → upload (PUT, BlockBlob) → `ImportFromPackage` → poll. A job that ends
`Failed` or `Canceled` (or does not end in time) raises `DmfError` with the job's own errors.
Blob transfers use a client without the F&O token (the URLs are signed); signatures never reach
the journal.

Starting a job is a POST the HTTP stack does not repeat (it would start a second job). The client
chooses the `executionId` instead, so a start that failed on the way (429/503/504, honouring
`Retry-After`, or a lost connection) is settled by asking `GetExecutionSummaryStatus`
(`dwlib.clients.once`): `Unknown` (no such job) or `NotRun` (queued, or not there) → start again,
which DMF answers with the same id for a job it has; any other status → the job exists, carry on.
Attempts and time are bounded by the stack's own budget (the F&O client's `retry`).

Example:
    >>> # dmf = DmfClient(finops, blob_http)
    >>> # path = dmf.export_package("Customers export", Path("customers.zip"), legal_entity="USMF")
    >>> # status = dmf.import_package(Path("customers.zip"), "Customers import", legal_entity="USMF")
    >>> sorted(TERMINAL)
    ['Canceled', 'Failed', 'PartiallySucceeded', 'Succeeded']
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .errors import ClientError, DmfError, connection_lost
from .finops import FinOpsClient
from .http import redact_url
from .once import send_once

TERMINAL = frozenset({"Succeeded", "PartiallySucceeded", "Failed", "Canceled"})
_FAILED = frozenset({"Failed", "Canceled"})
_ACTION = "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities.{}"


class DmfClient:
    """The package API of one F&O environment; `blob_http` is a stack client without auth.

    >>> # dmf = DmfClient(session.finops, make_client(config, journal), poll_s=5)
    >>> # dmf.wait(dmf.start_export("CustomerGroups-Export", "groups", legal_entity="USMF"))
    """

    def __init__(
        self,
        finops: FinOpsClient,
        blob_http: httpx.Client,
        *,
        poll_s: float = 2.0,
        timeout_s: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.finops = finops
        self.blob_http = blob_http
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._sleep = sleep

    # --- actions -----------------------------------------------------------------------------------

    def _action(self, name: str, body: dict[str, Any], *, safe: bool) -> Any:
        return self.finops.action(_ACTION.format(name), body, safe=safe)

    def start_export(self, definition_group: str, package_name: str, *, legal_entity: str,
                     execution_id: str = "", re_execute: bool = False) -> str:
        """`ExportToPackage`: start an export of a data project; returns the execution id (a new
        one when not given). Safe against lost answers (see the module docstring)."""
        return self._start("ExportToPackage", {
            "definitionGroupId": definition_group, "packageName": package_name,
            "executionId": execution_id or new_execution_id(definition_group), "reExecute": re_execute,
            "legalEntityId": legal_entity,
        }, re_execute=re_execute)

    def start_import(self, package_url: str, definition_group: str, *, legal_entity: str,
                     execution_id: str = "", overwrite: bool = False) -> str:
        """`ImportFromPackage` (execute=true): start importing an uploaded package; the execution id
        (a new one when not given). Safe against lost answers (see the module docstring)."""
        return self._start("ImportFromPackage", {
            "packageUrl": package_url, "definitionGroupId": definition_group,
            "executionId": execution_id or new_execution_id(definition_group), "execute": True,
            "overwrite": overwrite, "legalEntityId": legal_entity,
        })

    def _start(self, action: str, body: dict[str, Any], *, re_execute: bool = False) -> str:
        """Start a job once: repeat the start only while DMF does not have the job running."""
        execution_id = str(body["executionId"])
        seen = ["Unknown"]  # the last status DMF gave for the id

        def landed() -> str | None:
            seen[0] = status = self.status(execution_id)
            # NotRun: queued, or no job at all; a re-execution of a finished job may not have started
            waiting = status in ("Unknown", "NotRun") or (re_execute and status in TERMINAL)
            return None if waiting else execution_id

        def gave_up(attempts: int, failure: ClientError) -> DmfError:
            return DmfError(f"{action} did not start job {execution_id} in {attempts} attempts: {failure}",
                            execution_id=execution_id, status=seen[0],
                            fix="F&O is busy or unreachable: run the step again later (a new job id is "
                                "used; a job still NotRun under this one shows in Data management > Job "
                                "history), or raise options.http.retry_attempts / retry_total_s")

        return send_once(lambda: str(self._action(action, body, safe=False) or execution_id), landed,
                         budget=self.finops.retry, gave_up=gave_up, sleep=self._sleep)

    def status(self, execution_id: str) -> str:
        """`GetExecutionSummaryStatus`: Unknown, NotRun, Executing, Succeeded, PartiallySucceeded, …"""
        return str(self._action("GetExecutionSummaryStatus", {"executionId": execution_id}, safe=True))

    def execution_errors(self, execution_id: str) -> list[str]:
        """`GetExecutionErrors`, one readable line per error."""
        value = self._action("GetExecutionErrors", {"executionId": execution_id}, safe=True)
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else []
        return [_error_line(e) for e in value or []]

    def exported_package_url(self, execution_id: str) -> str:
        """`GetExportedPackageUrl` (empty until the package exists)."""
        return str(self._action("GetExportedPackageUrl", {"executionId": execution_id}, safe=True) or "")

    def write_url(self, unique_file_name: str) -> str:
        """`GetAzureWriteUrl`: a signed URL to upload a package to (the value is JSON in a string)."""
        value = self._action("GetAzureWriteUrl", {"uniqueFileName": unique_file_name}, safe=True)
        return str(json.loads(value)["BlobUrl"])

    # --- waiting -----------------------------------------------------------------------------------

    def wait(self, execution_id: str, *, on_status: Callable[[str], None] | None = None,
             timeout_s: float | None = None) -> str:
        """Poll until the job ends; returns Succeeded or PartiallySucceeded, raises `DmfError` otherwise."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        last = ""
        while True:
            status = self.status(execution_id)
            if status != last and on_status is not None:
                on_status(status)
            last = status
            if status in TERMINAL:
                break
            if time.monotonic() >= deadline:
                raise DmfError(f"DMF job {execution_id} did not finish in {timeout_s or self.timeout_s:g} s",
                               execution_id=execution_id, status=status,
                               fix="look at the job in Data management > Job history; wait longer with "
                                   "timeout_s, or re-run (steps check what was done)")
            self._sleep(self.poll_s)
        if status in _FAILED:
            raise DmfError(f"DMF job {execution_id} ended {status}", execution_id=execution_id, status=status,
                           errors=self.execution_errors(execution_id),
                           fix="fix the rows named in the errors (Data management > Job history shows all), "
                               "then run the job again")
        return status

    # --- flows -------------------------------------------------------------------------------------

    def export_package(self, definition_group: str, dest: Path, *, legal_entity: str,
                       on_status: Callable[[str], None] | None = None) -> Path:
        """Export a data project and download its package to `dest`; returns `dest`."""
        execution_id = self.start_export(definition_group, dest.stem, legal_entity=legal_entity)
        self.wait(execution_id, on_status=on_status)
        deadline = time.monotonic() + self.timeout_s
        while not (url := self.exported_package_url(execution_id)):  # may lag the final status
            if time.monotonic() >= deadline:
                raise DmfError(f"DMF job {execution_id} finished but its package URL stayed empty",
                               execution_id=execution_id, status="Succeeded",
                               fix="download the package from Data management > Job history")
            self._sleep(self.poll_s)
        self.download(url, dest)
        return dest

    def import_package(self, source: Path, definition_group: str, *, legal_entity: str,
                       overwrite: bool = False, on_status: Callable[[str], None] | None = None) -> str:
        """Upload `source` and import it; returns the final status (Succeeded/PartiallySucceeded)."""
        url = self.write_url(source.name)
        self.upload(url, source.read_bytes())
        execution_id = self.start_import(url, definition_group, legal_entity=legal_entity,
                                         overwrite=overwrite)
        return self.wait(execution_id, on_status=on_status)

    # --- blobs -------------------------------------------------------------------------------------

    def download(self, url: str, dest: Path) -> None:
        """GET a package from its signed URL into `dest`."""
        response = self._blob("GET", url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(response.content)

    def upload(self, url: str, data: bytes) -> None:
        """PUT a package to a signed write URL as a block blob."""
        self._blob("PUT", url, content=data, headers={"x-ms-blob-type": "BlockBlob", "Overwrite": "T"})

    def _blob(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        shown = redact_url(httpx.URL(url))
        try:
            response = self.blob_http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise connection_lost(exc, method=method, url=shown, repeatable=True) from None
        if response.status_code >= 300:
            raise DmfError(f"{method} {shown} failed: {response.status_code} {response.text[:200]}",
                           execution_id="", status="",
                           fix="signed URLs expire: request a new one by running the step again")
        return response


def new_execution_id(definition_group: str) -> str:
    """A fresh execution id, readable in Job history (the data project, then a GUID).

    >>> new_execution_id("Customers export").startswith("Customers export-")
    True
    """
    return f"{definition_group}-{uuid.uuid4()}"


def _error_line(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    where = " ".join(str(error[k]) for k in ("EntityName", "LineNumber", "RecordKey") if error.get(k))
    message = error.get("ErrorMessage") or error.get("Message") or json.dumps(error)
    return f"{where}: {message}" if where else str(message)
