"""A DMF import of one package entity into its F&O table.

Rows are checked with F&O's table rules (`fo_rules`) and written like OData writes are: through
the store and the write hooks (`sbx.extras["write_hooks"]`, e.g. dual-write live sync), so a
running map mirrors an import and a row the hook refuses is a row error, rolled back alone. For
speed, the rows of a chunk that pass the checks are written together (one statement, one hook
event per operation; every row still goes through the hooks), and one by one only when a hook
refuses the set. This is not F&O's "set-based processing" option, which skips business events and
so dual-write: the sandbox has no such option.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..catalog.locales import Locale
from . import fo_rules
from .context import Sandbox
from .dmf_package import PackageEntity
from .odata import ODataError, WriteEvent, run_write_hooks
from .store import KeyedRows

_PARSED = ("int", "decimal", "datetime")  # the column types whose text is parsed in the locale


@dataclass(frozen=True, slots=True)
class _Row:
    """A package row that passed the checks: its line, text, key, values and whether it is new."""

    line: int
    row: list[str]
    key: dict[str, Any]
    values: dict[str, Any]
    record: str  # the key as the job's errors name it
    creating: bool

    @property
    def ident(self) -> tuple[Any, ...]:
        return tuple(self.key.values())

    def changes(self, key_columns: Sequence[str]) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if k not in key_columns}


class Importer:
    """Validates and upserts the rows of one package entity into its F&O table (see the module)."""

    def __init__(self, sbx: Sandbox, pe: PackageEntity, company: str, loc: Locale) -> None:
        self.sbx, self.store, self.pe, self.company, self.loc = sbx, sbx.store, pe, company, loc
        self.ent = pe.dmf.entity
        self._references = fo_rules.References(sbx.store, cache=True)
        self._fields = [(header, col, self.ent.columns[col]) for header, col in pe.fields.items()]
        self._set_based = True

    def chunk(
        self, start: int, size: int, stats: dict[str, Any]
    ) -> Iterator[tuple[int, list[str], str, str]]:
        """Import rows `start`…`start+size`; yields (line, row, message, key) of each failed row.

        The rows that pass the checks are written together (one statement per operation and one
        hook event each). When that write fails (a hook refuses a
        row, e.g. a live map's), it is rolled back and the rows are written one by one, so only
        the refused rows fail. A key seen twice in the chunk is written after the others, one by
        one, so its later row wins as it does in the file's order."""
        batch: dict[Any, Any] = {}  # the hooks' cache for this step (see `WriteEvent`)
        failed: list[tuple[int, list[str], str, str]] = []
        with self.store.transaction():
            ready: list[_Row] = []  # passed the checks: written together
            later: list[tuple[int, list[str]]] = []  # a key seen before in the chunk: one by one, after
            seen: set[tuple[Any, ...]] = set()
            rows = self.pe.rows[start:start + size]
            converted = [self._convert(row) for row in rows]
            # The chunk's rows already in the table, read together (the checks see the table as
            # it is before the chunk is written, as they would row by row).
            stored = self.store.find_keys(self.ent, [self._key(values) for values, _ in converted])
            for offset, (row, (values, problems)) in enumerate(zip(rows, converted, strict=True)):
                line = start + offset + 2  # line 1 is the header
                checked = self._check(line, row, (values, problems), stored)
                if isinstance(checked, tuple):
                    failed.append(checked)
                elif checked.ident in seen:
                    later.append((line, row))
                else:
                    seen.add(checked.ident)
                    ready.append(checked)
            if not (self._set_based and self._write_set(ready, batch, stats)):
                # Refused together: one by one from now on (the same outcome; fewer retried sets
                # while a live map refuses rows or its transaction limit is below a chunk).
                self._set_based = False
                later = sorted([*((r.line, r.row) for r in ready), *later])
            for line, row in later:
                checked = self._check(line, row)
                if isinstance(checked, tuple):
                    failed.append(checked)
                    continue
                try:
                    stats[self._write(checked, batch)] += 1
                except ODataError as exc:
                    failed.append((line, row, exc.message, checked.record))
        for error in sorted(failed, key=lambda f: f[0]):
            stats["errors"] += 1
            yield error

    def _key(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: values.get(k) for k in self.ent.key}

    def _check(self, line: int, row: list[str], converted: tuple[dict[str, Any], list[str]] | None = None,
               stored: KeyedRows | None = None) -> _Row | tuple[int, list[str], str, str]:
        """The row converted (or `converted`) and checked with F&O's table rules against the table
        as it is (its row read, or found in `stored`); the error (line, row, message, key) when it
        does not pass."""
        values, problems = converted or self._convert(row)
        key = self._key(values)
        record = ",".join(str(v) for k, v in key.items() if k != "dataAreaId" and v is not None)
        if not all(key.values()):
            existing = None
        else:
            existing = stored.get(key) if stored is not None else self.store.get(self.ent, key)
        after = values if existing is None else {**existing, **values}
        problems += [p.message for p in fo_rules.problems(self.store, self.ent, after,
                                                          exists=self._references)]
        if problems:
            return line, row, " ".join(problems), record
        return _Row(line, row, key, values, record, existing is None)

    def _write_set(self, rows: list[_Row], batch: dict[Any, Any], stats: dict[str, Any]) -> bool:
        """Write `rows` together in a savepoint, with one hook event per operation; False (and
        nothing written) when a write or a hook refuses any of them."""
        creates = [r for r in rows if r.creating]
        updates = [r for r in rows if not r.creating]
        try:
            with self.store.transaction():
                for op, group in (("create", creates), ("update", updates)):
                    if not group:
                        continue
                    if op == "create":
                        self.store.insert_rows(self.ent, [r.values for r in group])
                    else:
                        self.store.update_rows(self.ent, [(r.key, r.changes(self.ent.key)) for r in group])
                    run_write_hooks(self.sbx.extras, self._event(op, group, batch))
        except (ODataError, sqlite3.IntegrityError, KeyError):
            return False
        stats["created"] += len(creates)
        stats["updated"] += len(updates)
        return True

    def _write(self, r: _Row, batch: dict[Any, Any]) -> str:
        """Upsert one row with its hooks in a savepoint; "created" or "updated"."""
        with self.store.transaction():
            if r.creating:
                counter, op = "created", "create"
                self.store.insert_rows(self.ent, [r.values])
            else:
                counter, op = "updated", "update"
                self.store.update_rows(self.ent, [(r.key, r.changes(self.ent.key))])
            run_write_hooks(self.sbx.extras, self._event(op, [r], batch))
        return counter

    def _event(self, op: str, rows: list[_Row], batch: dict[Any, Any]) -> Callable[[], WriteEvent]:
        """The hooks' event for `rows` written by `op`: the rows as stored, read when asked for."""
        return lambda: WriteEvent(self.ent, op, lambda: [self.store.get(self.ent, r.key) or r.values
                                                         for r in rows], batch)

    def _convert(self, row: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The row's values by schema column, and the fields that are not valid numbers or dates in
        the source data format's locale."""
        values: dict[str, Any] = {"dataAreaId": self.company} if self.pe.dmf.company_specific else {}
        problems = []
        for raw, (header, col, typ) in zip(row, self._fields, strict=False):
            text = raw.strip()
            try:
                values[col] = None if not text else text if typ not in _PARSED else self._parse(text, typ)
            except ValueError:
                kind = "date" if typ == "datetime" else "number"
                problems.append(f"The value '{text}' of field '{header}' is not a valid {kind} "
                                f"({self.loc.name}).")
        return values, problems

    def _parse(self, text: str, typ: str) -> Any:
        if typ == "int":
            return int(self.loc.parse_number(text))
        if typ == "decimal":
            return float(self.loc.parse_number(text))
        if typ == "datetime":  # date fields: F&O OData carries them at 12:00 UTC
            return f"{self.loc.parse_date(text).isoformat()}T12:00:00Z"
        return text
