"""Table maps: the data of `table_maps.yaml` as typed objects, and the documented run order.

Example:
    >>> m = table_map("Customers V3 (contacts)")
    >>> m.dataverse_table, m.single_threaded
    ('contacts', False)
    >>> dependency_order(["Customers V3 (contacts)"])[-1]
    'Customers V3 (contacts)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any, Literal

import yaml

Direction = Literal["=", "><", ">", ">>", "<", "<<"]
_TO_DATAVERSE = {"=", "><", ">", ">>"}
_TO_FINOPS = {"=", "><", "<", "<<"}


class CatalogError(LookupError):
    """A name that is not in the catalogue."""


class ValueMapError(ValueError):
    """A value a map's value map has no entry for (dual-write cannot convert it either)."""


_ENUM_NAME = re.compile(r"^[a-z][A-Za-z]*$")


def _finops_name(key: str) -> str:
    """A value map's F&O value as F&O writes it: the docs list enum names in lower camel case
    (`currentMth`), F&O OData returns them capitalised (`CurrentMth`); other values (language codes
    such as `nl-be`) are kept as documented.

    >>> _finops_name("currentMth"), _finops_name("nl-be")
    ('CurrentMth', 'nl-be')
    """
    return key[:1].upper() + key[1:] if _ENUM_NAME.match(key) else key


@dataclass(frozen=True)
class ColumnMapping:
    """One row of a table map: F&O column, map type symbol, Dataverse column, default value.

    A Dataverse column written `nav.column` is a lookup: the row refers to the table behind the
    navigation property `nav` by its `column` (e.g. `msdyn_customergroupid.msdyn_groupid`).
    A row with a value transform (`><`) carries its value map in `values` (F&O enum value →
    Dataverse value, as the mapping reference lists them); None when no source gives it.
    `source` says where the row is documented (`OLD`, `REF`, `INFERRED`, `unsourced`).

    Example:
        >>> ColumnMapping("CustomerGroupId", "=", "msdyn_customergroupid.msdyn_groupid").lookup
        ('msdyn_customergroupid', 'msdyn_groupid')
        >>> hold = ColumnMapping("OnHoldStatus", "><", "msdyn_onholdstatus",
        ...                      values=(("no", 806380000), ("invoice", 806380001)))
        >>> hold.to_dataverse_value("Invoice"), hold.to_finops_value(806380000)
        (806380001, 'No')
    """

    finops: str | None
    direction: Direction
    dataverse: str | None
    default: Any = None
    values: tuple[tuple[str, Any], ...] | None = None
    source: str = ""
    values_source: str = ""

    @property
    def value_map_missing(self) -> bool:
        """A value transform whose value list no source documents: its values cannot be converted."""
        return self.direction == "><" and self.values is None

    def to_dataverse_value(self, value: Any) -> Any:
        """The Dataverse value of F&O value `value` (enum names compare case-insensitively);
        None for an empty value; ValueMapError when the value map has no entry for it."""
        if value in (None, ""):
            return None
        assert self.values is not None
        wanted = str(value).strip().lower()
        for name, dv in self.values:
            if name.lower() == wanted:
                return dv
        raise ValueMapError(f"{self.finops} value {value!r} has no entry in the value map of "
                            f"{self.dataverse} "
                            f"({', '.join(n for n, _ in self.values)})")

    def to_finops_value(self, value: Any) -> str | None:
        """The F&O value of Dataverse value `value`; None for an empty value; ValueMapError when the
        value map has no entry for it."""
        if value is None or value == "":
            return None
        assert self.values is not None
        for name, dv in self.values:
            if dv == value and type(dv) is type(value):  # True is not 1 here
                return _finops_name(name)
        raise ValueMapError(f"{self.dataverse} value {value!r} has no entry in the value map of "
                            f"{self.finops} "
                            f"({', '.join(str(v) for _, v in self.values)})")

    @property
    def lookup(self) -> tuple[str, str] | None:
        """`(navigation property, column it is matched on)` for a lookup row, else None."""
        if self.dataverse is None or "." not in self.dataverse:
            return None
        nav, _, col = self.dataverse.partition(".")
        return nav, col

    @property
    def to_dataverse(self) -> bool:
        """True when this row writes into Dataverse (F&O → Dataverse)."""
        return self.direction in _TO_DATAVERSE and self.dataverse is not None

    @property
    def to_finops(self) -> bool:
        """True when this row writes into F&O (Dataverse → F&O)."""
        return self.direction in _TO_FINOPS and self.finops is not None


