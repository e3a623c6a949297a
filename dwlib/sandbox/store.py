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
import string
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from .schema import ENTITIES, ColumnType, Entity

_T = TypeVar("_T")

# F&O tables' row version, a hidden column (not an entity field): 1 when a row is inserted, a new
# value on every update, set by a trigger so that every write path (OData, DMF, dual-write, the
# sandbox's own SQL) changes it. F&O's ETags derive from it (RecVersion), not from the values: a
# value set back (A → B → A) gives a new ETag.
RECVERSION = "_RecVersion"
CACHE_KIB = 131_072  # the page cache of the sandbox's database (128 MiB)

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


# F&O fields are never null ("A field … always has a type and a value"): X++ stores an empty string
# or 0 for "no value" (Null Values for Data Types, Dynamics AX developer documentation).
XPP_NULL: dict[ColumnType, Any] = {"string": "", "int": 0, "decimal": 0}


def column_sql(typ: str) -> str:
    """The SQLite declaration of a schema column type, e.g. `TEXT COLLATE NOCASE` for strings."""
    # Dataverse and F&O run on SQL Server with case-insensitive collations: keys, alternate keys,
    # $filter and $orderby on text ignore case there, so they do here (GUIDs are text too).
    return _SQL_TYPES[typ] + (" COLLATE NOCASE" if typ in ("guid", "string") else "")


@cache  # a name is quoted for every row written or read: the set of names is the schema's
def quote(name: str) -> str:
    """A column or table name quoted for SQL (names come from `schema`, never from requests)."""
    return '"' + name.replace('"', '""') + '"'


