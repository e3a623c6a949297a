"""What the bulk-writing steps (bootstrap, migrate) share: evidence written as they go, refused
rows isolated by splitting, progress bars fed from bulk results.

Create/Update/UpsertMultiple are all-or-nothing: one refused row fails its whole request. A
request refused because of its rows (a 4xx other than auth and throttling) is split in halves
until the refused rows are alone, so only they count as failed; other failures (outages,
throttling past the retry budget) fail the whole chunk.

Example:
    >>> import tempfile
    >>> log = AppendCsv(Path(tempfile.mkdtemp()) / "done.csv", ["id"])
    >>> log.write([{"id": 1}]); log.write([{"id": 2}]); log.close()
    >>> log.path.read_text().split()
    ['id', '1', '2']
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from dwlib.clients.bulk import BulkResult
from dwlib.clients.errors import ClientError, HttpError

from ..base import Progress

T = TypeVar("T")


class AppendCsv:
    """An evidence CSV appended row by row and flushed each time, safe across threads.

    A flushed file is in the operating system's hands, so a killed run leaves every row written
    before the kill. The header is written when the file is new or empty.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._fh: TextIO | None = None
        self._writer: Any = None
        self._lock = threading.Lock()

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append `rows` (extra keys are ignored) and flush."""
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                new = not self.path.exists() or self.path.stat().st_size == 0
                self._fh = self.path.open("a", newline="", encoding="utf-8")
                self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
                if new:
                    self._writer.writeheader()
            self._writer.writerows(rows)
            self._fh.flush()

    @property
    def written(self) -> bool:
        """Whether any row was written (the file exists with more than its header)."""
        return self._fh is not None

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()


def row_fault(error: ClientError) -> bool:
    """Whether the service refused the request because of its rows (splitting then finds them),
    rather than because of the caller or the service (auth, throttling, outages)."""
    return isinstance(error, HttpError) and 400 <= error.status < 500 and error.status not in (401, 403, 429)


def isolate(
    send: Callable[[list[T]], BulkResult],
    chunk: list[T],
    *,
    done: Callable[[list[T]], None],
    failed: Callable[[list[T], ClientError], None],
    stop: threading.Event,
) -> None:
    """Send `chunk`; hand the rows that went through to `done` and the refused ones to `failed`.

    `send` must collect failures (`errors="collect"`). Once `stop` is set, rows of failed
    requests that are not yet isolated are dropped: not known to fail, they are left for a re-run.
    """
    result = send(chunk)
    bad: set[int] = set()
    for failure in result.failures:
        part = chunk[failure.start:failure.start + failure.rows]
        bad.update(range(failure.start, failure.start + failure.rows))
        if stop.is_set():
            continue
        if row_fault(failure.error) and len(part) > 1:
            half = len(part) // 2
            isolate(send, part[:half], done=done, failed=failed, stop=stop)
            isolate(send, part[half:], done=done, failed=failed, stop=stop)
        else:
            failed(part, failure.error)
    good = [r for i, r in enumerate(chunk) if i not in bad]
    if good:
        done(good)


def progress_of(bar: Progress) -> Callable[[int, int | None], None]:
    """A `run_chunks` progress callback (rows done so far) that advances `bar`."""
    seen = 0

    def report(rows_done: int, _total: int | None) -> None:
        nonlocal seen
        bar.update(rows_done - seen)
        seen = rows_done

    return report
