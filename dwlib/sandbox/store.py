"""SQLite storage for the sandbox: one table per entity set of `schema`, typed row I/O.

Values are stored natively where SQLite can (TEXT, INTEGER, REAL); GUIDs as lower-case text,
booleans as 0/1, datetimes as ISO-8601 UTC text (`2024-01-01T00:00:00Z`), JSON as text. Rows
go in and come out as plain dicts keyed by column name with Python values.

All access happens on one thread (the server's event loop), so one connection serves; nested
`transaction()` blocks use SAVEPOINTs, which is what makes `$batch` change sets and the
`*Multiple` messages all-or-nothing.

Example:
    >>> import tempfile, pathlib
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> acc = ENTITIES["accounts"]
    >>> row = st.insert(acc, {"name": "Contoso", "accountnumber": "A1"})
    >>> st.get(acc, {"accountid": row["accountid"]})["name"]
    'Contoso'
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .schema import ENTITIES, Entity

_SQL_TYPES = {
    "guid": "TEXT",
    "string": "TEXT",
    "int": "INTEGER",
    "decimal": "REAL",
    "bool": "INTEGER",
    "datetime": "TEXT",
    "json": "TEXT",
}


def utcnow() -> str:
    """The current time as the ISO text the store keeps (`2024-01-01T00:00:00Z`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quote(name: str) -> str:
    """A column or table name quoted for SQL (names come from `schema`, never from requests)."""
    return '"' + name.replace('"', '""') + '"'


class Store:
    """The sandbox's SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._depth = 0
        self._savepoints = itertools.count()
        self._create_tables()
        self._rowversion = self._max_rowversion()

    # --- schema -------------------------------------------------------------------------------

    def _create_tables(self) -> None:
        with self.transaction():
            self.conn.execute("CREATE TABLE IF NOT EXISTS _kv (k TEXT PRIMARY KEY, v TEXT)")
            for ent in ENTITIES.values():
                cols = ", ".join(f"{quote(c)} {_SQL_TYPES[t]}" for c, t in ent.all_columns.items())
                pk = ", ".join(quote(k) for k in ent.key)
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote(ent.table)} ({cols}, PRIMARY KEY ({pk}))"
                )
                indexed = [ak for ak in ent.alternate_keys] + [(lk.column,) for lk in ent.lookups]
                for cols_ in indexed:
                    name = f"ix_{ent.table}_{'_'.join(c.strip('_') for c in cols_)}"
                    self.conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(ent.table)} "
                        f"({', '.join(quote(c) for c in cols_)})"
                    )

    def _max_rowversion(self) -> int:
        best = 0
        for ent in ENTITIES.values():
            if "versionnumber" in ent.columns:
                (v,) = self.conn.execute(
                    f"SELECT COALESCE(MAX(versionnumber), 0) FROM {quote(ent.table)}"
                ).fetchone()
                best = max(best, v)
        return best

    def next_rowversion(self) -> int:
        """A new, store-wide increasing row version (Dataverse `versionnumber`, used in ETags)."""
        self._rowversion += 1
        return self._rowversion

    # --- key/value ------------------------------------------------------------------------------

    def kv_get(self, key: str, default: Any = None) -> Any:
        """A JSON value kept under `key` (runtime state that is not an entity row)."""
        row = self.conn.execute("SELECT v FROM _kv WHERE k = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def kv_set(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO _kv (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            (key, json.dumps(value)),
        )

    # --- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing block; nests (inner blocks are SAVEPOINTs)."""
        name = f"sp{next(self._savepoints)}"
        self.conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        else:
            self.conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    # --- value conversion -----------------------------------------------------------------------

    @staticmethod
    def to_db(ent: Entity, row: dict[str, Any]) -> dict[str, Any]:
        """Python values → SQLite values for the columns of `ent` present in `row`."""
        cols = ent.all_columns
        out: dict[str, Any] = {}
        for name, value in row.items():
            typ = cols[name]
            if value is None:
                out[name] = None
            elif typ == "guid":
                out[name] = str(value).lower()
            elif typ == "bool":
                out[name] = 1 if value else 0
            elif typ == "json":
                out[name] = value if isinstance(value, str) else json.dumps(value)
            else:
                out[name] = value
        return out

    @staticmethod
    def from_db(ent: Entity, row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
        """SQLite values → Python values (booleans back to bool)."""
        cols = ent.all_columns
        out = dict(row)
        for name, value in out.items():
            if value is not None and cols.get(name) == "bool":
                out[name] = bool(value)
        return out

    # --- rows -------------------------------------------------------------------------------------

    def _defaults(self, ent: Entity, row: dict[str, Any]) -> dict[str, Any]:
        full = dict(row)
        if ent.service == "dataverse":
            pk = ent.key[0]
            if not full.get(pk):
                full[pk] = str(uuid.uuid4())
            now = utcnow()
            full.setdefault("createdon", now)
            full["modifiedon"] = full.get("modifiedon") or now
            full["versionnumber"] = self.next_rowversion()
            full.setdefault("statecode", 0)
            full.setdefault("statuscode", 1)
        return full

    def insert(self, ent: Entity, row: dict[str, Any]) -> dict[str, Any]:
        """Insert one row (Dataverse rows get an id, timestamps and a row version); return it.

        Raises `sqlite3.IntegrityError` when the key exists.
        """
        full = self.to_db(ent, self._defaults(ent, row))
        names = list(full)
        self.conn.execute(
            f"INSERT INTO {quote(ent.table)} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [full[n] for n in names],
        )
        return self.get(ent, {k: full[k] for k in ent.key}) or {}

    def bulk_insert(self, ent: Entity, rows: Iterable[dict[str, Any]], chunk: int = 20_000) -> int:
        """Insert many rows fast (seeding): one prepared statement, chunks of `chunk` rows.

        Every row must carry the same columns as the first one.
        """
        total = 0
        it = iter(rows)
        with self.transaction():
            while batch := list(itertools.islice(it, chunk)):
                prepared = [self.to_db(ent, self._defaults(ent, r)) for r in batch]
                names = list(prepared[0])
                self.conn.executemany(
                    f"INSERT INTO {quote(ent.table)} ({', '.join(quote(n) for n in names)}) "
                    f"VALUES ({', '.join('?' for _ in names)})",
                    [[p.get(n) for n in names] for p in prepared],
                )
                total += len(batch)
        return total

    def _where_key(self, key: dict[str, Any]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for name, value in key.items():
            if value is None:
                clauses.append(f"{quote(name)} IS NULL")
            else:
                clauses.append(f"{quote(name)} = ?")
                params.append(value)
        return " AND ".join(clauses) or "1", params

    def find(self, ent: Entity, match: dict[str, Any], limit: int | None = None) -> list[dict[str, Any]]:
        """Rows whose columns equal `match` (a key, an alternate key, or any columns)."""
        where, params = self._where_key(self.to_db(ent, match))
        sql = f"SELECT * FROM {quote(ent.table)} WHERE {where}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self.from_db(ent, r) for r in self.conn.execute(sql, params)]

    def get(self, ent: Entity, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row with primary key `key`, or None."""
        rows = self.find(ent, key, limit=1)
        return rows[0] if rows else None

    def update(self, ent: Entity, key: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any] | None:
        """Apply `changes` to the row at `key`; bump its row version. None when it does not exist."""
        changes = dict(changes)
        if ent.service == "dataverse":
            changes["modifiedon"] = utcnow()
            changes["versionnumber"] = self.next_rowversion()
        for k in ent.key:
            changes.pop(k, None)
        db = self.to_db(ent, changes)
        where, params = self._where_key(self.to_db(ent, key))
        if db:
            sets = ", ".join(f"{quote(n)} = ?" for n in db)
            cur = self.conn.execute(
                f"UPDATE {quote(ent.table)} SET {sets} WHERE {where}", [*db.values(), *params]
            )
            if cur.rowcount == 0:
                return None
        return self.get(ent, key)

    def update_many(self, ent: Entity, rows: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> int:
        """Update many `(key, changes)` pairs in one transaction; returns rows changed.

        Raises KeyError (with the missing key) when any row does not exist; nothing is changed then.
        """
        changed = 0
        with self.transaction():
            for key, changes in rows:
                if self.update(ent, key, changes) is None:
                    raise KeyError(key)
                changed += 1
        return changed

    def delete(self, ent: Entity, key: dict[str, Any]) -> bool:
        """Delete the row at `key`; False when there was none."""
        where, params = self._where_key(self.to_db(ent, key))
        cur = self.conn.execute(f"DELETE FROM {quote(ent.table)} WHERE {where}", params)
        return cur.rowcount > 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read query built by the OData layer (names from `schema`, values as parameters)."""
        return self.conn.execute(sql, params).fetchall()

    def count(self, ent: Entity, where: str = "1", params: Sequence[Any] = ()) -> int:
        (n,) = self.conn.execute(f"SELECT COUNT(*) FROM {quote(ent.table)} WHERE {where}", params).fetchone()
        return int(n)

    def close(self) -> None:
        self.conn.close()
