"""Rows kept on disk instead of in memory: temporary files of keyed, listed and looked-up rows.

Migrate compares a company's rows on both sides by key and writes what differs. At a million rows
a side's rows as Python dicts take gigabytes; here they go, marshalled, into temporary files page by
page, and come back one at a time: keyed rows joined by key (`pairs`), listed rows in the order they
were added (`listed`), the values of one key looked up (`values`: the bootstrap's F&O customers by
account number). Memory stays that of a page, whatever the table's size.

Rows read in sequence (keyed and listed tables) are records in plain files: keyed rows in sorted
runs, merged when read. Python's sqlite3 lets other threads run (releases the GIL) for every row it
steps over, and a thread that must get it back waits out another busy thread's switch interval
(5 ms): a spill read beside a thread that converts rows took 80 times as long through SQLite. A
file is read a MB at a time. Rows looked up by key (`put_keys`, `put_many`) are in a
temporary SQLite file, whose index finds one key without reading the rest.

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

import heapq
import json
import marshal
import os
import re
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from operator import itemgetter
from types import TracebackType
from typing import IO, Any, overload

BATCH = 2000  # rows per executemany: one page's worth in memory at a time
RUN = 10_000  # keyed rows sorted in memory at a time: one sorted run of the table's file
READ = 1 << 20  # bytes read from a file at a time (a read lets other threads run: see the module)
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_LENGTH = struct.Struct("<I")


class _Records:
    """An anonymous temporary file (unlinked at once: it goes with the process) of length-prefixed
    records. One thread appends; any number read at the same time (`os.pread`: no shared offset)."""

    def __init__(self) -> None:
        # Open for the table's life (closed by `close`), so no context manager.
        self._file = tempfile.TemporaryFile(prefix="dw-spill-")  # noqa: SIM115
        self.size = 0
        self._lock = threading.Lock()

    def append(self, records: Iterable[bytes]) -> tuple[int, int]:
        """Write `records` at the end; their (start, end) offsets."""
        with self._lock:
            start = self.size
            buffer = bytearray()
            for record in records:
                buffer += _LENGTH.pack(len(record))
                buffer += record
                if len(buffer) >= READ:
                    self._file.write(buffer)
                    self.size += len(buffer)
                    buffer.clear()
            self._file.write(buffer)
            self.size += len(buffer)
            self._file.flush()
            return start, self.size

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The records between offsets `start` and `end` (default: the end), in order."""
        fd, end = self._file.fileno(), self.size if end is None else end
        pending, at = b"", start
        while at < end:
            block = os.pread(fd, min(READ, end - at), at)
            if not block:
                raise OSError(f"spill file ends at {at}, before {end}")
            at += len(block)
            data = pending + block if pending else block
            pos, size = 0, len(data)
            while size - pos >= 4:
                (length,) = _LENGTH.unpack_from(data, pos)
                if size - pos - 4 < length:
                    break
                yield data[pos + 4:pos + 4 + length]
                pos += 4 + length
            pending = data[pos:]
        if pending:
            raise OSError(f"spill file has {len(pending)} bytes of an unfinished record at {end}")

    def close(self) -> None:
        self._file.close()


@dataclass
class _Listed:
    """A listed table: its rows as records, in the order added."""

    records: _Records = field(default_factory=_Records)
    rows: int = 0

    def close(self) -> None:
        self.records.close()


@dataclass
class _Keyed:
    """A keyed table: runs of (key, row) records, each run sorted by key (and in the order given
    among equal keys); `pairs` merges them."""

    records: _Records = field(default_factory=_Records)
    runs: list[tuple[int, int]] = field(default_factory=list)

    def put(self, rows: Iterator[tuple[str, Any]]) -> int:
        given = 0
        # A run is sorted as stored bytes (a fifth of the rows' size as dicts).
        while batch := [(k, _dumps(v)) for k, v in islice(rows, RUN)]:
            given += len(batch)
            batch.sort(key=itemgetter(0))  # stable: a key given twice keeps its order
            self.runs.append(self.records.append(
                chain.from_iterable((k.encode("utf-8", "surrogatepass"), v) for k, v in batch)))
        return given

    def _run(self, start: int, end: int) -> Iterator[tuple[str, bytes]]:
        records = self.records.read(start, end)
        for key in records:
            yield key.decode("utf-8", "surrogatepass"), next(records)

    def sorted(self) -> Iterator[tuple[str, bytes]]:
        """(key, row as stored) in key order, each key once: its last row."""
        merged = heapq.merge(*(self._run(a, b) for a, b in self.runs), key=itemgetter(0))
        last: tuple[str, bytes] | None = None
        for item in merged:  # equal keys come in the order given (runs in order, each stable)
            if last is not None and last[0] != item[0]:
                yield last
            last = item
        if last is not None:
            yield last

    def close(self) -> None:
        self.records.close()


