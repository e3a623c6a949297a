"""Rows kept on disk instead of in memory: a temporary SQLite file of keyed and of listed rows.

Migrate compares a company's rows on both sides by key and writes what differs. At a million rows
a side's rows as Python dicts take gigabytes; here they go, marshalled, into tables of a temporary
SQLite file page by page, and come back one at a time: keyed rows joined by key (`pairs`, SQLite's
index does the matching), listed rows in the order they were added (`listed`), the values of one
key looked up (`values`: the bootstrap's F&O customers by account number). Memory stays that
of a page, whatever the table's size.

Example:
    >>> with Spill() as s:
    ...     given = s.put("fo", [("us-1", {"n": "A"}), ("us-2", {"n": "B"}), ("us-1", {"n": "A2"})])
    ...     _ = s.put("dv", [("us-2", {"n": "b"})]), s.add("out", [{"k": "us-1"}, {"k": "us-2"}])
    ...     given, list(s.pairs("fo", "dv")), s.count("out"), list(s.listed("out"))
    (3, [('us-1', {'n': 'A2'}, None), ('us-2', {'n': 'B'}, {'n': 'b'})], 2, [{'k': 'us-1'}, {'k': 'us-2'}])

    Multi-valued tables keep every value of a key (a customer account in two companies):

    >>> with Spill() as s:
    ...     _ = s.put_many("fo", [("c-1", ["USMF", "10"]), ("c-2", ["USMF", "20"]), ("c-1", ["GBSI", "10"])])
    ...     s.values("fo", "c-1"), s.values("fo", "c-9"), s.values("none", "c-1")
    ([['USMF', '10'], ['GBSI', '10']], [], [])
"""

from __future__ import annotations

import json
import marshal
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from types import TracebackType
from typing import IO, Any, overload

