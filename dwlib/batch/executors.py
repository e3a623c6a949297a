"""Where runs execute: local processes, or tasks on a Dask distributed cluster.

Both executors run the same `worker.run_one` and are driven the same way by the batch scheduler,
which decides from the client side what starts when (concurrency bound, one run per environment
pair at a time): `run(spec)` blocks until the run ends and returns its outcome; `cancel()` asks
every running run to stop (its process tree is stopped by `run_one`).

Example:
    >>> with LocalExecutor(2) as ex:
    ...     ex.slots
    2
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from dwlib.batch.worker import RunSpec, run_one
from dwlib.errors import DwError
from dwlib.extras import missing_text, require

Started = Callable[[dict[str, Any]], None]
DASK_MISSING = missing_text("dask", "--executor dask", "Dask distributed")


class Executor:
    """The executor contract (and a context manager closing it)."""

    slots: int  # how many runs it can take at once (the default --max-parallel)

    def run(self, spec: RunSpec, on_start: Started | None = None) -> dict[str, Any]:
        """Run `spec` to its end and return `run_one`'s outcome; `on_start` hears the pid and host of
        its process when the executor can tell (local)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Ask every running run to stop."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (a cluster, a client)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LocalExecutor(Executor):
    """Runs on this machine: each run a `dw run` process supervised by a thread of `dw batch`."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._cancelled = threading.Event()

    def run(self, spec: RunSpec, on_start: Started | None = None) -> dict[str, Any]:
        return run_one(spec, self._cancelled.is_set, on_start)

    def cancel(self) -> None:
        self._cancelled.set()


def dask_run(spec: RunSpec, cancel_event: str) -> dict[str, Any]:
    """The task a Dask worker runs: `run_one`, stopped when the batch sets the named Dask Event."""
    from distributed import Event

    event = Event(cancel_event)
    return run_one(spec, event.is_set)


def import_distributed() -> Any:
    """The `distributed` module, or a `DwError` saying how to install it."""
    return require("distributed", "dask", "--executor dask", "Dask distributed")


class DaskExecutor(Executor):
    """Runs as tasks on a Dask cluster: `client`, or one at `address`, or a LocalCluster of `workers`
    single-threaded worker processes when neither is given."""

    def __init__(self, address: str | None = None, workers: int = 2, client: Any = None) -> None:
        distributed = import_distributed()
        self._cluster = None
        if client is None and address is None:
            # Workers run nothing but the supervision of a `dw run` process: keep them light.
            self._cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                     dashboard_address=None)
        self._owns_client = client is None
        try:
            self.client = client or distributed.Client(address or self._cluster)
        except OSError as exc:
            self.close()
            raise DwError(f"cannot reach the Dask scheduler at {address} ({exc}): check --dask-address "
                          "(e.g. tcp://scheduler:8786)") from None
        self.slots = max(1, sum(self.client.nthreads().values()))
        self._event = distributed.Event(f"dw-batch-cancel-{uuid.uuid4()}", client=self.client)

    def run(self, spec: RunSpec, on_start: Started | None = None) -> dict[str, Any]:
        # The process runs on a worker: its pid means nothing here, so `on_start` is not told.
        future = self.client.submit(dask_run, spec, self._event.name, pure=False,
                                    key=f"dw-run-{spec.name}-{uuid.uuid4()}")
        result: dict[str, Any] = future.result()
        return result

    def cancel(self) -> None:
        self._event.set()

    def close(self) -> None:
        if getattr(self, "client", None) is not None and self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