def _table(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a table name: {name!r} (lower-case letters, digits, _)")
    return name


class Spill:
    """Temporary files (unlinked at once, so a killed run leaves nothing behind; gone on `close`)
    of keyed tables (`put`, `pairs`; a later row with the same key replaces the earlier one),
    listed tables (`add`, `listed`) and, in a temporary SQLite file, tables to look keys up in
    (`put_keys`, `put_many`). A table is written by one thread at a time and read by any (a
    company's rows are read by one thread, compared by another, written out by two more)."""

    def __init__(self) -> None:
        # "": a private temporary database on disk (in $TMPDIR), deleted by SQLite itself.
        self.db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        # A scratch file: nothing to recover after a crash, so no journal and no fsync.
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self._tables: set[str] = set()  # the SQLite file's
        self._keyed: dict[str, _Keyed] = {}
        self._listed: dict[str, _Listed] = {}

    def _file(self, name: str, kind: type[_Keyed] | type[_Listed]) -> Any:
        name = _table(name)
        tables: dict[str, Any] = self._keyed if kind is _Keyed else self._listed
        if name not in tables:
            if name in self._keyed or name in self._listed or name in self._tables:
                raise ValueError(f"spill table {name!r} exists as another kind of table")
            tables[name] = kind()
        return tables[name]

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
        table: _Keyed = self._file(name, _Keyed)
        return table.put(iter(rows))

    def add(self, name: str, rows: Iterable[Any]) -> int:
        """Append rows to listed table `name`; returns how many."""
        table: _Listed = self._file(name, _Listed)
        it = iter(rows)
        added = 0
        while batch := [_dumps(v) for v in islice(it, BATCH)]:
            table.records.append(batch)
            added += len(batch)
        table.rows += added
        return added

    def put_keys(self, name: str, keys: Iterable[tuple[str, str]]) -> int:
        """Add (normalised key, key as stored) pairs to key table `name` (the first spelling of a
        key stays); returns how many were given. `missing` compares two such tables."""
        table = self._sqlite(name)
        if table not in self._tables:
            self.db.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID")
            self._tables.add(table)
        return self._batches(f"INSERT OR IGNORE INTO {table} (k, v) VALUES (?, ?)", iter(keys))

    def put_many(self, name: str, rows: Iterable[tuple[str, Any]]) -> int:
        """Add (key, value) pairs to multi-valued table `name`: a key may hold many values, in the
        order given (`values` finds them); returns how many were given."""
        table = self._sqlite(name)
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

    def _sqlite(self, name: str) -> str:
        """`name` as a table of the SQLite file (ValueError when it is a keyed or listed table)."""
        if _table(name) in self._keyed or name in self._listed:
            raise ValueError(f"spill table {name!r} exists as another kind of table")
        return name

    def drop(self, name: str) -> None:
        """Delete table `name` and its rows (nothing when there is none)."""
        name = _table(name)
        if name in self._tables:
            self.db.execute(f"DROP TABLE {name}")
            self._tables.discard(name)
        keyed, listed = self._keyed.pop(name, None), self._listed.pop(name, None)
        for table in (keyed, listed):
            if table is not None:
                table.close()

    def missing(self, left: str, right: str) -> Iterator[str]:
        """The keys (as stored) of key table `left` that `right` lacks, sorted."""
        for (v,) in self.db.execute(f"SELECT v FROM {_table(left)} l WHERE NOT EXISTS "
                                    f"(SELECT 1 FROM {_table(right)} r WHERE r.k = l.k) ORDER BY v"):
            yield v

    def count(self, name: str) -> int:
        """Rows in table `name`, keys in a keyed one (0 when none was added)."""
        name = _table(name)
        if name in self._listed:
            return self._listed[name].rows
        if name in self._keyed:
            return sum(1 for _ in self._keyed[name].sorted())
        if name not in self._tables:
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
        others = self._file(right, _Keyed).sorted()
        other_key, other = next(others, ("", b""))
        done = not other
        for key, row in self._file(left, _Keyed).sorted():
            while not done and other_key < key:
                other_key, other = next(others, ("", b""))
                done = not other
            match = other if not done and other_key == key else None
            if match is None:
                yield key, _loads(row), None
            elif not unmatched:
                yield key, _loads(row), _loads(match)

    def listed(self, name: str) -> Iterator[Any]:
        """The rows of listed table `name` in the order they were added."""
        table: _Listed = self._file(name, _Listed)
        for record in table.records.read(0, table.records.size):
            yield _loads(record)

    def close(self) -> None:
        """Close (the files go with it)."""
        tables: list[_Keyed | _Listed] = [*self._keyed.values(), *self._listed.values()]
        for table in tables:
            table.close()
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
