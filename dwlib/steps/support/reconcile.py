"""Counts and keys of a table map on both sides, per company: what initial sync and verify compare.

A row counts when dual-write would sync it: on the F&O side it has its key and passes the map's
source filter (e.g. `PartyType == "Organization"`); on the Dataverse side it has its key, its
company (`msdyn_company`, for company-specific maps: "Only rows that have company data are
eligible for dual-write") and passes the reversed filter (e.g. `customertypecode eq 3`). Keys
compare case-insensitively, as SQL Server does on both sides. Only the key columns are read
(`$select`), page after page, one company at a time; each side's keys go into a temporary SQLite
file (`spill`) that finds the missing ones, and those are kept as a `KeyList` (the first thousand
in memory, all of them on disk), so a table of a million rows takes the memory of a page.

With `values` (verify), the mapped columns are read too and each side's values are summed into
checksums as the pages arrive (`checksum`): a map and company reconcile when the checksums of both
sides are equal too; when they differ, a second pass finds a sample of the rows whose values differ,
with both sides' values.

Example:
    >>> r = Reconciliation("Customer groups (msdyn_customergroups)", "USMF",
    ...                    finops={"10": "10", "20": "20"}, dataverse={"10": "10"},
    ...                    finops_rows=2, dataverse_rows=1)
    >>> r.ok, r.missing_in_dataverse, r.row()["status"]
    (False, ['20'], 'FAIL')
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from dwlib import catalog

from .checksum import SAMPLE_BUCKETS, Checksums, Difference, differences, labels
from .dvmeta import Tables
from .rowmap import Lookups, RowMap
from .spill import KeyList, Spill

if TYPE_CHECKING:
    from dwlib.clients.session import Session

COMPANY_LOOKUP = "_msdyn_company_value"  # msdyn_company on accounts, contacts and the reference tables
GLOBAL = "(global)"
SAMPLE = 10


@dataclass(frozen=True)
class Reconciliation:
    """One map in one company (or `GLOBAL`): counts, and the keys missing on either side.

    `finops` and `dataverse` (normalised key → key as stored, or `Spilled`: a key table on disk)
    are what each side holds; only the missing keys (`KeyList`: all of them, a sample in memory)
    and the number of distinct keys are kept of them, so a run's reconciliations do not hold every
    key of every table."""

    map: str
    company: str
    finops: InitVar[Mapping[str, str] | Spilled]
    dataverse: InitVar[Mapping[str, str] | Spilled]
    finops_rows: int
    dataverse_rows: int
    note: str = ""
    columns_compared: int = 0  # mapped columns whose values were compared (0: keys only)
    finops_checksum: str = ""
    dataverse_checksum: str = ""
    differing: int = 0  # rows on both sides whose values differ (found in the sampled buckets)
    differences: tuple[Difference, ...] = ()
    missing_in_dataverse: KeyList = field(init=False)  # keys in F&O without a row in Dataverse (sorted)
    missing_in_finops: KeyList = field(init=False)  # keys in Dataverse without a row in F&O (sorted)
    distinct_keys: tuple[int, int] = field(init=False)  # (F&O, Dataverse)

    def __post_init__(self, finops: Mapping[str, str] | Spilled,
                      dataverse: Mapping[str, str] | Spilled) -> None:
        set_ = object.__setattr__  # frozen: the derived fields are set once, here
        if isinstance(finops, Spilled) and isinstance(dataverse, Spilled):
            spill = finops.spill
            set_(self, "missing_in_dataverse", KeyList(spill.missing(finops.table, dataverse.table)))
            set_(self, "missing_in_finops", KeyList(spill.missing(dataverse.table, finops.table)))
            set_(self, "distinct_keys", (spill.count(finops.table), spill.count(dataverse.table)))
            return
        assert not isinstance(finops, Spilled) and not isinstance(dataverse, Spilled), "both sides or neither"
        set_(self, "missing_in_dataverse", KeyList(sorted(v for k, v in finops.items()
                                                          if k not in dataverse)))
        set_(self, "missing_in_finops", KeyList(sorted(v for k, v in dataverse.items() if k not in finops)))
        set_(self, "distinct_keys", (len(finops), len(dataverse)))

    @property
    def duplicates(self) -> int:
        """Rows beyond one per key, on both sides (a key must identify one row)."""
        return (self.finops_rows - self.distinct_keys[0]) + (self.dataverse_rows - self.distinct_keys[1])

    @property
    def values_ok(self) -> bool:
        """Whether both sides' checksums are equal (true when values were not compared)."""
        return self.finops_checksum == self.dataverse_checksum

    @property
    def ok(self) -> bool:
        return self.finops_rows == self.dataverse_rows and self.values_ok and not (
            self.missing_in_dataverse or self.missing_in_finops or self.duplicates
        )

    def row(self, sample: int = SAMPLE) -> dict[str, Any]:
        """The reconciliation table row: counts, missing keys (a sample of `sample`), status."""
        return {
            "map": self.map,
            "company": self.company,
            "finops_rows": self.finops_rows,
            "dataverse_rows": self.dataverse_rows,
            "missing_in_dataverse": len(self.missing_in_dataverse),
            "missing_in_finops": len(self.missing_in_finops),
            "sample_missing_in_dataverse": ", ".join(self.missing_in_dataverse[:sample]),
            "sample_missing_in_finops": ", ".join(self.missing_in_finops[:sample]),
            "columns_compared": self.columns_compared,
            "differing_rows": self.differing,
            "sample_differing": ", ".join(d.key for d in self.differences[:sample]),
            "finops_checksum": self.finops_checksum,
            "dataverse_checksum": self.dataverse_checksum,
            "status": "PASS" if self.ok else "FAIL",
            "note": self.note,
        }

    def missing_rows(self) -> Iterable[dict[str, str]]:
        """Every missing key as a CSV row (map, company, where it is missing, key)."""
        for side, keys in (("Dataverse", self.missing_in_dataverse), ("F&O", self.missing_in_finops)):
            for key in keys:
                yield {"map": self.map, "company": self.company, "missing_in": side, "key": key}


