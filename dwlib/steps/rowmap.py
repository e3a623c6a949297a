"""A table map's rows on both sides: F&O package rows ↔ Dataverse rows, by the catalogue's column rows.

The migrate step moves rows the way the initial sync would: each column row of the map whose
columns exist on both sides (the F&O fields of the exported package, the Dataverse table's
attributes) is copied in its direction(s); a lookup (`nav.column`, e.g.
`msdyn_customergroupid.msdyn_groupid`) is resolved to the Dataverse row with that column value —
in the row's own company when the target table is striped by company — and back; default-value
rows (`none >> customertypecode = 3`, `PARTYTYPE << Organization`) set their side, and the Default
value transforms of the parameters (`table_maps[].defaults`, e.g. `CUSTOMERGROUPID: "30"`) fill
F&O fields the Dataverse row leaves empty, as dual-write does with the same transforms. Column rows
with a value transform (`><`) are left out: the catalogue does not hold their value maps.

Example:
    >>> to_dataverse_value("1,000.50".replace(",", ""), "Decimal"), to_dataverse_value("Yes", "Boolean")
    (1000.5, True)
    >>> to_finops_text(True), to_finops_text(None), same("500.0", 500), same("", None)
    ('Yes', '', True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dwlib import catalog

from .dvmeta import TableInfo, Tables

if TYPE_CHECKING:
    from dwlib.clients.dataverse import DataverseClient

_INTEGER = ("Integer", "BigInt", "Picklist", "State", "Status")
_NUMBER = ("Decimal", "Money", "Double")


def to_dataverse_value(text: str, kind: str) -> Any:
    """A package value (text) as the Dataverse column type `kind` wants it; "" is null."""
    if text == "":
        return None
    if kind in _INTEGER:
        return int(float(text))
    if kind in _NUMBER:
        return float(text)
    if kind == "Boolean":
        return text.strip().lower() in ("yes", "true", "1")
    return text


def to_finops_text(value: Any) -> str:
    """A Dataverse value as package text (F&O writes booleans as Yes/No)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return str(value)


def same(a: Any, b: Any) -> bool:
    """Whether two values mean the same across the sides (null = "", numbers by value, Yes = true)."""
    x, y = to_finops_text(a), to_finops_text(b)
    if x == y:
        return True
    try:
        return float(x) == float(y)
    except ValueError:
        return False


@dataclass(frozen=True)
class LookupColumn:
    """A lookup column row: the navigation property, its column (`_x_value`), target and its column."""

    nav: str
    column: str
    target: TableInfo
    target_column: str
    by_company: bool  # match the target row in the row's own company


class Lookups:
    """Dataverse rows by a column value (and company), and values by row id, read once per table."""

    def __init__(self, dataverse: DataverseClient) -> None:
        self.dataverse = dataverse
        self._ids: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
        self._values: dict[tuple[str, str], dict[str, str]] = {}

    def _load(self, lk: LookupColumn) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
        key = (lk.target.entity_set, lk.target_column)
        if key not in self._ids:
            company = lk.target.company_lookup()
            company_col = company[1].column if company else None
            select = [lk.target.primary_id, lk.target_column, *([company_col] if company_col else [])]
            ids: dict[tuple[str, str], str] = {}
            values: dict[str, str] = {}
            for row in self.dataverse.query(lk.target.entity_set, select=select):
                value = to_finops_text(row.get(lk.target_column))
                values[row[lk.target.primary_id]] = value  # "" when the row has no value there
                if value:
                    owner = str(row.get(company_col) or "") if company_col else ""
                    ids.setdefault((value.lower(), owner), row[lk.target.primary_id])
            self._ids[key], self._values[key] = ids, values
        return self._ids[key], self._values[key]

    def id_of(self, lk: LookupColumn, value: str, company_id: str) -> str | None:
        """The target row whose column is `value` (in `company_id` when the lookup is by company)."""
        return self._load(lk)[0].get((value.lower(), company_id if lk.by_company else ""))

    def value_of(self, lk: LookupColumn, row_id: str) -> str | None:
        """The target row's column value ("" when empty); None when there is no such row."""
        return self._load(lk)[1].get(row_id)

    def forget(self, entity_set: str) -> None:
        """Drop what was read of `entity_set` (rows were written to it)."""
        for key in [k for k in self._ids if k[0] == entity_set]:
            del self._ids[key], self._values[key]


