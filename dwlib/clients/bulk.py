"""Bulk work in chunks over a bounded thread pool, with progress and a per-chunk account.

The chunks are sent by a caller-supplied function (e.g. one UpdateMultiple request per chunk);
at most `concurrency` requests are in flight and at most twice that many chunks are held, so an
iterator of millions of rows streams through. Progress is reported from the calling thread (safe
for notebook widgets).

Example:
    >>> seen = []
    >>> result = run_chunks(range(5), lambda rows: None, chunk_size=2, concurrency=2,
    ...                     progress=lambda done, total: seen.append((done, total)))
    >>> result.succeeded, result.chunks, seen[-1]
    (5, 3, (5, 5))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import BulkError, ClientError

T = TypeVar("T")
Progress = Callable[[int, int | None], None]  # (rows done, total rows or None when unknown)


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk that failed: where it starts in the input, how many rows, and why.

    >>> ChunkFailure(1000, 1000, ClientError("throttled")).rows
    1000
    """

    start: int
    rows: int
    error: ClientError


@dataclass
class BulkResult:
    """What a bulk operation did: rows submitted and succeeded, ids (creates), failed chunks.

    >>> BulkResult(total=10, succeeded=10).failed
    0
    """

    total: int = 0
    succeeded: int = 0
    chunks: int = 0
    ids: list[str] = field(default_factory=list)
    failures: list[ChunkFailure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Rows in failed chunks."""
        return sum(f.rows for f in self.failures)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items.

    >>> list(chunked("abcde", 2))
    [['a', 'b'], ['c', 'd'], ['e']]
    """
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def run_chunks(
    rows: Iterable[T],
    send: Callable[[list[T]], Sequence[str] | None],
    *,
    chunk_size: int,
    concurrency: int,
    progress: Progress | None = None,
    errors: Literal["raise", "collect"] = "raise",
    what: str = "bulk operation",
) -> BulkResult:
    """Send `rows` in chunks through `send` (which may return ids) with bounded concurrency.

    With `errors="raise"` the first failed chunk stops new submissions and, once the chunks in
    flight are done, raises `BulkError` (its `result` says what got through); with `"collect"`
    every chunk is tried and the failures are listed in the result.

    >>> run_chunks(["a", "b", "c"], lambda rows: [r.upper() for r in rows], chunk_size=2, concurrency=1).ids
    ['A', 'B', 'C']
    """
    total = len(rows) if isinstance(rows, Sized) else None
    result = BulkResult()
    ids: dict[int, Sequence[str]] = {}
    chunks = chunked(rows, chunk_size)
    start = 0
    stop = False
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dw-bulk") as pool:
        pending: dict[Future[Any], tuple[int, int]] = {}
        while True:
            while not stop and len(pending) < concurrency * 2:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                pending[pool.submit(send, chunk)] = (start, len(chunk))
                start += len(chunk)
                result.total += len(chunk)
                result.chunks += 1
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                first, count = pending.pop(future)
                try:
                    returned = future.result()
                except ClientError as exc:
                    result.failures.append(ChunkFailure(first, count, exc))
                    stop = stop or errors == "raise"
                    continue
                result.succeeded += count
                if returned:
                    ids[first] = returned
            if progress is not None:
                progress(result.succeeded + result.failed, total)
    result.ids = [i for first in sorted(ids) for i in ids[first]]
    result.failures.sort(key=lambda f: f.start)
    if result.failures and errors == "raise":
        first_error = result.failures[0].error
        raise BulkError(f"{what}: {result.failed} of {result.total} submitted rows failed "
                        f"({len(result.failures)} chunks); first error: {first_error}", result)
    return result