@dataclass(frozen=True)
class Condition:
    """One comparison of a source filter: `column op value` with op `eq` or `ne`.

    Example:
        >>> Condition("customertypecode", "eq", 3).matches({"customertypecode": 3})
        True
    """

    column: str
    op: Literal["eq", "ne"]
    value: Any

    def matches(self, row: Mapping[str, Any]) -> bool:
        """OData semantics: `null ne ''` is true, `null eq x` is false unless x is null. Text compares
        case-insensitively, as SQL Server does (enum names of F&O filters included).

        >>> Condition("PartyType", "eq", "Person").matches({"PartyType": "person"})
        True
        """
        found = row.get(self.column)
        if isinstance(self.value, str) and found is not None and not isinstance(found, bool):
            equal = str(found).lower() == self.value.lower()
        else:
            equal = found == self.value
        return equal if self.op == "eq" else not equal


_FO_COND = re.compile(r'^\s*(\w+)\s*(==|=|!=)\s*(?:"([^"]*)"|(\w+))\s*$')
_DV_COND = re.compile(r"^\s*(\w+)\s+(eq|ne)\s+(.+?)\s*$")


def _dv_literal(text: str) -> Any:
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def parse_finops_filter(text: str) -> tuple[Condition, ...]:
    """Conditions of an F&O source filter such as `((PartyType == "Organization"))` (a bare value,
    as in CDS Contacts V2's `(AssociatedContactType = 1)`, is compared as text too).

    >>> parse_finops_filter('((PartyType == "Person"))')
    (Condition(column='PartyType', op='eq', value='Person'),)
    >>> parse_finops_filter('(AssociatedContactType = 1)')[0].value
    '1'
    """
    body = text.strip()
    while body.startswith("(") and body.endswith(")"):
        body = body[1:-1].strip()
    conds = []
    for part in filter(None, (p.strip("() ") for p in body.split("&&"))):
        m = _FO_COND.match(part)
        if not m:
            raise ValueError(f"unsupported F&O filter clause {part!r} in {text!r}")
        conds.append(Condition(m[1], "ne" if m[2] == "!=" else "eq", m[3] if m[3] is not None else m[4]))
    return tuple(conds)


def parse_dataverse_filter(text: str) -> tuple[Condition, ...]:
    """Conditions of a Dataverse (OData) filter made of `col eq|ne literal` joined by `and`.

    >>> parse_dataverse_filter("msdyn_sellable eq true  and msdyn_contactpersonid ne null")[1].value is None
    True
    """
    conds = []
    for part in filter(None, (p.strip() for p in re.split(r"\s+and\s+", text.strip()))):
        m = _DV_COND.match(part)
        if not m:
            raise ValueError(f"unsupported Dataverse filter clause {part!r} in {text!r}")
        conds.append(Condition(m[1], m[2], _dv_literal(m[3])))  # type: ignore[arg-type]
    return tuple(conds)


@dataclass(frozen=True)
class TableMap:
    """A dual-write table map (see `table_maps.yaml` for the meaning of each field).

    Example:
        >>> m = table_map("customers-v3-accounts")
        >>> m.finops_conditions[0].value, m.dataverse_conditions[0].value
        ('Organization', 3)
    """

    name: str
    id: str
    finops_entity: str
    finops_data_entity: str
    finops_entity_set: str | None
    dataverse_table: str
    dataverse_logical: str
    company_specific: bool
    finops_key: tuple[str, ...]
    integration_key: tuple[str, ...]
    source_filter: str
    dataverse_filter: str
    mappings: tuple[ColumnMapping, ...]
    mappings_complete: bool
    mappings_source: str
    single_threaded: bool
    depends_on: tuple[str, ...]
    sequence: int
    package: str
    version: str
    docs: tuple[str, ...]

    @property
    def lookup_count(self) -> int:
        """Lookup columns on the Dataverse side (the initial sync fails at `failing_lookups` or more)."""
        return sum(1 for m in self.mappings if m.lookup is not None)

    @cached_property  # parsed once: every row of a migration is checked against it
    def finops_conditions(self) -> tuple[Condition, ...]:
        """The source filter's conditions, on the fields as the map's rows spell them (filters are
        published with upper-case names, `CURRENCYCODE != "999"`; OData names are case-sensitive).

        >>> table_map("currencies").finops_conditions
        (Condition(column='CurrencyCode', op='ne', value='999'),)
        """
        fields = {c.finops.upper(): c.finops for c in self.mappings if c.finops}
        return tuple(Condition(fields.get(c.column.upper(), c.column), c.op, c.value)
                     for c in parse_finops_filter(self.source_filter))

    @cached_property
    def dataverse_conditions(self) -> tuple[Condition, ...]:
        return parse_dataverse_filter(self.dataverse_filter)

    @property
    def unsourced(self) -> list[ColumnMapping]:
        """Rows, or value maps, that no Microsoft source documents (kept, and marked, in the YAML)."""
        return [c for c in self.mappings if c.source == "unsourced" or c.values_source == "unsourced"
                or c.value_map_missing]

    @property
    def dataverse_key(self) -> tuple[str, ...]:
        """Integration key columns of the Dataverse table itself (without the company part)."""
        return tuple(k for k in self.integration_key if "." not in k)