@dataclass(frozen=True)
class Spilled:
    """One side's keys in a key table of a `Spill` (normalised key → key as stored): how `reconcile`
    hands a side to `Reconciliation` without a dict of every key."""

    spill: Spill
    table: str


@dataclass
class _Keys:
    keys: Spilled
    rows: int = 0
    sums: Checksums | None = None


View = tuple[str, str, list[str]]  # normalised key, key as stored, canonical values (empty: keys only)


@dataclass
class Values:
    """What comparing values needs: Dataverse metadata, lookup targets, the parameters' Default value
    transforms, how many differing rows to keep per map and company."""

    tables: Tables
    lookups: Lookups
    defaults: Callable[[str], Mapping[str, str]]
    sample: int = 10

    def rowmap(self, m: catalog.TableMap) -> RowMap:
        fields = [c.finops for c in m.mappings if c.finops]
        return RowMap(m, self.tables.info(m.dataverse_table), self.tables, fields, self.lookups,
                      self.defaults(m.name))


def reconcilable(m: catalog.TableMap) -> bool:
    """Whether the map's F&O side has a public collection to read (CDS Contacts V2 has none).

    >>> reconcilable(catalog.table_map("CDS Contacts V2 (contacts)"))
    False
    """
    return m.finops_entity_set is not None


def company_ids(session: Session) -> dict[str, str]:
    """Company code (upper case) → `cdm_companyid`, from Dataverse `cdm_companies`.

    company_ids(session)["USMF"]  → '6f1b0c57-…'
    """
    rows = session.dataverse.query("cdm_companies", select=["cdm_companyid", "cdm_companycode"])
    return {r["cdm_companycode"].upper(): r["cdm_companyid"] for r in rows if r.get("cdm_companycode")}


def _finops_views(session: Session, m: catalog.TableMap, company: str | None, rm: RowMap | None,
                  wanted: set[str] | None) -> Iterator[View]:
    assert m.finops_entity_set is not None
    key = m.finops_key[0]
    conditions = m.finops_conditions
    values = [c.finops for c in rm.compared() if c.finops] if rm else []
    select = list(dict.fromkeys([key, *(c.column for c in conditions), *values]))
    # The source filter is applied here, not in $filter: F&O wants enum literals there
    # (Microsoft.Dynamics.DataEntities.DirPartyType'Person'), which differ per enum.
    rows = session.finops.query(m.finops_entity_set, select=select, company=company,
                                cross_company=company is None)
    for row in rows:
        value = row.get(key)
        if value in (None, "") or not all(c.matches(row) for c in conditions):
            continue
        if wanted is None or str(value).lower() in wanted:
            yield str(value).lower(), str(value), rm.finops_view(row) if rm else []


