"""A DMF import of one package entity into its F&O table.

Rows are checked with F&O's table rules (`fo_rules`) and written like OData writes are: through
the store and the write hooks (`sbx.extras["write_hooks"]`, e.g. dual-write live sync), so a
running map mirrors an import and a row the hook refuses is a row error, rolled back alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..catalog.locales import Locale
from . import fo_rules
from .context import Sandbox
from .dmf_package import PackageEntity
from .odata import ODataError, WriteEvent, run_write_hooks

_PARSED = ("int", "decimal", "datetime")  # the column types whose text is parsed in the locale


class Importer:
    """Validates and upserts the rows of one package entity into its F&O table (see the module)."""

    def __init__(self, sbx: Sandbox, pe: PackageEntity, company: str, loc: Locale) -> None:
        self.sbx, self.store, self.pe, self.company, self.loc = sbx, sbx.store, pe, company, loc
        self.ent = pe.dmf.entity
        self._references = fo_rules.References(sbx.store, cache=True)
        self._fields = [(header, col, self.ent.columns[col]) for header, col in pe.fields.items()]

    def chunk(
        self, start: int, size: int, stats: dict[str, Any]
    ) -> Iterator[tuple[int, list[str], str, str]]:
        """Import rows `start`…`start+size`; yields (line, row, message, key) of each failed row."""
        batch: dict[Any, Any] = {}  # the hooks' cache for this step (see `WriteEvent`)
        with self.store.transaction():
            for offset, row in enumerate(self.pe.rows[start:start + size]):
                line = start + offset + 2  # line 1 is the header
                values, problems = self._convert(row)
                key = {k: values.get(k) for k in self.ent.key}
                record = ",".join(str(v) for k, v in key.items() if k != "dataAreaId" and v is not None)
                existing = self.store.get(self.ent, key) if all(key.values()) else None
                after = values if existing is None else {**existing, **values}
                problems += [p.message for p in fo_rules.problems(
                    self.store, self.ent, after, exists=self._references)]
                if not problems:
                    try:
                        stats[self._write(key, values, existing is None, batch)] += 1
                        continue
                    except ODataError as exc:
                        problems.append(exc.message)
                stats["errors"] += 1
                yield line, row, " ".join(problems), record

    def _write(self, key: dict[str, Any], values: dict[str, Any], creating: bool,
               batch: dict[Any, Any]) -> str:
        """Upsert one row with its hooks in a savepoint; "created" or "updated"."""
        with self.store.transaction():
            if creating:
                counter, op = "created", "create"
                self.store.insert_rows(self.ent, [values])
            else:
                counter, op = "updated", "update"
                self.store.update_rows(self.ent, [(key, {k: v for k, v in values.items() if k not in key})])
            run_write_hooks(self.sbx.extras, lambda: WriteEvent(
                self.ent, op, lambda: [self.store.get(self.ent, key) or values], batch))
        return counter

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
