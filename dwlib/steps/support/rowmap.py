"""A table map's rows on both sides: F&O rows ↔ Dataverse rows, by the catalogue's column rows.

The migrate step moves rows the way the initial sync would: each column row of the map whose
columns exist on both sides (the F&O fields of the exported package, the Dataverse table's
attributes) is copied in its direction(s); a value transform (`><`, e.g. `ONHOLDSTATUS ><
msdyn_onholdstatus`) goes through the map's value map, both ways; a lookup (`nav.column`, e.g.
`msdyn_customergroupid.msdyn_groupid`) is resolved to the Dataverse row with that column value —
in the row's own company when the target table is striped by company — and back; default-value
rows (`none >> customertypecode = 3`, `PARTYTYPE << Organization`) set their side, and the Default
value transforms of the parameters (`table_maps[].defaults`, e.g. `CUSTOMERGROUPID: "30"`) fill
F&O fields the Dataverse row leaves empty, as dual-write does with the same transforms. A value
transform whose value list no source documents is left out (and said so).

Package text is read and written in the locale of the package's source data format (numbers and
dates; `dwlib.catalog.locales`): a value that is not a number or date there raises LocaleError.

Verify compares the two sides through the same rows (`compared`, `finops_view`, `dataverse_view`):
every two-way column, each side's value brought to one form (`canonical`: value maps to the F&O
enum name, lookups to the key of the row they refer to, numbers by value, text trimmed).

Example:
    >>> from dwlib.catalog.locales import locale
    >>> to_dataverse_value("1.000,50", "Decimal", locale("nl-NL")), to_dataverse_value("Yes", "Boolean")
    (1000.5, True)
    >>> to_finops_text(True), to_finops_text(1000.5, "Money", locale("nl-NL")), same("500.0", 500)
    ('Yes', '1000,5', True)
    >>> canonical(" Contoso ", "String"), canonical(1500.50, "Money"), canonical("Invoice", ENUM)
    ('Contoso', '1500.5', 'invoice')
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.locales import Locale, iso_date, locale

from .dvmeta import TableInfo, Tables
from .spill import BATCH as SPILL_BATCH
from .spill import Spill

if TYPE_CHECKING:
    from dwlib.clients.dataverse import DataverseClient

_INTEGER = ("Integer", "BigInt", "Picklist", "State", "Status")
_NUMBER = ("Decimal", "Money", "Double")
ENUM, LOOKUP = "enum", "lookup"  # kinds `canonical` knows besides Dataverse's attribute types
EN_US = locale("en-us")
IN_MEMORY = 50_000  # rows of a lookup's target table kept in memory; more go to a spill file


def to_dataverse_value(text: str, kind: str, loc: Locale = EN_US) -> Any:
    """A package value (text in `loc`) as the Dataverse column type `kind` wants it; "" is null.
    LocaleError when a number or date is not one in `loc`."""
    if text == "":
        return None
    if kind in _INTEGER:
        return int(loc.parse_number(text))
    if kind in _NUMBER:
        return float(loc.parse_number(text))
    if kind == "DateTime":
        return iso_date(loc.parse_date(text))
    if kind == "Boolean":
        return text.strip().lower() in ("yes", "true", "1")
    return text


def to_finops_text(value: Any, kind: str = "String", loc: Locale = EN_US) -> str:
    """A Dataverse value as package text in `loc` (F&O writes booleans as Yes/No)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if kind in _NUMBER and isinstance(value, int | float):
        return loc.format_number(value)
    if kind == "DateTime":
        return loc.format_date(str(value))
    return str(value)