def _dataverse_views(session: Session, m: catalog.TableMap, company_id: str | None, rm: RowMap | None,
                     wanted: set[str] | None) -> Iterator[View]:
    key = m.dataverse_key[0]
    clauses = [f"({m.dataverse_filter})"] if m.dataverse_filter else []
    if m.company_specific:
        clauses.append(company_clause(company_id or ""))
    select = rm.dataverse_select() if rm else [key]
    rows = session.dataverse.query(m.dataverse_table, select=select, filter=" and ".join(clauses) or None,
                                   expand=rm.dataverse_expand() if rm else None)
    for row in rows:
        value = row.get(key)
        if value in (None, "") or (wanted is not None and str(value).lower() not in wanted):
            continue
        yield str(value).lower(), str(value), rm.dataverse_view(row) if rm else []


def _side(views: Iterable[View], rm: RowMap | None, spill: Spill, table: str) -> _Keys:
    """One side's rows counted, their keys put into `spill`'s key table `table` and, with `rm`,
    their values summed into checksums: page by page, nothing per row kept in memory."""
    out = _Keys(Spilled(spill, table), sums=Checksums() if rm else None)

    def keys() -> Iterator[tuple[str, str]]:
        for key, stored, view in views:
            out.rows += 1
            if out.sums is not None:
                out.sums.add(key, view)
            yield key, stored

    spill.put_keys(table, keys())
    return out


def _compared(session: Session, m: catalog.TableMap, company: str, code: str | None, company_id: str | None,
              rm: RowMap | None, values: Values | None, wanted: set[str] | None) -> Reconciliation:
    with Spill() as spill:
        fo = _side(_finops_views(session, m, code, rm, wanted), rm, spill, "fo")
        dv = _side(_dataverse_views(session, m, company_id, rm, wanted), rm, spill, "dv")
        if rm is None or fo.sums is None or dv.sums is None or values is None:
            return Reconciliation(m.name, company, fo.keys, dv.keys, fo.rows, dv.rows)
        return _with_values(session, m, company, code, company_id, rm, values, wanted, fo, dv)


def _with_values(session: Session, m: catalog.TableMap, company: str, code: str | None,
                 company_id: str | None, rm: RowMap, values: Values, wanted: set[str] | None,
                 fo: _Keys, dv: _Keys) -> Reconciliation:
    """The reconciliation with the values compared: the checksums, and where they differ a second
    pass over a few differing buckets for a sample of the rows."""
    assert fo.sums is not None and dv.sums is not None
    found: list[Difference] = []
    count = 0
    buckets = fo.sums.differing(dv.sums)
    if buckets:  # second pass over the rows of a few differing buckets only
        found, count = differences(
            m.name, company, labels(rm.compared()), buckets[:SAMPLE_BUCKETS],
            _finops_views(session, m, code, rm, wanted), _dataverse_views(session, m, company_id, rm, wanted),
            limit=values.sample)
    note = (f"values differ in {len(buckets)} of {len(fo.sums.sums)} key buckets; {count} differing rows "
            f"found in {min(len(buckets), SAMPLE_BUCKETS)} of them") if buckets and count else ""
    return Reconciliation(m.name, company, fo.keys, dv.keys, fo.rows, dv.rows, note, len(rm.compared()),
                          fo.sums.total, dv.sums.total, count, tuple(found))


def reconcile_map(
    session: Session, m: catalog.TableMap, companies: Sequence[str], ids: dict[str, str],
    values: Values | None = None,
) -> list[Reconciliation]:
    """Reconcile one map: one result per company in `companies` (one `GLOBAL` result for a global
    map; the Legal entities map is limited to `companies`, the connection's legal entities); with
    `values`, the mapped columns' checksums too.

    [r.row() for r in reconcile_map(session, catalog.table_map("customer-groups"), ["USMF"], ids)]
    """
    rm = values.rowmap(m) if values is not None else None
    if not m.company_specific:
        wanted = {c.lower() for c in companies} if m.dataverse_table == "cdm_companies" else None
        return [_compared(session, m, GLOBAL, None, None, rm, values, wanted)]
    out = []
    for code in companies:
        company_id = ids.get(code.upper())
        if company_id is None:
            with Spill() as spill:
                fo = _side(_finops_views(session, m, code, None, None), None, spill, "fo")
                dv = _side((), None, spill, "dv")
                out.append(Reconciliation(m.name, code, fo.keys, dv.keys, fo.rows, 0,
                                          note=f"no cdm_companies row for {code} in Dataverse"))
            continue
        out.append(_compared(session, m, code, code, company_id, rm, values, None))
    return out