def read_sql(ent: Entity, column: str) -> str:
    """The SQL expression that reads `column` of `ent` as every reader sees it: an F&O field is never
    null (`XPP_NULL`), so a stored NULL reads as its type's empty value.

    >>> read_sql(ENTITIES["CustomersV3"], "PaymentTermsBaseDays")
    'COALESCE("PaymentTermsBaseDays", 0)'
    """
    default = XPP_NULL.get(ent.all_columns[column]) if ent.service == "finops" else None
    return quote(column) if default is None else f"COALESCE({quote(column)}, {default!r})"


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class KeyedRows:
    """Rows by primary key, looked up as the table compares keys: text ignoring the case of ASCII
    letters (SQLite's NOCASE, as `column_sql` declares), other values as they are."""

    def __init__(self, ent: Entity, rows: Iterable[dict[str, Any]]) -> None:
        self._key = ent.key
        self._rows = {self._ident(r): r for r in rows}

    def _ident(self, key: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(v.translate(_ASCII_LOWER) if isinstance(v := key.get(k), str) else v for k in self._key)

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row whose key equals `key`, or None."""
        return self._rows.get(self._ident(key))


def _by_columns(
    items: Sequence[_T], columns: Callable[[_T], dict[str, Any]]
) -> list[tuple[list[str], list[_T]]]:
    """`items` grouped by the column names `columns(item)` has, so each group is one executemany."""
    groups: dict[tuple[str, ...], list[_T]] = {}
    for item in items:
        groups.setdefault(tuple(sorted(columns(item))), []).append(item)
    return [(list(names), group) for names, group in groups.items()]


class Store:
    """The sandbox's SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # SQLite's default page cache is 2 MB; a table of a hundred thousand rows is hundreds of
        # MB, and its B-trees (random GUID keys, lookup indexes) are walked by every write.
        self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._depth = 0
        self._savepoints = itertools.count()
        self._kept: list[Callable[[], object]] = []
        self._create_tables()
        self._rowversion = self._max_rowversion()

    # --- schema -------------------------------------------------------------------------------

    def _create_tables(self) -> None:
        with self.transaction():
            self.conn.execute("CREATE TABLE IF NOT EXISTS _kv (k TEXT PRIMARY KEY, v TEXT)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS _recversion (n INTEGER NOT NULL)")
            if self.conn.execute("SELECT count(*) FROM _recversion").fetchone()[0] == 0:
                self.conn.execute("INSERT INTO _recversion (n) VALUES (1)")
            for ent in ENTITIES.values():
                cols = ", ".join(f"{quote(c)} {column_sql(t)}" for c, t in ent.all_columns.items())
                pk = ", ".join(quote(k) for k in ent.key)
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote(ent.table)} ({cols}, PRIMARY KEY ({pk}))"
                )
                for sql in self._index_sql(ent).values():
                    self.conn.execute(sql)
                if ent.service == "finops":
                    self._versioned(ent.table)

    def _versioned(self, table: str) -> None:
        """Give F&O table `table` its row version (`RECVERSION`) and the trigger that changes it on
        every update (a state file of an older sandbox gets the column, its rows version 1)."""
        names = {r[1] for r in self.conn.execute(f"PRAGMA table_info({quote(table)})")}
        version = quote(RECVERSION)
        if RECVERSION not in names:
            self.conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {version} INTEGER NOT NULL DEFAULT 1")
        self.conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS {quote('tr_' + table + '_version')} "
            f"AFTER UPDATE ON {quote(table)} "
            f"FOR EACH ROW WHEN NEW.{version} = OLD.{version} BEGIN "
            "UPDATE _recversion SET n = n + 1; "
            f"UPDATE {quote(table)} SET {version} = (SELECT n FROM _recversion) WHERE rowid = NEW.rowid; END"
        )

    def recversion(self, ent: Entity, key: dict[str, Any]) -> int | None:
        """The row version of F&O row `key` (`RECVERSION`), or None when there is no such row.

        >>> import tempfile, pathlib
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> cur, key = ENTITIES["Currencies"], {"CurrencyCode": "USD"}
        >>> _ = st.insert(cur, {"CurrencyCode": "USD", "Name": "A"})
        >>> first = st.recversion(cur, key)
        >>> _ = st.update(cur, key, {"Name": "B"}); second = st.recversion(cur, key)
        >>> _ = st.update(cur, key, {"Name": "A"})
        >>> first, second > first, st.recversion(cur, key) > second, st.get(cur, key)["Name"]
        (1, True, True, 'A')
        """
        where, params = self._where_key(self.to_db(ent, key))
        found = self.conn.execute(f"SELECT {quote(RECVERSION)} FROM {quote(ent.table)} WHERE {where}",
                                  params).fetchone()
        return None if found is None else int(found[0])

    @staticmethod
    def _index_sql(ent: Entity) -> dict[str, str]:
        """The secondary indexes of `ent` (alternate keys, lookups): name → CREATE statement."""
        out: dict[str, str] = {}
        for cols_ in [*ent.alternate_keys, *((lk.column,) for lk in ent.lookups)]:
            name = f"ix_{ent.table}_{'_'.join(c.strip('_') for c in cols_)}"
            out[name] = (
                f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(ent.table)} "
                f"({', '.join(quote(c) for c in cols_)})"
            )
        return out

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

    def reserve_rowversions(self, n: int) -> int:
        """Reserve `n` consecutive row versions for a bulk load; returns the first of them.

        >>> import tempfile, pathlib
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> st.reserve_rowversions(3), st.next_rowversion()
        (1, 4)
        """
        first = self._rowversion + 1
        self._rowversion += n
        return first

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

    def kv_keys(self, prefix: str) -> list[str]:
        """The keys that start with `prefix`, sorted (e.g. every `dmf.job.` entry)."""
        rows = self.conn.execute(
            "SELECT k FROM _kv WHERE substr(k, 1, ?) = ? ORDER BY k", (len(prefix), prefix)
        )
        return [r[0] for r in rows]

    # --- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing block; nests (inner blocks are SAVEPOINTs). Writes given to `keep` inside
        it run once the outermost block has ended, however it ended."""
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
            if not self._depth:
                kept, self._kept = self._kept, []
                for write in kept:
                    write()

    def keep(self, write: Callable[[], object]) -> None:
        """Run `write` outside the open transaction, so a rollback does not undo it (what a service
        writes beside a request that fails, e.g. Dataverse's plug-in trace log); now when none is open."""
        if self._depth:
            self._kept.append(write)
        else:
            write()

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
        """SQLite values → Python values (booleans back to bool; an F&O field never null, see
        `XPP_NULL`), so every reader of F&O rows (OData, DMF packages, dual-write) sees one value."""
        # dict(sqlite3.Row) looks every name up again (quadratic in the columns): zip is ~10x faster.
        out = dict(zip(row.keys(), row, strict=True)) if isinstance(row, sqlite3.Row) else dict(row)
        by_type = ent.columns_by_type
        for name in by_type.get("bool", ()):
            if out.get(name) is not None:
                out[name] = bool(out[name])
        if ent.service == "finops":
            out.pop(RECVERSION, None)  # not a field of the entity
            for typ, empty in XPP_NULL.items():
                for name in by_type.get(typ, ()):
                    if name in out and out[name] is None:
                        out[name] = empty
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
        converted = (self.to_db(ent, self._defaults(ent, r)) for r in rows)
        first = next(converted, None)
        if first is None:
            return 0
        names = list(first)
        prepared = ([db.get(n) for n in names] for db in itertools.chain([first], converted))
        return self.bulk_load(ent, names, prepared, chunk=chunk)

    def bulk_load(
        self, ent: Entity, columns: Sequence[str], rows: Iterable[Sequence[Any]], chunk: int = 50_000
    ) -> int:
        """Insert rows given as tuples already in database form (no defaults, no conversion).

        The fastest path, for seeding large volumes: the caller supplies every value, including
        Dataverse system columns (see `reserve_rowversions`). Into an empty table the secondary
        indexes are dropped and rebuilt after the load, which is several times faster than
        maintaining them row by row. All-or-nothing.

        >>> import tempfile, pathlib
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> st.bulk_load(ENTITIES["Currencies"], ["CurrencyCode", "Name"], [("USD", "US Dollar")])
        1
        """
        sql = (
            f"INSERT INTO {quote(ent.table)} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        indexes = self._index_sql(ent) if self.count(ent) == 0 else {}
        (cache,) = self.conn.execute("PRAGMA cache_size").fetchone()
        # A large page cache keeps the primary-key B-tree (random GUIDs) in memory while loading.
        self.conn.execute("PRAGMA cache_size = -262144")
        total = 0
        try:
            with self.transaction():
                for name in indexes:
                    self.conn.execute(f"DROP INDEX IF EXISTS {quote(name)}")
                it = iter(rows)
                while batch := list(itertools.islice(it, chunk)):
                    self.conn.executemany(sql, batch)
                    total += len(batch)
                for create in indexes.values():
                    self.conn.execute(create)
        finally:
            self.conn.execute(f"PRAGMA cache_size = {int(cache)}")
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

    def find_keys(self, ent: Entity, keys: Sequence[dict[str, Any]]) -> KeyedRows:
        """The rows with primary keys among `keys` (keys with an empty part are left out), read in a
        few statements instead of one per key; looked up as `get` would find them.

        >>> import tempfile, pathlib
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> cur = ENTITIES["Currencies"]
        >>> _ = st.insert_rows(cur, [{"CurrencyCode": "USD"}, {"CurrencyCode": "EUR"}])
        >>> found = st.find_keys(cur, [{"CurrencyCode": "usd"}, {"CurrencyCode": "GBP"}])
        >>> found.get({"CurrencyCode": "Usd"})["CurrencyCode"], found.get({"CurrencyCode": "EUR"})
        ('USD', None)
        """
        *lead, last = ent.key
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for key in keys:
            db = self.to_db(ent, key)
            if all(db.get(k) is not None for k in ent.key):
                groups.setdefault(tuple(db[k] for k in lead), []).append(db[last])
        rows: list[dict[str, Any]] = []
        for leading, values in groups.items():
            where = "".join(f"{quote(k)} = ? AND " for k in lead)
            for at in range(0, len(values), 500):
                part = values[at:at + 500]
                sql = (f"SELECT * FROM {quote(ent.table)} WHERE {where}{quote(last)} IN "
                       f"({', '.join('?' for _ in part)})")
                rows += (self.from_db(ent, r) for r in self.conn.execute(sql, [*leading, *part]))
        return KeyedRows(ent, rows)

    def get(self, ent: Entity, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row with primary key `key`, or None."""
        rows = self.find(ent, key, limit=1)
        return rows[0] if rows else None

    def _stamped(self, ent: Entity, changes: dict[str, Any], now: str) -> dict[str, Any]:
        """`changes` without key columns, plus a new `modifiedon`/`versionnumber` on Dataverse rows."""
        out = {k: v for k, v in changes.items() if k not in ent.key}
        if ent.service == "dataverse":
            out["modifiedon"] = now
            out["versionnumber"] = self.next_rowversion()
        return out

    def update(self, ent: Entity, key: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any] | None:
        """Apply `changes` to the row at `key`; bump its row version. None when it does not exist."""
        db = self.to_db(ent, self._stamped(ent, changes, utcnow()))
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
        self.update_rows(ent, rows)
        return len(rows)

    def insert_rows(self, ent: Entity, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert rows that may each carry different columns, in one transaction; return them
        as stored (with generated ids, timestamps and row versions).

        Rows with the same columns go through one `executemany`, so a thousand rows cost one
        statement preparation. Raises `sqlite3.IntegrityError` when a key exists (nothing is
        inserted then).

        >>> import tempfile, pathlib
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> len(st.insert_rows(ENTITIES["accounts"], [{"name": "A"}, {"name": "B", "accountnumber": "2"}]))
        2
        """
        full = [self._defaults(ent, r) for r in rows]
        with self.transaction():
            for names, group in _by_columns([self.to_db(ent, r) for r in full], lambda r: r):
                self.conn.executemany(
                    f"INSERT INTO {quote(ent.table)} ({', '.join(quote(n) for n in names)}) "
                    f"VALUES ({', '.join('?' for _ in names)})",
                    [[r[n] for n in names] for r in group],
                )
        return full

    def update_rows(self, ent: Entity, rows: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Apply many `(primary key, changes)` pairs in one transaction, bumping row versions.

        Pairs with the same changed columns share one `executemany`. Raises KeyError (with the
        first missing key) when any row does not exist; nothing is changed then.

        >>> import tempfile, pathlib
        >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
        >>> acc = ENTITIES["accounts"]
        >>> row = st.insert(acc, {"name": "A"})
        >>> st.update_rows(acc, [({"accountid": row["accountid"]}, {"name": "B"})])
        >>> st.get(acc, {"accountid": row["accountid"]})["name"]
        'B'
        """
        now = utcnow()
        stamped = [(self.to_db(ent, k), self.to_db(ent, self._stamped(ent, c, now))) for k, c in rows]
        changed = 0
        with self.transaction():
            for names, group in _by_columns(stamped, lambda pair: pair[1]):
                if not names:
                    continue
                key_names = list(ent.key)
                sets = ", ".join(f"{quote(n)} = ?" for n in names)
                where = " AND ".join(f"{quote(k)} = ?" for k in key_names)
                cur = self.conn.executemany(
                    f"UPDATE {quote(ent.table)} SET {sets} WHERE {where}",
                    [[c[n] for n in names] + [k[n] for n in key_names] for k, c in group],
                )
                changed += cur.rowcount
            if changed < sum(1 for _, c in stamped if c):
                missing = next(k for k, _ in stamped if self.get(ent, k) is None)
                raise KeyError(missing)

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