def same(a: Any, b: Any) -> bool:
    """Whether two values mean the same across the sides (null = "", numbers by value, Yes = true;
    a null beside a number is F&O's 0, as in `canonical`).

    >>> same(None, 0), same(None, 0.0), same("", "0"), same(None, 5)
    (True, True, False, False)
    """
    numbers = [v for v in (a, b) if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and None in (a, b):
        return numbers[0] == 0
    x, y = to_finops_text(a), to_finops_text(b)
    if x == y:
        return True
    try:
        return float(x) == float(y)
    except ValueError:
        return False


def canonical(value: Any, kind: str) -> str:
    """One form of a value for comparing the sides: "" for empty, numbers by value, dates as ISO
    dates, enum names and lookup keys case-insensitively, text trimmed. A number 0 is empty too: an F&O
    field is never null (X++ stores 0 for "no value"), so a Dataverse null and F&O's 0 are one value.

    >>> canonical(None, "Money") == canonical(0, "Money") == canonical("0.00", "Integer")
    True
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind in _NUMBER or kind in _INTEGER:
        try:
            number = Decimal(str(value))
            return "" if number.is_zero() else format(number.normalize(), "f")
        except InvalidOperation:
            return str(value).strip()
    if kind == "DateTime":
        return str(value)[:10]
    if kind in (ENUM, LOOKUP):
        return str(value).strip().lower()
    return str(value).strip()


@dataclass(frozen=True)
class LookupColumn:
    """A lookup column row: the navigation property, its column (`_x_value`), target and its column."""

    nav: str
    column: str
    target: TableInfo
    target_column: str
    by_company: bool  # match the target row in the row's own company


class _Index:
    """One lookup target's rows: (value lower, company id) → row id, and row id → value. In memory
    while small; past `limit` rows moved to key tables of a spill file, so a lookup of a table of a
    million rows (an account's billing account, its primary contact) takes the memory of a page."""

    def __init__(self, name: str, spill: Callable[[], Spill], limit: int) -> None:
        self.name, self._spill_of, self.limit = name, spill, limit
        self.ids: dict[tuple[str, str], str] = {}
        self.values: dict[str, str] = {}
        self.spill: Spill | None = None
        self._pending: list[tuple[str, str, str]] = []  # (row id, value, owner) not yet in the spill

    def add(self, value: str, owner: str, row_id: str) -> None:
        if self.spill is None:
            self.values[row_id] = value  # "" when the row has no value there
            if value:
                self.ids.setdefault((value.lower(), owner), row_id)
            if len(self.values) > self.limit:
                self._move()
            return
        self._pending.append((row_id, value, owner))
        if len(self._pending) >= SPILL_BATCH:
            self._flush()

    def _move(self) -> None:
        self.spill = self._spill_of()
        self.spill.put_keys(f"{self.name}_v", self.values.items())
        self.spill.put_keys(f"{self.name}_i", ((f"{v}\x00{o}", i) for (v, o), i in self.ids.items()))
        self.ids, self.values = {}, {}

    def _flush(self) -> None:
        assert self.spill is not None
        rows, self._pending = self._pending, []
        self.spill.put_keys(f"{self.name}_v", ((i, v) for i, v, _ in rows))
        self.spill.put_keys(f"{self.name}_i", ((f"{v.lower()}\x00{o}", i) for i, v, o in rows if v))

    def done(self) -> None:
        """All rows added."""
        if self.spill is not None:
            self._flush()

    def id_of(self, value: str, owner: str) -> str | None:
        if self.spill is None:
            return self.ids.get((value.lower(), owner))
        return self.spill.key_value(f"{self.name}_i", f"{value.lower()}\x00{owner}")

    def value_of(self, row_id: str) -> str | None:
        if self.spill is None:
            return self.values.get(row_id)
        return self.spill.key_value(f"{self.name}_v", row_id)

    def drop(self) -> None:
        if self.spill is not None:
            self.spill.drop(f"{self.name}_v")
            self.spill.drop(f"{self.name}_i")


class Lookups:
    """Dataverse rows by a column value (and company), and values by row id, read once per table
    (kept on disk past `in_memory` rows a table: see `_Index`). Thread-safe."""

    def __init__(self, dataverse: DataverseClient, in_memory: int = IN_MEMORY) -> None:
        self.dataverse = dataverse
        self.in_memory = in_memory
        self._indexes: dict[tuple[str, str], _Index] = {}
        self._spill: Spill | None = None
        self._made = 0
        self._lock = threading.RLock()

    def _spill_file(self) -> Spill:
        if self._spill is None:
            self._spill = Spill()
        return self._spill

    def _load(self, lk: LookupColumn) -> _Index:
        key = (lk.target.entity_set, lk.target_column)
        if key not in self._indexes:
            company = lk.target.company_lookup()
            company_col = company[1].column if company else None
            select = [lk.target.primary_id, lk.target_column, *([company_col] if company_col else [])]
            self._made += 1
            index = _Index(f"lookup_{self._made}", self._spill_file, self.in_memory)
            for row in self.dataverse.query(lk.target.entity_set, select=select):
                owner = str(row.get(company_col) or "") if company_col else ""
                index.add(to_finops_text(row.get(lk.target_column)), owner, row[lk.target.primary_id])
            index.done()
            self._indexes[key] = index
        return self._indexes[key]

    def id_of(self, lk: LookupColumn, value: str, company_id: str) -> str | None:
        """The target row whose column is `value` (in `company_id` when the lookup is by company)."""
        with self._lock:
            return self._load(lk).id_of(value, company_id if lk.by_company else "")

    def value_of(self, lk: LookupColumn, row_id: str) -> str | None:
        """The target row's column value ("" when empty); None when there is no such row."""
        with self._lock:
            return self._load(lk).value_of(row_id)

    def forget(self, entity_set: str) -> None:
        """Drop what was read of `entity_set` (rows were written to it)."""
        with self._lock:
            for key in [k for k in self._indexes if k[0] == entity_set]:
                self._indexes.pop(key).drop()

    def close(self) -> None:
        """Delete what was kept on disk."""
        with self._lock:
            self._indexes.clear()
            if self._spill is not None:
                self._spill.close()
                self._spill = None


class RowMap:
    """How one map's rows convert between F&O and a Dataverse table (see the module).

    `fields` are the F&O fields there are (a package's upper-case header, or the F&O entity's
    fields); `loc` the locale package text is in.
    """

    def __init__(self, m: catalog.TableMap, info: TableInfo, tables: Tables, fields: Sequence[str],
                 lookups: Lookups, defaults: Mapping[str, str] | None = None, loc: Locale = EN_US) -> None:
        self.map = m
        self.info = info
        self.lookups = lookups
        self.loc = loc
        self.company = info.company_lookup() if m.company_specific else None
        have = {f.upper() for f in fields}
        # Default value transforms (F&O field → value for an empty Dataverse value), as the map has
        # them in dual-write, for the fields the package holds.
        self.defaults = {k.upper(): v for k, v in (defaults or {}).items() if k.upper() in have}
        self.plain: list[catalog.ColumnMapping] = []
        self.enums: list[catalog.ColumnMapping] = []
        self.lookup_rows: list[tuple[catalog.ColumnMapping, LookupColumn]] = []
        self.skipped: list[str] = []
        for c in m.mappings:
            where = f"{c.finops or 'none'} {c.direction} {c.dataverse or 'none'}"
            if c.value_map_missing:
                self.skipped.append(f"{where}: value map not documented")
            elif c.finops is None or c.dataverse is None:
                self._default(c, have, where)
            elif c.finops.upper() not in have:
                self.skipped.append(f"{where}: F&O field not exported")
            elif c.lookup is not None:
                self._lookup(c, tables, where)
            elif c.dataverse not in info.attributes:
                self.skipped.append(f"{where}: no such Dataverse column")
            elif c.values is not None:
                self.enums.append(c)
            else:
                self.plain.append(c)
        self.finops_key = m.finops_key[0].upper()
        self.dataverse_key = m.dataverse_key[0]
        # Worked out once, not per row: a migration converts every row of a table.
        self._kinds = {id(c): self._kind(c) for c in m.mappings}
        self._conditions = [(cond, cond.column.upper()) for cond in m.finops_conditions]
        self._compared = self._compare()
        # Default-value rows' constants: what a row created from the other side gets, not data.
        self._dv_constants = {c.dataverse for c in self.plain if c.finops is None}
        self._fo_constants = {(c.finops or "").upper() for c in self.plain if c.dataverse is None}
        self._fo_kinds = {(c.finops or "").upper(): self.kind(c) for c in (*self.plain, *self.enums)}
        # (Dataverse column, F&O field, type, constant) of the plain columns each way.
        self._plain_to_dv = [(c.dataverse, c.finops.upper() if c.finops else None,
                              self.info.attributes[c.dataverse] if c.finops else "", c.default)
                             for c in self.plain if c.dataverse is not None and c.to_dataverse]
        self._plain_to_fo = [(c.finops.upper(), c.dataverse, self.kind(c), to_finops_text(c.default))
                             for c in self.plain if c.finops is not None and c.to_finops]

    def _default(self, c: catalog.ColumnMapping, have: set[str], where: str) -> None:
        if (c.dataverse and c.dataverse in self.info.attributes) or (c.finops and c.finops.upper() in have):
            self.plain.append(c)
        else:
            self.skipped.append(f"{where}: column not on that side")

    def _lookup(self, c: catalog.ColumnMapping, tables: Tables, where: str) -> None:
        name, target_column = c.lookup or ("", "")
        candidates = self.info.navigations(name)
        if not candidates:
            self.skipped.append(f"{where}: no such lookup in Dataverse")
            return
        # Of a multi-table lookup, the target table that has the matched column.
        targets = [(nav, lk, tables.of_logical(lk.target)) for nav, lk in candidates]
        match = next(((nav, lk, t) for nav, lk, t in targets if target_column in t.attributes), None)
        if match is None:
            self.skipped.append(f"{where}: {targets[0][2].entity_set} has no {target_column}")
            return
        nav, found, target = match
        by_company = self.company is not None and target.company_lookup() is not None
        self.lookup_rows.append((c, LookupColumn(nav, found.column, target, target_column, by_company)))

    def kind(self, c: catalog.ColumnMapping) -> str:
        """How a row's values compare and convert: ENUM, LOOKUP, or its Dataverse attribute type."""
        kind = self._kinds.get(id(c))
        return kind if kind is not None else self._kind(c)

    def _kind(self, c: catalog.ColumnMapping) -> str:
        if c.values is not None:
            return ENUM
        if c.lookup is not None:
            return LOOKUP
        return self.info.attributes.get(c.dataverse or "", "String")

    # --- F&O → Dataverse ---------------------------------------------------------------------------

    def finops_eligible(self, row: Mapping[str, str]) -> bool:
        """Key set and the map's source filter true (what the initial sync exports)."""
        if not row.get(self.finops_key):
            return False
        for cond, upper in self._conditions:
            # A package's header is upper case; other rows spell the fields as the entity does.
            value = row[upper] if upper in row else next(
                (v for k, v in row.items() if k.upper() == upper), None)
            if not cond.matches({cond.column: value}):
                return False
        return True

    def to_dataverse(self, row: Mapping[str, str], company_id: str) -> tuple[dict[str, Any], list[str]]:
        """Dataverse values (lookups as `nav@odata.bind`) of a package row, and the values that did
        not convert (lookups not found, values the value map lacks). LocaleError when a number or
        date is not one in the package's locale."""
        out: dict[str, Any] = {}
        for column, field_, kind, constant in self._plain_to_dv:
            out[column] = (constant if field_ is None else
                           to_dataverse_value(row.get(field_, ""), kind, self.loc))
        missing = []
        for c in self.enums:
            if c.to_dataverse and c.finops and c.dataverse:
                try:
                    out[c.dataverse] = c.to_dataverse_value(row.get(c.finops.upper(), ""))
                except catalog.ValueMapError as exc:
                    missing.append(str(exc))
        for c, lk in self.lookup_rows:
            if not c.to_dataverse:
                continue
            value = row.get((c.finops or "").upper(), "")
            if not value:
                out[f"{lk.nav}@odata.bind"] = None  # empty on the source side: none on the other either
                continue
            target_id = self.lookups.id_of(lk, value, company_id)
            if target_id is None:
                missing.append(f"{lk.nav} {lk.target_column} '{value}'")
            else:
                out[f"{lk.nav}@odata.bind"] = f"{lk.target.entity_set}({target_id})"
        return out, missing

    def for_update(self, values: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
        """`values` to update Dataverse `row` with, without clearing a lookup F&O cannot express: one
        to a row without the key it is matched on (a primary contact without a contact person id)
        reads empty in F&O, so an empty F&O value says nothing about it."""
        out = dict(values)
        for _, lk in self.lookup_rows:
            name, target = f"{lk.nav}@odata.bind", row.get(lk.column)
            if name in out and out[name] is None and target and self.lookups.value_of(lk, target) == "":
                del out[name]
        return out

    def dataverse_differs(self, values: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
        """Whether the Dataverse `row` holds other values than `values` (from `to_dataverse`); the
        constants of default-value rows (`none >> address1_addresstypecode = 2`) are what a row
        created from F&O gets, not values F&O holds, so they do not count."""
        values = self.for_update(values, row)
        for _, lk in self.lookup_rows:
            name = f"{lk.nav}@odata.bind"
            if name not in values:
                continue
            bind, target = values[name], row.get(lk.column)
            if bind != (f"{lk.target.entity_set}({target})" if target is not None else None):
                return True
        return any(not same(v, row.get(k)) for k, v in values.items()
                   if not k.endswith("@odata.bind") and k not in self._dv_constants)

    def dataverse_select(self) -> list[str]:
        """The Dataverse columns to read for both directions."""
        company = [self.company[1].column] if self.company else []
        cols = [self.info.primary_id, self.dataverse_key,
                *(c.dataverse for c in (*self.plain, *self.enums) if c.dataverse),
                *(lk.column for _, lk in self.lookup_rows), *company]
        return list(dict.fromkeys(c for c in cols if c))

    # --- Dataverse → F&O ---------------------------------------------------------------------------

    def to_finops(self, row: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
        """Package values (field → text in the locale) and the values that did not convert."""
        out: dict[str, str] = {}
        for field_, column, kind, constant in self._plain_to_fo:
            out[field_] = constant if column is None else to_finops_text(row.get(column), kind, self.loc)
        missing = []
        for c in self.enums:
            if c.to_finops and c.finops and c.dataverse:
                try:
                    out[c.finops.upper()] = c.to_finops_value(row.get(c.dataverse)) or ""
                except catalog.ValueMapError as exc:
                    missing.append(str(exc))
        for c, lk in self.lookup_rows:
            if not c.to_finops or c.finops is None:
                continue
            target_id = row.get(lk.column)
            if not target_id:
                out[c.finops.upper()] = ""  # empty on the source side: none on the other either
                continue
            value = self.lookups.value_of(lk, target_id)
            if value is None:
                missing.append(f"{lk.nav} {target_id}")
            elif value:
                out[c.finops.upper()] = value
        for field, value in self.defaults.items():
            if not out.get(field):
                out[field] = value
        return out, missing

    def finops_differs(self, values: Mapping[str, str], row: Mapping[str, str]) -> bool:
        """Whether the F&O package `row` holds other values than `values` (from `to_finops`)."""
        kinds, constants = self._fo_kinds, self._fo_constants
        return any(self._text(v, kinds.get(k, "String")) != self._text(row.get(k, ""), kinds.get(k, "String"))
                   for k, v in values.items() if k not in constants)

    def _text(self, text: str, kind: str) -> str:
        """Package text in one form (numbers and dates parsed in the package's locale)."""
        if kind in _NUMBER or kind in _INTEGER or kind == "DateTime":
            text = to_finops_text(to_dataverse_value(text.strip(), kind, self.loc), kind)
        return canonical(text, kind)

    # --- comparing the sides (verify) --------------------------------------------------------------

    def compared(self) -> list[catalog.ColumnMapping]:
        """The two-way column rows (`=`, `><`) verify compares: one-way columns legitimately differ
        for rows the other side created, and the key columns are matched, not compared."""
        return self._compared

    def _compare(self) -> list[catalog.ColumnMapping]:
        keys = {self.finops_key, self.dataverse_key}
        return [c for c in (*self.plain, *self.enums, *(c for c, _ in self.lookup_rows))
                if c.direction in ("=", "><") and c.finops and c.dataverse
                and c.finops.upper() not in keys and c.dataverse not in keys]

    def finops_view(self, row: Mapping[str, Any]) -> list[str]:
        """An F&O row (OData values) in canonical form, in the order of `compared`."""
        upper = {k.upper(): v for k, v in row.items()}
        return [canonical(upper.get((c.finops or "").upper()), self.kind(c)) for c in self.compared()]

    def dataverse_expand(self) -> str | None:
        """`$expand` for the compared lookups: each one's key column, read with the row itself
        (`msdyn_customergroupid($select=msdyn_groupid)`), so no lookup table is held in memory."""
        compared = {id(c) for c in self.compared()}
        parts = [f"{lk.nav}($select={lk.target_column})" for c, lk in self.lookup_rows if id(c) in compared]
        return ",".join(dict.fromkeys(parts)) or None

    def _target_value(self, lk: LookupColumn, row: Mapping[str, Any]) -> Any:
        """The key value of the row a lookup refers to: expanded with the row, else read once."""
        target = row.get(lk.column)
        if not target:
            return None
        if lk.nav in row:  # expanded
            value = (row.get(lk.nav) or {}).get(lk.target_column)
            return "" if value is None else value
        value = self.lookups.value_of(lk, target)
        return value if value is not None else f"?{target}"  # a row that does not exist: differs

    def dataverse_view(self, row: Mapping[str, Any]) -> list[str]:
        """A Dataverse row as F&O would hold it (value maps, lookup keys, Default value transforms),
        in canonical form, in the order of `compared`; a value the value map lacks stays as it is,
        so it differs."""
        lookups = {id(c): lk for c, lk in self.lookup_rows}
        out = []
        for c in self.compared():
            if id(c) in lookups:
                value: Any = self._target_value(lookups[id(c)], row)
            elif c.values is not None:
                try:
                    value = c.to_finops_value(row.get(c.dataverse or ""))
                except catalog.ValueMapError:
                    value = f"?{row.get(c.dataverse or '')}"
            else:
                value = row.get(c.dataverse or "")
            if value in (None, "") and (c.finops or "").upper() in self.defaults:
                value = self.defaults[(c.finops or "").upper()]
            out.append(canonical(value, self.kind(c)))
        return out
