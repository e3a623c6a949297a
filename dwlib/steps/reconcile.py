"""Counts and keys of a table map on both sides, per company: what initial sync and verify compare.

A row counts when dual-write would sync it: on the F&O side it has its key and passes the map's
source filter (e.g. `PartyType == "Organization"`); on the Dataverse side it has its key, its
company (`msdyn_company`, for company-specific maps: "Only rows that have company data are
eligible for dual-write") and passes the reversed filter (e.g. `customertypecode eq 3`). Keys
compare case-insensitively, as SQL Server does on both sides. Only the key columns are read
(`$select`), page after page, one company at a time.

Example:
    >>> r = Reconciliation("Customer groups (msdyn_customergroups)", "USMF",
    ...                    finops={"10": "10", "20": "20"}, dataverse={"10": "10"},
    ...                    finops_rows=2, dataverse_rows=1)
    >>> r.ok, r.missing_in_dataverse, r.row()["status"]
    (False, ['20'], 'FAIL')
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dwlib import catalog

if TYPE_CHECKING:
    from dwlib.clients.session import Session

COMPANY_LOOKUP = "_msdyn_company_value"  # msdyn_company on accounts, contacts and the reference tables
GLOBAL = "(global)"
SAMPLE = 10


@dataclass(frozen=True)
class Reconciliation:
    """One map in one company (or `GLOBAL`): the keys each side holds (normalised → as stored)."""

    map: str
    company: str
    finops: dict[str, str]
    dataverse: dict[str, str]
    finops_rows: int
    dataverse_rows: int
    note: str = ""

    @property
    def missing_in_dataverse(self) -> list[str]:
        """Keys in F&O without a row in Dataverse (sorted)."""
        return sorted(v for k, v in self.finops.items() if k not in self.dataverse)

    @property
    def missing_in_finops(self) -> list[str]:
        """Keys in Dataverse without a row in F&O (sorted)."""
        return sorted(v for k, v in self.dataverse.items() if k not in self.finops)

    @property
    def duplicates(self) -> int:
        """Rows beyond one per key, on both sides (a key must identify one row)."""
        return (self.finops_rows - len(self.finops)) + (self.dataverse_rows - len(self.dataverse))

    @property
    def ok(self) -> bool:
        return self.finops_rows == self.dataverse_rows and not (
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
            "status": "PASS" if self.ok else "FAIL",
            "note": self.note,
        }

    def missing_rows(self) -> Iterable[dict[str, str]]:
        """Every missing key as a CSV row (map, company, where it is missing, key)."""
        for side, keys in (("Dataverse", self.missing_in_dataverse), ("F&O", self.missing_in_finops)):
            for key in keys:
                yield {"map": self.map, "company": self.company, "missing_in": side, "key": key}


@dataclass
class _Keys:
    keys: dict[str, str] = field(default_factory=dict)
    rows: int = 0

    def add(self, value: Any) -> None:
        self.rows += 1
        self.keys.setdefault(str(value).lower(), str(value))


def reconcilable(m: catalog.TableMap) -> bool:
    """Whether the map's F&O side has a public collection to read (CDS Contacts V2 has none).

    >>> reconcilable(catalog.table_map("CDS Contacts V2 (contacts)"))
    False
    """
    return m.finops_entity_set is not None


def company_ids(session: Session) -> dict[str, str]:
    """Company code (upper case) → `cdm_companyid`, from Dataverse `cdm_companies`.

    >>> # company_ids(session)["USMF"]  → '6f1b0c57-…'
    """
    rows = session.dataverse.query("cdm_companies", select=["cdm_companyid", "cdm_companycode"])
    return {r["cdm_companycode"].upper(): r["cdm_companyid"] for r in rows if r.get("cdm_companycode")}


def _finops_keys(session: Session, m: catalog.TableMap, company: str | None) -> _Keys:
    assert m.finops_entity_set is not None
    key = m.finops_key[0]
    conditions = m.finops_conditions
    select = list(dict.fromkeys([key, *(c.column for c in conditions)]))
    # The source filter is applied here, not in $filter: F&O wants enum literals there
    # (Microsoft.Dynamics.DataEntities.DirPartyType'Person'), which differ per enum.
    rows = session.finops.query(m.finops_entity_set, select=select, company=company,
                                cross_company=company is None)
    out = _Keys()
    for row in rows:
        if row.get(key) not in (None, "") and all(c.matches(row) for c in conditions):
            out.add(row[key])
    return out


def _dataverse_keys(session: Session, m: catalog.TableMap, company_id: str | None) -> _Keys:
    key = m.dataverse_key[0]
    clauses = [f"({m.dataverse_filter})"] if m.dataverse_filter else []
    if m.company_specific:
        clauses.append(company_clause(company_id or ""))
    rows = session.dataverse.query(m.dataverse_table, select=[key],
                                   filter=" and ".join(clauses) or None)
    out = _Keys()
    for row in rows:
        if row.get(key) not in (None, ""):
            out.add(row[key])
    return out


def _only(keys: _Keys, wanted: set[str]) -> _Keys:
    kept = {k: v for k, v in keys.keys.items() if k in wanted}
    return _Keys(kept, len(kept))


def reconcile_map(
    session: Session, m: catalog.TableMap, companies: Sequence[str], ids: dict[str, str]
) -> list[Reconciliation]:
    """Reconcile one map: one result per company in `companies` (one `GLOBAL` result for a global
    map; the Legal entities map is limited to `companies`, the connection's legal entities).

    >>> # [r.row() for r in reconcile_map(session, catalog.table_map("customer-groups"), ["USMF"], ids)]
    """
    if not m.company_specific:
        fo, dv = _finops_keys(session, m, None), _dataverse_keys(session, m, None)
        if m.dataverse_table == "cdm_companies":
            wanted = {c.lower() for c in companies}
            fo, dv = _only(fo, wanted), _only(dv, wanted)
        return [Reconciliation(m.name, GLOBAL, fo.keys, dv.keys, fo.rows, dv.rows)]
    out = []
    for code in companies:
        fo = _finops_keys(session, m, code)
        company_id = ids.get(code.upper())
        if company_id is None:
            out.append(Reconciliation(m.name, code, fo.keys, {}, fo.rows, 0,
                                      note=f"no cdm_companies row for {code} in Dataverse"))
            continue
        dv = _dataverse_keys(session, m, company_id)
        out.append(Reconciliation(m.name, code, fo.keys, dv.keys, fo.rows, dv.rows))
    return out


def reconcile(
    session: Session,
    maps: Sequence[str],
    companies: Sequence[str],
    *,
    on_map: Callable[[str], None] | None = None,
) -> list[Reconciliation]:
    """Reconcile `maps` (names) for `companies` (codes); maps without F&O data are left out.

    >>> # rows = reconcile(session, ["Customers V3 (accounts)"], ["USMF", "GBSI"])
    >>> # [r.row() for r in rows if not r.ok]
    """
    ids = company_ids(session)
    out: list[Reconciliation] = []
    for name in maps:
        m = catalog.table_map(name)
        if reconcilable(m):
            out += reconcile_map(session, m, companies, ids)
        if on_map is not None:
            on_map(m.name)
    return out


def company_clause(company_id: str) -> str:
    """`$filter` clause for the Dataverse rows of one company (a GUID literal is unquoted).

    >>> company_clause("6F1B0C57-1111-2222-3333-444444444444")
    '_msdyn_company_value eq 6f1b0c57-1111-2222-3333-444444444444'
    """
    return f"{COMPANY_LOOKUP} eq {uuid.UUID(company_id)}"
