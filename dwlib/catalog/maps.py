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
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

Direction = Literal["=", "><", ">", ">>", "<", "<<"]
_TO_DATAVERSE = {"=", "><", ">", ">>"}
_TO_FINOPS = {"=", "><", "<", "<<"}


class CatalogError(LookupError):
    """A name that is not in the catalogue."""


@dataclass(frozen=True)
class ColumnMapping:
    """One row of a table map: F&O column, map type symbol, Dataverse column, default value.

    A Dataverse column written `nav.column` is a lookup: the row refers to the table behind the
    navigation property `nav` by its `column` (e.g. `msdyn_customergroupid.msdyn_groupid`).

    Example:
        >>> ColumnMapping("CustomerGroupId", "=", "msdyn_customergroupid.msdyn_groupid").lookup
        ('msdyn_customergroupid', 'msdyn_groupid')
    """

    finops: str | None
    direction: Direction
    dataverse: str | None
    default: Any = None

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
        """OData semantics: `null ne ''` is true, `null eq x` is false unless x is null."""
        equal = row.get(self.column) == self.value
        return equal if self.op == "eq" else not equal


_FO_COND = re.compile(r'^\s*(\w+)\s*(==|!=)\s*"([^"]*)"\s*$')
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
    """Conditions of an F&O source filter such as `((PartyType == "Organization"))`.

    >>> parse_finops_filter('((PartyType == "Person"))')
    (Condition(column='PartyType', op='eq', value='Person'),)
    """
    body = text.strip()
    while body.startswith("(") and body.endswith(")"):
        body = body[1:-1].strip()
    conds = []
    for part in filter(None, (p.strip("() ") for p in body.split("&&"))):
        m = _FO_COND.match(part)
        if not m:
            raise ValueError(f"unsupported F&O filter clause {part!r} in {text!r}")
        conds.append(Condition(m[1], "eq" if m[2] == "==" else "ne", m[3]))
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
    single_threaded: bool
    depends_on: tuple[str, ...]
    sequence: int
    package: str
    version: str
    docs: tuple[str, ...]

    @property
    def lookup_count(self) -> int:
        """Lookup columns on the Dataverse side (the initial sync fails above `max_lookups`)."""
        return sum(1 for m in self.mappings if m.lookup is not None)

    @property
    def finops_conditions(self) -> tuple[Condition, ...]:
        return parse_finops_filter(self.source_filter)

    @property
    def dataverse_conditions(self) -> tuple[Condition, ...]:
        return parse_dataverse_filter(self.dataverse_filter)

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
    max_lookups: int
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
    return yaml.safe_load(text)


def _build(raw: dict[str, Any]) -> TableMap:
    rows = tuple(
        ColumnMapping(r.get("finops"), r["dir"], r.get("dataverse"), r.get("default"))
        for r in raw["mappings"]
    )
    tuples = {"finops_key", "integration_key", "depends_on", "docs"}
    fields = {k: (tuple(v) if k in tuples else v) for k, v in raw.items() if k != "mappings"}
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