class RowMap:
    """How one map's rows convert between an F&O package and a Dataverse table (see the module)."""

    def __init__(self, m: catalog.TableMap, info: TableInfo, tables: Tables, fields: Sequence[str],
                 lookups: Lookups, defaults: Mapping[str, str] | None = None) -> None:
        self.map = m
        self.info = info
        self.lookups = lookups
        self.company = info.company_lookup() if m.company_specific else None
        have = set(fields)
        # Default value transforms (F&O field → value for an empty Dataverse value), as the map has
        # them in dual-write, for the fields the package holds.
        self.defaults = {k.upper(): v for k, v in (defaults or {}).items() if k.upper() in have}
        self.plain: list[catalog.ColumnMapping] = []
        self.lookup_rows: list[tuple[catalog.ColumnMapping, LookupColumn]] = []
        self.skipped: list[str] = []
        for c in m.mappings:
            where = f"{c.finops or 'none'} {c.direction} {c.dataverse or 'none'}"
            if c.direction == "><":
                self.skipped.append(f"{where}: value transform")
            elif c.finops is None or c.dataverse is None:
                self._default(c, have, where)
            elif c.finops.upper() not in have:
                self.skipped.append(f"{where}: F&O field not exported")
            elif c.lookup is not None:
                self._lookup(c, tables, where)
            elif c.dataverse in info.attributes:
                self.plain.append(c)
            else:
                self.skipped.append(f"{where}: no such Dataverse column")
        self.finops_key = m.finops_key[0].upper()
        self.dataverse_key = m.dataverse_key[0]

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

    # --- F&O → Dataverse ---------------------------------------------------------------------------

    def finops_eligible(self, row: Mapping[str, str]) -> bool:
        """Key set and the map's source filter true (what the initial sync exports)."""
        upper = {k.upper(): v for k, v in row.items()}
        conditions = self.map.finops_conditions
        return bool(row.get(self.finops_key)) and all(
            cond.matches({cond.column: upper.get(cond.column.upper())}) for cond in conditions)

    def to_dataverse(self, row: Mapping[str, str], company_id: str) -> tuple[dict[str, Any], list[str]]:
        """Dataverse values (lookups as `nav@odata.bind`) and the lookup values not found."""
        out: dict[str, Any] = {}
        for c in self.plain:
            if c.dataverse is None or not c.to_dataverse:
                continue
            out[c.dataverse] = c.default if c.finops is None else to_dataverse_value(
                row.get(c.finops.upper(), ""), self.info.attributes[c.dataverse])
        missing = []
        for c, lk in self.lookup_rows:
            value = row.get((c.finops or "").upper(), "") if c.to_dataverse else ""
            if not value:
                continue
            target_id = self.lookups.id_of(lk, value, company_id)
            if target_id is None:
                missing.append(f"{lk.nav} {lk.target_column} '{value}'")
            else:
                out[f"{lk.nav}@odata.bind"] = f"{lk.target.entity_set}({target_id})"
        return out, missing

    def dataverse_differs(self, values: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
        """Whether the Dataverse `row` holds other values than `values` (from `to_dataverse`)."""
        for _, lk in self.lookup_rows:
            bind = values.get(f"{lk.nav}@odata.bind")
            if bind is not None and bind != f"{lk.target.entity_set}({row.get(lk.column)})":
                return True
        return any(not same(v, row.get(k)) for k, v in values.items() if not k.endswith("@odata.bind"))

    def dataverse_select(self) -> list[str]:
        """The Dataverse columns to read for both directions."""
        company = [self.company[1].column] if self.company else []
        cols = [self.info.primary_id, self.dataverse_key, *(c.dataverse for c in self.plain if c.dataverse),
                *(lk.column for _, lk in self.lookup_rows), *company]
        return list(dict.fromkeys(c for c in cols if c))

    # --- Dataverse → F&O ---------------------------------------------------------------------------

    def to_finops(self, row: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
        """Package values (field → text) and the lookups whose target row was not found."""
        out: dict[str, str] = {}
        for c in self.plain:
            if c.finops is None or not c.to_finops:
                continue
            out[c.finops.upper()] = to_finops_text(c.default if c.dataverse is None else row.get(c.dataverse))
        missing = []
        for c, lk in self.lookup_rows:
            target_id = row.get(lk.column) if c.to_finops else None
            if not target_id or c.finops is None:
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
        return any(not same(v, row.get(k, "")) for k, v in values.items())