def reconcile(
    session: Session,
    maps: Sequence[str],
    companies: Sequence[str],
    *,
    on_map: Callable[[str], None] | None = None,
    values: Values | None = None,
) -> list[Reconciliation]:
    """Reconcile `maps` (names) for `companies` (codes); maps without F&O data are left out; with
    `values`, the mapped columns' values are compared too (checksums).

    rows = reconcile(session, ["Customers V3 (accounts)"], ["USMF", "GBSI"])
    [r.row() for r in rows if not r.ok]
    """
    ids = company_ids(session)
    out: list[Reconciliation] = []
    for name in maps:
        m = catalog.table_map(name)
        if reconcilable(m):
            out += reconcile_map(session, m, companies, ids, values)
        if on_map is not None:
            on_map(m.name)
    return out


@dataclass(frozen=True)
class Counts:
    """One map's rows dual-write would sync, per company (or `GLOBAL`), on each side."""

    map: str
    finops: dict[str, int]
    dataverse: dict[str, int]


def _finops_counts(session: Session, m: catalog.TableMap, companies: Sequence[str]) -> dict[str, int]:
    """F&O rows with their key that pass the source filter, per company: the key and the filter's
    fields read page by page and counted, nothing kept (F&O's OData has no `$apply`; the source
    filter is applied here, as in `_finops_views`)."""
    return {code: sum(1 for _ in _finops_views(session, m, code, None, None)) for code in companies}


def _dataverse_counts(session: Session, m: catalog.TableMap, companies: Sequence[str],
                      ids: Mapping[str, str]) -> dict[str, int]:
    """Dataverse rows with their key (and the map's filter), per company: one `$apply` aggregate
    grouped by the company lookup (`count_by`, which counts page by page where the service refuses
    an aggregate over 50,000 rows)."""
    key = m.dataverse_key[0]
    clauses = [f"({m.dataverse_filter})"] if m.dataverse_filter else []
    clauses.append(f"{key} ne null and {key} ne ''")
    found = session.dataverse.count_by(m.dataverse_table, [COMPANY_LOOKUP], filter=" and ".join(clauses))
    by_id = {str(r.get(COMPANY_LOOKUP) or "").lower(): int(r["count"]) for r in found}
    return {c: by_id.get(ids[c.upper()].lower(), 0) if c.upper() in ids else 0 for c in companies}


def count(session: Session, maps: Sequence[str], companies: Sequence[str]) -> list[Counts]:
    """The row counts `reconcile` would report for `maps` (names) in `companies` (codes), without
    holding key sets: company-specific maps are counted per company (F&O page by page, Dataverse by
    one `$apply` aggregate per map); global maps are small reference tables and are reconciled.
    Maps without F&O data are left out. Usage:
    `[(c.map, c.finops, c.dataverse) for c in count(session, ["Customers V3 (accounts)"], ["USMF"])]`.
    """
    ids = company_ids(session)
    out: list[Counts] = []
    for name in maps:
        m = catalog.table_map(name)
        if not reconcilable(m):
            continue
        if m.company_specific:
            out.append(Counts(m.name, _finops_counts(session, m, companies),
                              _dataverse_counts(session, m, companies, ids)))
        else:
            rec = reconcile_map(session, m, companies, ids)
            out.append(Counts(m.name, {r.company: r.finops_rows for r in rec},
                              {r.company: r.dataverse_rows for r in rec}))
    return out


def company_clause(company_id: str) -> str:
    """`$filter` clause for the Dataverse rows of one company (a GUID literal is unquoted).

    >>> company_clause("6F1B0C57-1111-2222-3333-444444444444")
    '_msdyn_company_value eq 6f1b0c57-1111-2222-3333-444444444444'
    """
    return f"{COMPANY_LOOKUP} eq {uuid.UUID(company_id)}"
