"""How a catalogue table map applies to the sandbox's tables.

A `MapBinding` keeps the column rows of a map that both sides of the sandbox can hold, the keys
on each side, the source filters, and converts a row of one side into the values of the other,
resolving lookups (`nav.column`) in Dataverse and checking rows for F&O with F&O's own table
rules (`fo_rules`, as OData and DMF writes are). The initial sync and the live sync both convert
rows here, so the two never disagree.

Example:
    >>> from dwlib import catalog
    >>> b = binding(catalog.table_map("Customers V3 (accounts)"))
    >>> b.fo_key, b.dv_key
    ('CustomerAccount', 'accountnumber')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from dwlib import catalog

from . import fo_rules
from .schema import ENTITIES, Entity
from .store import Store, quote

COMPANY = "_msdyn_company_value"


@dataclass(frozen=True)
class LookupRef:
    """A Dataverse lookup of a map row: `nav` on the map's table, matched on `column` of `target`."""

    nav: str
    column: str
    target: Entity
    fk: str  # the `_nav_value` column on the map's table

    @property
    def text(self) -> str:
        return f"{self.nav}.{self.column}"

    @property
    def company_scoped(self) -> bool:
        return COMPANY in self.target.all_columns


class Rejected(Exception):
    """A row the other side refuses; `field` is the source field the docs' error lists name."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Binding:
    """One emulated column row of a map; `values` is its value map (a transform), if any."""

    finops: str | None
    dataverse: str | None
    lookup: LookupRef | None
    to_dataverse: bool
    to_finops: bool
    bidirectional: bool
    default: Any  # one-sided row: the value it writes; two-sided: the value for an empty source
    values: catalog.ColumnMapping | None = None

    def finops_value(self, source: Any) -> Any:
        """The value written to F&O for Dataverse value `source`: through the value map, and the
        Default transform when empty. Rejected when the value map has no entry for it.

        >>> b = Binding("CustomerGroupId", None, None, True, True, True, "30")
        >>> b.finops_value(None), b.finops_value("10")
        ('30', '10')
        """
        if self.values is not None:
            source = self._convert(self.values.to_finops_value, source, self.dataverse)
        return self.default if source in (None, "") and self.default is not None else source

    def dataverse_value(self, source: Any) -> Any:
        """The value written to Dataverse for F&O value `source` (through the value map, if any).

        >>> row = catalog.ColumnMapping("OnHoldStatus", "><", "msdyn_onholdstatus", values=(("all", 2),))
        >>> b = Binding("OnHoldStatus", "msdyn_onholdstatus", None, True, True, True, None, row)
        >>> b.dataverse_value("All")
        2
        """
        if self.values is None:
            return source
        return self._convert(self.values.to_dataverse_value, source, self.finops)

    @staticmethod
    def _convert(convert: Any, value: Any, field: str | None) -> Any:
        try:
            return convert(value)
        except catalog.ValueMapError as exc:
            raise Rejected(f"Value transform failed: {exc}.", field or "") from None


@dataclass
class Company:
    """A linked legal entity as Dataverse knows it (`cdm_companies` and its owner team)."""

    code: str
    id: str
    team: str | None
    bu: str | None

    @property
    def data_area(self) -> str:
        # F&O returns dataAreaId in lower case; the store compares text case-insensitively anyway.
        return self.code.lower()


def companies(store: Store) -> dict[str, Company]:
    """Every `cdm_companies` row by lower-case company code."""
    ent = ENTITIES["cdm_companies"]
    out: dict[str, Company] = {}
    for r in store.find(ent, {}):
        code = r.get("cdm_companycode") or ""
        team = r.get("_cdm_defaultowningteam_value")
        bu = None
        if team:
            t = store.get(ENTITIES["teams"], {"teamid": team})
            bu = t.get("_businessunitid_value") if t else None
        out[code.lower()] = Company(code, r["cdm_companyid"], team, bu)
    return out


class Resolver:
    """Resolves Dataverse lookups (value → id, id → value) and F&O references, with caches.

    `bulk=True` loads a whole lookup target table per company at first use and remembers the F&O
    references it found (initial sync); otherwise one indexed query per value (live sync).
    """

    def __init__(self, store: Store, dataverse_url: str, *, bulk: bool = False) -> None:
        self.store = store
        self.dataverse_url = dataverse_url
        self.bulk = bulk
        self.finops_references = fo_rules.References(store, cache=bulk)
        self._by_value: dict[tuple[str, str, str | None], dict[str, str]] = {}
        self._by_id: dict[str, dict[str, Any]] = {}

    def _scope(self, ref: LookupRef, company_id: str | None) -> dict[str, Any]:
        return {COMPANY: company_id} if ref.company_scoped else {}

    def id_for(self, ref: LookupRef, value: Any, company_id: str | None) -> str | None:
        """The id of the `ref.target` row whose `ref.column` equals `value` (in the company)."""
        pk = ref.target.key[0]
        if not self.bulk:
            rows = self.store.find(ref.target, {ref.column: value, **self._scope(ref, company_id)}, limit=1)
            return rows[0][pk] if rows else None
        key = (ref.target.name, ref.column, company_id if ref.company_scoped else None)
        if key not in self._by_value:
            where = f"{quote(COMPANY)} = ?" if ref.company_scoped else "1"
            sql = f"SELECT {quote(pk)}, {quote(ref.column)} FROM {quote(ref.target.table)} WHERE {where}"
            params = [company_id] if ref.company_scoped else []
            self._by_value[key] = {
                str(v).lower(): i for i, v in self.store.query(sql, params) if v is not None
            }
        return self._by_value[key].get(str(value).lower())

    def value_for(self, ref: LookupRef, row_id: str) -> Any:
        """The `ref.column` value of the `ref.target` row with id `row_id` (None if gone)."""
        cache_ = self._by_id.setdefault(ref.text + "|" + ref.target.name, {})
        if row_id not in cache_:
            row = self.store.get(ref.target, {ref.target.key[0]: row_id})
            cache_[row_id] = row.get(ref.column) if row else None
        return cache_[row_id]

    def not_found(self, ref: LookupRef, value: Any) -> Rejected:
        """The documented initial-sync error for a lookup value missing in Dataverse."""
        url = f"{self.dataverse_url}/api/data/v9.2/{ref.target.name}?$filter={ref.column} eq '{value}'"
        return Rejected(
            f"Couldn't resolve the guid for the field: {ref.text}. The lookup wasn't found: {value}. "
            f"Try this URL(s) to check if the reference data exists: {url}",
            ref.text,
        )


def _norm(value: Any) -> Any:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


@dataclass(frozen=True)
class MapBinding:
    """A catalogue map bound to the sandbox's entity sets (see module docstring)."""

    map: catalog.TableMap
    fo: Entity | None
    dv: Entity
    bindings: tuple[Binding, ...]
    fo_key: str
    dv_key: str

    @property
    def has_data(self) -> bool:
        """False when the sandbox holds no F&O data for this map (no public entity set)."""
        return self.fo is not None

    @staticmethod
    def key(value: Any) -> str:
        """Keys compare case-insensitively, as on SQL Server."""
        return str(value).lower()

    def fo_eligible(self, row: dict[str, Any]) -> bool:
        return bool(row.get(self.fo_key)) and all(c.matches(row) for c in self.map.finops_conditions)

    def dv_eligible(self, row: dict[str, Any]) -> bool:
        if self.map.company_specific and not row.get(COMPANY):
            return False  # "Only rows that have company data are eligible for dual-write"
        return bool(row.get(self.dv_key)) and all(c.matches(row) for c in self.map.dataverse_conditions)

    def to_dataverse(
        self, fo_row: dict[str, Any], company: Company | None, resolver: Resolver
    ) -> dict[str, Any]:
        """The Dataverse values for an F&O row; raises Rejected when a lookup does not resolve."""
        out: dict[str, Any] = {}
        for b in self.bindings:
            if not b.to_dataverse:
                continue
            if b.finops is None:
                out[b.dataverse or ""] = b.default
            elif b.lookup is not None:
                value = fo_row.get(b.finops)
                if value in (None, ""):
                    out[b.lookup.fk] = None
                    continue
                found = resolver.id_for(b.lookup, value, company.id if company else None)
                if found is None:
                    raise resolver.not_found(b.lookup, value)
                out[b.lookup.fk] = found
            else:
                out[b.dataverse or ""] = b.dataverse_value(fo_row.get(b.finops))
        if company is not None:
            if self.map.company_specific:
                out[COMPANY] = company.id
            if company.team:
                out["_ownerid_value"] = company.team  # owned by the company's "<CODE> DW" team
            if company.bu:
                out["_owningbusinessunit_value"] = company.bu
        if "fullname" in self.dv.columns and ("firstname" in out or "lastname" in out):
            out["fullname"] = " ".join(p for p in (out.get("firstname"), out.get("lastname")) if p)
        return out

    def to_finops(
        self,
        dv_row: dict[str, Any],
        data_area: str | None,
        resolver: Resolver,
        existing: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The F&O values for a Dataverse row, to create a row or update `existing`; raises Rejected
        when F&O refuses the result (mandatory fields, references it lacks: `fo_rules`)."""
        assert self.fo is not None
        out: dict[str, Any] = {}
        for b in self.bindings:
            if not b.to_finops or b.finops is None:
                continue
            if b.dataverse is None and b.lookup is None:
                out[b.finops] = b.default
            else:
                out[b.finops] = b.finops_value(self._dataverse_value(b, dv_row, resolver))
        if self.map.company_specific and data_area is not None:
            out["dataAreaId"] = data_area
        after = out if existing is None else {**existing, **out}
        found = fo_rules.problems(resolver.store, self.fo, after, exists=resolver.finops_references)
        if found:
            raise Rejected(fo_rules.write_error(self.fo, fo_rules.infolog(found)).message, found[0].column)
        return out

    @staticmethod
    def _dataverse_value(b: Binding, dv_row: dict[str, Any], resolver: Resolver) -> Any:
        """The Dataverse value of a two-sided row (a lookup's `column` value, None when unset)."""
        if b.lookup is None:
            return dv_row.get(b.dataverse or "")
        ref_id = dv_row.get(b.lookup.fk)
        return resolver.value_for(b.lookup, ref_id) if ref_id else None

    def differs(self, fo_row: dict[str, Any], dv_row: dict[str, Any], resolver: Resolver) -> bool:
        """True when the two rows have competing values in a bidirectional column (a conflict); an
        empty Dataverse value with a Default transform counts as the default."""
        for b in self.bindings:
            if not b.bidirectional or b.finops is None:
                continue
            if b.lookup is not None:
                dv_value = b.finops_value(self._dataverse_value(b, dv_row, resolver))
                fo_value = fo_row.get(b.finops)
                if _norm(dv_value) is not None and _norm(fo_value) is not None:
                    if str(dv_value).lower() != str(fo_value).lower():
                        return True
                elif _norm(dv_value) != _norm(fo_value):
                    return True
            else:
                fo_value = fo_row.get(b.finops)
                if b.values is not None and isinstance(fo_value, str):
                    fo_value = fo_value.lower()  # enum names compare case-insensitively
                if _norm(fo_value) != _norm(self._finops_view(b, dv_row)):
                    return True
        return False

    @staticmethod
    def _finops_view(b: Binding, dv_row: dict[str, Any]) -> Any:
        """A Dataverse value as F&O would hold it; a value the value map lacks is a difference."""
        try:
            value = b.finops_value(dv_row.get(b.dataverse or ""))
        except Rejected:
            return dv_row.get(b.dataverse or "")
        return value.lower() if b.values is not None and isinstance(value, str) else value


def _entity(name: str | None) -> Entity | None:
    return ENTITIES.get(name) if name else None


def _lookup(dv: Entity, text: str) -> LookupRef | None:
    nav, _, column = text.partition(".")
    lk = dv.lookup(nav)  # maps name the lookup attribute (`parentcustomerid.accountnumber`)
    target = _entity(lk.target) if lk else None
    if lk is None or target is None or column not in target.columns:
        return None
    return LookupRef(nav, column, target, lk.column)


@cache
def binding(m: catalog.TableMap) -> MapBinding:
    """The sandbox binding of catalogue map `m` (column rows whose columns both sides hold)."""
    fo = _entity(m.finops_entity_set)
    dv = ENTITIES[m.dataverse_table]
    rows: list[Binding] = []
    for r in m.mappings:
        if fo is not None and r.finops is not None and r.finops not in fo.columns:
            continue
        if r.value_map_missing:
            continue  # no source gives its values: dual-write's conversion cannot be emulated
        lookup = _lookup(dv, r.dataverse) if r.lookup and r.dataverse is not None else None
        if r.dataverse is not None and (lookup is None if r.lookup else r.dataverse not in dv.columns):
            continue
        rows.append(
            Binding(
                finops=r.finops,
                dataverse=None if lookup else r.dataverse,
                lookup=lookup,
                to_dataverse=r.to_dataverse,
                to_finops=r.to_finops,
                bidirectional=r.direction in ("=", "><"),
                default=r.default,
                values=r if r.values is not None and r.finops and r.dataverse else None,
            )
        )
    fo_key = m.finops_key[0]
    dv_key = m.dataverse_key[0]
    bound = tuple(rows) if fo is not None else ()
    return MapBinding(m, fo, dv, bound, fo_key, dv_key)
