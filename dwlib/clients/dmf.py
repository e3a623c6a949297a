"""F&O data management (DMF) package API: export and import flows polled to a terminal state.

Export: `ExportToPackage` → poll `GetExecutionSummaryStatus` → `GetExportedPackageUrl` → download.
Import: `GetAzureWriteUrl` → upload (PUT, BlockBlob) → `ImportFromPackage` → poll. A job that ends
`Failed` or `Canceled` (or does not end in time) raises `DmfError` with the job's own errors.
Blob transfers use a client without the F&O token (the URLs are signed); signatures never reach
the journal. Values come as the documentation shows them: a string, or for `ExportToPackage` and
`GetExportedPackageUrl` a string nested in `{"value": …}`; a status outside the documented
`ExecutionStatus` values raises `DmfError` rather than being guessed at.

Starting a job is a POST the HTTP stack does not repeat (it would start a second job). The client
chooses the `executionId` instead, so a start that failed on the way (429/503/504, honouring
`Retry-After`, or a lost connection) is settled by asking `GetExecutionSummaryStatus`
(`dwlib.clients.once`): only `Unknown` (no such job) sends the start again; any other status,
`NotRun` included, means the job exists. Attempts and waiting are bounded by the stack's limits
and the run's retry budget.

`ImportFromPackage` "must not be called in parallel" (data-management-api.md): import starts are
serialized per F&O environment by `ImportGate`, a file lock shared by the threads and processes
of this machine, held only while an import is being started: it waits until the import started
before it (by any run here) is no longer NotRun or Executing, starts the next, and lets go; status
polling stays parallel. Runs on other machines are not covered: F&O's refusal of a parallel
import becomes a `DmfError` that says so.

Example:
    dmf = DmfClient(finops, blob_http)
    path = dmf.export_package("Customers export", Path("customers.zip"), legal_entity="USMF")
    status = dmf.import_package(Path("customers.zip"), "Customers import", legal_entity="USMF")
    >>> sorted(s.value for s in TERMINAL)
    ['Canceled', 'Failed', 'PartiallySucceeded', 'Succeeded']
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx

from .auth import default_cache_path
from .errors import ClientError, DmfError, HttpError, ResponseError, connection_lost
from .finops import FinOpsClient
from .http import SINK_KEY, redact_url
from .once import send_once


class ExecutionStatus(StrEnum):
    """`DMFExecutionSummaryStatus`, the values `GetExecutionSummaryStatus` documents.

    >>> ExecutionStatus("NotRun") == "NotRun"
    True
    """

    UNKNOWN = "Unknown"  # no job with this id
    NOT_RUN = "NotRun"  # the job exists, queued
    EXECUTING = "Executing"
    SUCCEEDED = "Succeeded"
    PARTIALLY_SUCCEEDED = "PartiallySucceeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


TERMINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.PARTIALLY_SUCCEEDED, ExecutionStatus.FAILED,
                      ExecutionStatus.CANCELED})
RUNNING = frozenset({ExecutionStatus.NOT_RUN, ExecutionStatus.EXECUTING})
_FAILED = frozenset({ExecutionStatus.FAILED, ExecutionStatus.CANCELED})
_ACTION = "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities.{}"
_DOC = "https://learn.microsoft.com/dynamics365/fin-ops-core/dev-itpro/data-entities/data-management-api"


FIRST_POLL_S = 0.25  # the first pause of a wait for a DMF job (see `pauses`)
T = TypeVar("T")


def pauses(poll_s: float) -> Iterator[float]:
    """The pauses between the status polls of one wait: from `FIRST_POLL_S`, doubling up to
    `poll_s`. A job that ends within seconds is seen ending within a fraction of a second; a long
    one costs three status calls more than polling every `poll_s` from the start.

    >>> from itertools import islice
    >>> list(islice(pauses(2.0), 6))
    [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    """
    pause = min(FIRST_POLL_S, poll_s)
    while True:
        yield pause
        pause = min(pause * 2, poll_s)


class ImportGate:
    """One `ImportFromPackage` start at a time per F&O environment, across the threads and
    processes of this machine: an exclusive lock on a file named after the environment, which
    also remembers the last import started through it.

    >>> import tempfile
    >>> gate = ImportGate("https://contoso.operations.dynamics.com", Path(tempfile.mkdtemp()))
    >>> with gate.hold() as held:
    ...     held.started("exec-1")
    >>> with gate.hold() as held:
    ...     held.last
    'exec-1'
    """

    def __init__(self, environment_url: str, lock_dir: Path | None = None) -> None:
        key = hashlib.sha256(environment_url.rstrip("/").lower().encode()).hexdigest()[:16]
        self.path = (lock_dir or default_lock_dir()) / f"dmf-import-{key}.lock"

    @contextlib.contextmanager
    def hold(self) -> Iterator[Held]:
        """Hold the gate (waiting for it): the last import started, and where to note the next."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh open file per holder: flock then excludes other threads of this process too.
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                text = fh.read().strip()
                yield Held(fh, str(json.loads(text).get("executionId", "")) if text else "")
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class Held:
    """The gate while held: `last` import started, and `started` to note the next one."""

    def __init__(self, fh: TextIO, last: str) -> None:
        self._fh, self.last = fh, last

    def started(self, execution_id: str) -> None:
        """Remember the import just started."""
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps({"executionId": execution_id, "pid": os.getpid(), "at": time.time()}))
        self._fh.flush()
        self.last = execution_id