@dataclass(frozen=True)
class Limits:
    """The documented dual-write limits (see `table_maps.yaml`).

    Example:
        >>> limits().initial_sync_legal_entities
        40
    """

    initial_sync_rows_per_legal_entity: int
    single_threaded_dataverse_to_finops_rows: int
    failing_lookups: int  # a map with this many Dataverse lookups or more fails the initial sync
    initial_sync_legal_entities: int
    live_sync_legal_entities: int
    top_errors: int
    live_transaction_records: int
    live_transaction_ms: int
    live_payload_bytes: int
    initial_sync_export_ms: int
    pause_max_seconds: int
    pause_max_bytes: int


@cache
def _data() -> dict[str, Any]:
    text = resources.files("dwlib.catalog").joinpath("table_maps.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def _row(raw: dict[str, Any], source: str) -> ColumnMapping:
    values = raw.get("values")
    return ColumnMapping(raw.get("finops"), raw["dir"], raw.get("dataverse"), raw.get("default"),
                         tuple(values.items()) if values is not None else None,
                         raw.get("source", source), raw.get("values_source", ""))


def _build(raw: dict[str, Any]) -> TableMap:
    rows = tuple(_row(r, raw["mappings_source"].split(":")[0]) for r in raw["mappings"])
    tuples = {"finops_key", "integration_key", "depends_on", "docs"}
    fields: dict[str, Any] = {k: (tuple(v) if k in tuples else v) for k, v in raw.items() if k != "mappings"}
    return TableMap(mappings=rows, **fields)


@cache
def table_maps() -> tuple[TableMap, ...]:
    """Every table map of the catalogue, in the documented order.

    >>> [m.id for m in table_maps()][:2]
    ['currencies', 'legal-entities']
    """
    maps = tuple(sorted((_build(r) for r in _data()["maps"]), key=lambda m: m.sequence))
    names = {m.name for m in maps}
    for m in maps:
        missing = set(m.depends_on) - names
        if missing:
            raise ValueError(f"table map {m.name!r} depends on unknown maps {sorted(missing)}")
    return maps


def table_map(name_or_id: str) -> TableMap:
    """The map with this UI name or id (case-insensitive); CatalogError names the known ones.

    >>> table_map("LEGAL ENTITIES (CDM_COMPANIES)").id
    'legal-entities'
    """
    key = name_or_id.strip().lower()
    for m in table_maps():
        if key in (m.name.lower(), m.id):
            return m
    known = ", ".join(m.name for m in table_maps())
    raise CatalogError(f"unknown table map {name_or_id!r}; known maps: {known}")


def maps_named(name: str) -> list[TableMap]:
    """The maps a name in the parameters stands for: a map's UI name or id, or an F&O entity
    (then all of its maps); CatalogError when it names none.

    >>> [m.name for m in maps_named("Customers V3")]
    ['Customers V3 (accounts)', 'Customers V3 (contacts)']
    """
    try:
        return [table_map(name)]
    except CatalogError:
        same = [m for m in table_maps() if m.finops_entity.lower() == name.strip().lower()]
        if not same:
            raise
        return same


def limits() -> Limits:
    """The documented limits of dual-write (initial sync, live sync, pause)."""
    return Limits(**_data()["limits"])


def dependency_order(names: Iterable[str], *, include_dependencies: bool = True) -> list[str]:
    """Map names in the order to run them: every map after the maps it depends on.

    With `include_dependencies` the prerequisites of the given maps are added (what the Run
    dialog offers as related maps); ties keep the documented Finance order.

    >>> dependency_order(["Customers V3 (contacts)"])  # doctest: +NORMALIZE_WHITESPACE
    ['Currencies (transactioncurrencies)', 'Legal entities (cdm_companies)',
     'Terms of payment (msdyn_paymentterms)', 'Customer groups (msdyn_customergroups)',
     'Customers V3 (contacts)']
    """
    wanted = {table_map(n).name for n in names}
    if include_dependencies:
        stack = list(wanted)
        while stack:
            for dep in table_map(stack.pop()).depends_on:
                if dep not in wanted:
                    wanted.add(dep)
                    stack.append(dep)
    ordered: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in sorted(table_map(name).depends_on, key=lambda d: table_map(d).sequence):
            if dep in wanted:
                visit(dep)
        ordered.append(name)

    for m in table_maps():
        if m.name in wanted:
            visit(m.name)
    return ordered


def related_maps(name: str) -> list[str]:
    """The maps a map needs before it (transitively), in run order, without the map itself.

    >>> related_maps("Customer groups (msdyn_customergroups)")
    ['Legal entities (cdm_companies)', 'Terms of payment (msdyn_paymentterms)']
    """
    own = table_map(name).name
    return [n for n in dependency_order([own]) if n != own]