BATCH = 2000  # rows per executemany: one page's worth in memory at a time
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _table(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a table name: {name!r} (lower-case letters, digits, _)")
    return name


class Spill:
    """A temporary SQLite file (SQLite's own: unlinked as soon as it is opened, so a killed run
    leaves nothing behind, and gone on `close`) of keyed tables (`put`, `pairs`; a later row
    with the same key replaces the earlier one) and listed tables (`add`, `listed`). Used by one
    thread at a time (a company's rows are read by one thread, compared by another: handed over)."""

    def __init__(self) -> None:
        # "": a private temporary database on disk (in $TMPDIR), deleted by SQLite itself.
        self.db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        # A scratch file: nothing to recover after a crash, so no journal and no fsync.
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self._tables: set[str] = set()

    def _create(self, name: str, keyed: bool) -> str:
        name = _table(name)
        if name not in self._tables:
            column = "k TEXT PRIMARY KEY" if keyed else "i INTEGER PRIMARY KEY"
            self.db.execute(f"CREATE TABLE {name} ({column}, v BLOB NOT NULL)")
            self._tables.add(name)
        return name

    def _batches(self, sql: str, rows: Iterator[tuple[Any, ...]]) -> int:
        n = 0
        while batch := list(islice(rows, BATCH)):
            self.db.execute("BEGIN")
            self.db.executemany(sql, batch)
            self.db.execute("COMMIT")
            n += len(batch)
        return n

    def put(self, name: str, rows: Iterable[tuple[str, Any]]) -> int:
        """Add (key, row) pairs to keyed table `name` (a key seen before: the later row wins);
        returns how many were given."""
        table = self._create(name, keyed=True)
        return self._batches(f"INSERT OR REPLACE INTO {table} (k, v) VALUES (?, ?)",
                             ((k, _dumps(v)) for k, v in rows))

    def add(self, name: str, rows: Iterable[Any]) -> int:
        """Append rows to listed table `name`; returns how many."""
        table = self._create(name, keyed=False)
        return self._batches(f"INSERT INTO {table} (v) VALUES (?)", ((_dumps(v),) for v in rows))

    def put_keys(self, name: str, keys: Iterable[tuple[str, str]]) -> int:
        """Add (normalised key, key as stored) pairs to key table `name` (the first spelling of a
        key stays); returns how many were given. `missing` compares two such tables."""
        table = _table(name)
        if table not in self._tables:
            self.db.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID")
            self._tables.add(table)
        return self._batches(f"INSERT OR IGNORE INTO {table} (k, v) VALUES (?, ?)", iter(keys))

    def put_many(self, name: str, rows: Iterable[tuple[str, Any]]) -> int:
        """Add (key, value) pairs to multi-valued table `name`: a key may hold many values, in the
        order given (`values` finds them); returns how many were given."""
        table = _table(name)
        if table not in self._tables:
            self.db.execute(f"CREATE TABLE {table} (i INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL)")
            self.db.execute(f"CREATE INDEX {table}_k ON {table} (k)")
            self._tables.add(table)
        return self._batches(f"INSERT INTO {table} (k, v) VALUES (?, ?)",
                             ((k, _dumps(v)) for k, v in rows))

    def values(self, name: str, key: str) -> list[Any]:
        """The values of `key` in multi-valued table `name`, in the order they were added ([] when
        none, or no such table)."""
        if _table(name) not in self._tables:
            return []
        return [_loads(v) for (v,) in self.db.execute(f"SELECT v FROM {name} WHERE k = ? ORDER BY i",
                                                           (key,))]

    def key_value(self, name: str, key: str) -> str | None:
        """The value stored for `key` in key table `name` (`put_keys`), or None."""
        if _table(name) not in self._tables:
            return None
        found = self.db.execute(f"SELECT v FROM {name} WHERE k = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    def drop(self, name: str) -> None:
        """Delete table `name` and its rows (nothing when there is none)."""
        if _table(name) in self._tables:
            self.db.execute(f"DROP TABLE {name}")
            self._tables.discard(name)

    def missing(self, left: str, right: str) -> Iterator[str]:
        """The keys (as stored) of key table `left` that `right` lacks, sorted."""
        for (v,) in self.db.execute(f"SELECT v FROM {_table(left)} l WHERE NOT EXISTS "
                                    f"(SELECT 1 FROM {_table(right)} r WHERE r.k = l.k) ORDER BY v"):
            yield v

    def count(self, name: str) -> int:
        """Rows in table `name` (0 when none was added)."""
        if _table(name) not in self._tables:
            return 0
        return int(self.db.execute(f"SELECT count(*) FROM {name}").fetchone()[0])

    def pairs(self, left: str, right: str, *,
              unmatched: bool = False) -> Iterator[tuple[str, Any, Any | None]]:
        """(key, left row, right row or None) for every key of keyed table `left`, in key order;
        with `unmatched`, only the keys `right` lacks (their right row None: neither side of a
        matched key is read).

        >>> with Spill() as s:
        ...     _ = s.put("a", [("1", "x"), ("2", "y")]), s.put("b", [("2", "z")])
        ...     list(s.pairs("a", "b", unmatched=True))
        [('1', 'x', None)]
        """
        self._create(left, keyed=True)
        self._create(right, keyed=True)
        if unmatched:
            for k, a in self.db.execute(f"SELECT l.k, l.v FROM {left} l WHERE NOT EXISTS "
                                        f"(SELECT 1 FROM {right} r WHERE r.k = l.k) ORDER BY l.k"):
                yield k, _loads(a), None
            return
        for k, a, b in self.db.execute(f"SELECT l.k, l.v, r.v FROM {left} l LEFT JOIN {right} r ON r.k = l.k "
                                       "ORDER BY l.k"):
            yield k, _loads(a), (_loads(b) if b is not None else None)

    def listed(self, name: str) -> Iterator[Any]:
        """The rows of listed table `name` in the order they were added."""
        table = self._create(name, keyed=False)
        for (v,) in self.db.execute(f"SELECT v FROM {table} ORDER BY i"):
            yield _loads(v)

    def close(self) -> None:
        """Close (SQLite deletes the file)."""
        self.db.close()

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _dumps(value: Any) -> bytes:
    """A row as stored: marshalled (the file is this process's own and goes with it, so the
    format need not outlive the interpreter; two to five times faster than JSON). A value of a type
    marshal does not know (a datetime, a Decimal) raises ValueError, as JSON would raise TypeError."""
    return marshal.dumps(value)


_loads = marshal.loads


class KeyList(Sequence[str]):
    """A sorted list of keys that may be long (every key missing on a side of a large table): the
    first `head` in memory, all of them in an anonymous temporary file (JSON lines; unlinked at once,
    so it goes with the list or the process) when there are more. Slices within the head (samples)
    and `len` cost nothing; iterating reads the file.

    >>> few = KeyList(["a", "b"]); few == ["a", "b"], len(few), few[:1]
    (True, 2, ['a'])
    >>> many = KeyList((f"k{i:03d}" for i in range(250)), head=100)
    >>> len(many), many[:2], many[-1], list(many)[150], many.spilled
    (250, ['k000', 'k001'], 'k249', 'k150', True)
    """

    def __init__(self, keys: Iterable[str], head: int = 1000) -> None:
        it = iter(keys)
        self._head = list(islice(it, head))
        self._count = len(self._head)
        self._file: IO[bytes] | None = None
        nxt = next(it, None)
        if nxt is None:
            return
        # Open for the list's life (closed when it goes), so no context manager.
        self._file = tempfile.TemporaryFile(prefix="dw-keys-")  # noqa: SIM115
        written = 0
        for key in chain(self._head, [nxt], it):
            self._file.write(json.dumps(key).encode() + b"\n")
            written += 1
        self._file.flush()
        self._count = written

    @property
    def spilled(self) -> bool:
        """Whether the keys are more than the head (and in a file)."""
        return self._file is not None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        if self._file is None:
            yield from self._head
            return
        # Read at offsets (pread), not through the file's position: iterations may overlap.
        fd, offset, rest = self._file.fileno(), 0, b""
        while chunk := os.pread(fd, 1 << 16, offset):
            offset += len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield json.loads(line)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if stop <= len(self._head):
                return self._head[index] if self._file is None else self._head[start:stop:step]
            return list(islice(iter(self), start, stop, step))
        i = index + self._count if index < 0 else index
        if not 0 <= i < self._count:
            raise IndexError("key index out of range")
        return self._head[i] if i < len(self._head) else next(islice(iter(self), i, None))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._head) if self._file is None else f"KeyList({self._count} keys, {self._head[:3]} …)"