def default_lock_dir() -> Path:
    """Beside the token cache: `$XDG_CACHE_HOME/dwlib/locks`, else `~/.cache/dwlib/locks`.

    >>> default_lock_dir().name
    'locks'
    """
    return default_cache_path().parent / "locks"


class DmfClient:
    """The package API of one F&O environment; `blob_http` is a stack client without auth.

    dmf = DmfClient(session.finops, make_client(config, journal), poll_s=5)
    dmf.wait(dmf.start_export("CustomerGroups-Export", "groups", legal_entity="USMF"))
    """

    def __init__(
        self,
        finops: FinOpsClient,
        blob_http: httpx.Client,
        *,
        poll_s: float = 2.0,
        timeout_s: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        lock_dir: Path | None = None,
    ) -> None:
        self.finops = finops
        self.blob_http = blob_http
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._sleep = sleep
        self.imports = ImportGate(finops.environment_url, lock_dir)

    # --- actions -----------------------------------------------------------------------------------

    def _action(self, name: str, body: dict[str, Any], *, safe: bool) -> Any:
        return self.finops.action(_ACTION.format(name), body, safe=safe)

    def _unreadable(self, name: str, problem: str) -> ResponseError:
        """The error for an answer of action `name` in another shape than the documented one."""
        return ResponseError("POST", self.finops.url(_ACTION.format(name)), problem,
                             fix=f"the data management API changed its answer; compare with {_DOC}")

    def _text(self, name: str, body: dict[str, Any], *, safe: bool = True) -> str:
        """An action whose `value` is a string (FinOpsClient.action unwraps the nested `{"value"}`)."""
        value = self._action(name, body, safe=safe)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._unreadable(name, f"{json.dumps(value)[:200]}, not the string value it documents")
        return value

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
                     execution_id: str = "", overwrite: bool = True) -> str:
        """`ImportFromPackage` (execute=true): start importing an uploaded package; the execution id
        (a new one when not given). `overwrite` is True as the documentation says for packages
        without a composite entity (pass False for a package with one). One start at a time per
        environment (`ImportGate`); safe against lost answers (see the module docstring)."""
        body = {
            "packageUrl": package_url, "definitionGroupId": definition_group,
            "executionId": execution_id or new_execution_id(definition_group), "execute": True,
            "overwrite": overwrite, "legalEntityId": legal_entity,
        }
        with self.imports.hold() as held:
            if held.last:
                self._wait_while_running(held.last)
            try:
                started = self._start("ImportFromPackage", body)
            except HttpError as exc:
                # The gate covers this machine only: an import from elsewhere is refused like this.
                raise DmfError(f"ImportFromPackage was refused: {exc}", execution_id=str(body["executionId"]),
                               status="", fix="if another import runs in this environment (from another "
                                              "machine, or in Data management), ImportFromPackage must not "
                                              "run beside it: wait until it has finished, then run the step "
                                              "again; otherwise fix what the message says") from exc
            held.started(started)
        return started

    def _wait_while_running(self, execution_id: str) -> None:
        """Wait until the import `execution_id` (started before, by any run here) is NotRun or
        Executing no more: F&O refuses an import beside it."""
        def late(status: ExecutionStatus) -> DmfError:
            return DmfError(f"the import {execution_id} started before in this environment is still {status} "
                            f"after {self.timeout_s:g} s, and ImportFromPackage must not run in parallel",
                            execution_id=execution_id, status=status,
                            fix="let that job finish (Data management > Job history), then run the step "
                                "again")

        self._poll(lambda: self.status(execution_id), lambda s: s not in RUNNING, late)

    def _poll(self, read: Callable[[], T], done: Callable[[T], bool], late: Callable[[T], DmfError],
              timeout_s: float | None = None) -> T:
        """Call `read` until `done` holds for its value, pausing between calls (`pauses`); returns
        that value. Past `timeout_s` (default `self.timeout_s`) raises `late(the last value)`."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        pause = pauses(self.poll_s)
        while not done(value := read()):
            if time.monotonic() >= deadline:
                raise late(value)
            self._sleep(next(pause))
        return value

    def _start(self, action: str, body: dict[str, Any], *, re_execute: bool = False) -> str:
        """Start a job once: send the start again only while DMF does not know the job."""
        execution_id = str(body["executionId"])
        seen = [ExecutionStatus.UNKNOWN]  # the last status DMF gave for the id

        def landed() -> str | None:
            seen[0] = status = self.status(execution_id)
            if status == ExecutionStatus.UNKNOWN:
                return None
            if re_execute and status in TERMINAL:
                # The job existed before: whether this re-execution started cannot be told apart.
                raise DmfError(f"{action} of job {execution_id} got no answer and the job still shows its "
                               f"last run ({status}); it may or may not run again",
                               execution_id=execution_id, status=status,
                               fix="look at the job in Data management > Job history before re-executing it")
            return execution_id

        def gave_up(attempts: int, failure: ClientError, why: str) -> DmfError:
            return DmfError(f"{action} did not start job {execution_id} in {attempts} attempts ({why}): "
                            f"{failure}", execution_id=execution_id, status=seen[0],
                            fix="F&O is busy or unreachable: run the step again later (a new job id is "
                                "used), or raise options.http.retry_attempts / retry_total_s / "
                                "retry_budget_s")

        return send_once(lambda: self._text(action, body, safe=False) or execution_id, landed,
                         config=self.finops.retry, budget=self.finops.budget, gave_up=gave_up)

    def status(self, execution_id: str) -> ExecutionStatus:
        """`GetExecutionSummaryStatus`: one of `ExecutionStatus`; DmfError for any other value."""
        value = self._text("GetExecutionSummaryStatus", {"executionId": execution_id})
        try:
            return ExecutionStatus(value)
        except ValueError:
            raise DmfError(f"GetExecutionSummaryStatus answered {value!r} for job {execution_id}, which is "
                           f"not a documented status ({', '.join(s.value for s in ExecutionStatus)})",
                           execution_id=execution_id, status=value,
                           fix=f"look at the job in Data management > Job history; see {_DOC}") from None

    def execution_errors(self, execution_id: str) -> list[str]:
        """`GetExecutionErrors`, one readable line per error ("a set of error messages in a JSON
        list": a list, or a string holding one; items are messages or objects)."""
        value = self._action("GetExecutionErrors", {"executionId": execution_id}, safe=True)
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError:
                value = [value]  # one message as plain text
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._unreadable("GetExecutionErrors", f"{json.dumps(value)[:200]}, not a JSON list of "
                                   f"errors (read job {execution_id}'s in Data management > Job history)")
        return [_error_line(e) for e in value]

    def exported_package_url(self, execution_id: str) -> str:
        """`GetExportedPackageUrl` (empty until the package exists)."""
        return self._text("GetExportedPackageUrl", {"executionId": execution_id})

    def write_url(self, unique_file_name: str) -> str:
        """`GetAzureWriteUrl`: a signed URL to upload a package to (the value is JSON in a string)."""
        value = self._text("GetAzureWriteUrl", {"uniqueFileName": unique_file_name})
        try:
            url = json.loads(value)["BlobUrl"]
        except (json.JSONDecodeError, KeyError, TypeError):
            url = None
        if not isinstance(url, str) or not url:
            # Its text is not shown: it may hold a signed URL.
            raise self._unreadable("GetAzureWriteUrl", f"a value of {len(value)} characters that is not the "
                                   "documented JSON document with a BlobUrl")
        return url

    # --- waiting -----------------------------------------------------------------------------------

    def wait(self, execution_id: str, *, on_status: Callable[[str], None] | None = None,
             timeout_s: float | None = None) -> ExecutionStatus:
        """Poll until the job ends; returns Succeeded or PartiallySucceeded, raises `DmfError` otherwise."""
        last = [""]

        def read() -> ExecutionStatus:
            status = self.status(execution_id)
            if status != last[0] and on_status is not None:
                on_status(status)
            last[0] = status
            if status == ExecutionStatus.UNKNOWN:
                raise DmfError(f"DMF does not know job {execution_id} (GetExecutionSummaryStatus: Unknown)",
                               execution_id=execution_id, status=status,
                               fix="the job was not created or its history was deleted: run the step again")
            return status

        def late(status: ExecutionStatus) -> DmfError:
            return DmfError(f"DMF job {execution_id} did not finish in {timeout_s or self.timeout_s:g} s",
                            execution_id=execution_id, status=status,
                            fix="look at the job in Data management > Job history; wait longer with "
                                "timeout_s, or re-run (steps check what was done)")

        status = self._poll(read, lambda s: s in TERMINAL, late, timeout_s)
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
        return self.finish_export(execution_id, dest, on_status=on_status)

    def finish_export(self, execution_id: str, dest: Path, *,
                      on_status: Callable[[str], None] | None = None) -> Path:
        """Wait for the export `execution_id` (`start_export`) and download its package to `dest`;
        returns `dest`. Several exports started one after the other run in that order, and are
        waited for together."""
        self.wait(execution_id, on_status=on_status)

        def late(_: str) -> DmfError:
            return DmfError(f"DMF job {execution_id} finished but its package URL stayed empty",
                            execution_id=execution_id, status="Succeeded",
                            fix="download the package from Data management > Job history")

        # The package URL may lag the final status.
        url = self._poll(lambda: self.exported_package_url(execution_id), bool, late)
        self.download(url, dest)
        return dest

    def import_package(self, source: Path, definition_group: str, *, legal_entity: str,
                       overwrite: bool = True, on_status: Callable[[str], None] | None = None) -> str:
        """Upload `source` and import it; returns the final status (Succeeded/PartiallySucceeded)."""
        url = self.write_url(source.name)
        self.upload(url, source)
        execution_id = self.start_import(url, definition_group, legal_entity=legal_entity,
                                         overwrite=overwrite)
        return self.wait(execution_id, on_status=on_status)

    # --- blobs -------------------------------------------------------------------------------------

    def download(self, url: str, dest: Path) -> None:
        """GET a package from its signed URL into `dest`, streamed to disk (a package of a large
        company is hundreds of megabytes); `dest` appears only once the whole body is there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        try:
            self._blob("GET", url, extensions={SINK_KEY: part})
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)

    def upload(self, url: str, source: Path) -> None:
        """PUT the package file `source` to a signed write URL as a block blob, read from disk as it
        is sent (again from the start on a retry)."""
        built = self.blob_http.build_request(
            "PUT", url, headers={"x-ms-blob-type": "BlockBlob", "Overwrite": "T",
                                 "Content-Length": str(source.stat().st_size)})
        # The same request (client headers, timeouts) with the file as its body stream.
        request = httpx.Request("PUT", built.url, headers=built.headers, stream=_FileStream(source),
                                extensions=built.extensions)
        self._blob("PUT", url, request=request)

    def _blob(self, method: str, url: str, *, request: httpx.Request | None = None,
              **kwargs: Any) -> httpx.Response:
        shown = redact_url(httpx.URL(url))
        try:
            if request is not None:
                response = self.blob_http.send(request)
            else:
                response = self.blob_http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise connection_lost(exc, method=method, url=shown, repeatable=True) from None
        if response.status_code >= 300:
            raise DmfError(f"{method} {shown} failed: {response.status_code} {response.text[:200]}",
                           execution_id="", status="",
                           fix="signed URLs expire: request a new one by running the step again")
        return response


class _FileStream(httpx.SyncByteStream):
    """A request body read from a file in 1 MiB pieces, from the start at each iteration (so the
    retry layer can send it again)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk


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
