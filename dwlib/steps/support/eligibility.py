"""Existing Dataverse rows that dual-write will not pick up: counted, listed and said, never silent.

A Dataverse row is synced by a map only when it has its company (company-specific maps: "Only rows
that have company data are eligible for dual-write", company-data.md), that company is in the
dual-write connection, the map's reversed filter is true for it (accounts: `customertypecode eq 3`,
Relationship Type Customer; contacts: `msdyn_sellable eq true` — customer-mapping.md) and it has
the map's key (an account number, a contact person id). Plan and verify scan the
Dataverse tables of the maps in scope, page by page, and for every row no map of its table picks
up give the first reason that applies (in that order), counted per table, company and reason;
`<step>-ineligible-rows.csv` lists every such row. The step is then a WARNING, with the documented
fix per reason: such rows are not an error in themselves (a prospect is not a customer), but
nobody should find out after go-live that they did not cross.

Example:
    >>> from dwlib import catalog
    >>> m = catalog.table_map("Customers V3 (accounts)")
    >>> co = {"C1": "USMF"}
    >>> why_not(m, {"accountnumber": "A-1", "customertypecode": 8, "_msdyn_company_value": "C1"}, co).text
    'customertypecode not 3'
    >>> why_not(m, {"accountnumber": None, "customertypecode": 3, "_msdyn_company_value": None}, co).text
    'no company'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.vocab import StepStatus

from ..base import Check, StepContext
from .dvmeta import Tables
from .reconcile import COMPANY_LOOKUP, GLOBAL, company_ids

if TYPE_CHECKING:
    from dwlib.clients.session import Session

COLUMNS = ["table", "company", "reason", "row_id", "key"]
NO_COMPANY = "(none)"
COMPANY_DOC = DOCS_ROOT + "company-data"
CUSTOMER_DOC = DOCS_ROOT + "customer-mapping"
KEYS_DOC = DOCS_ROOT + "dual-write-integration-keys"
LEGAL_ENTITY_DOC = DOCS_ROOT + "edit-legal-entity"


@dataclass(frozen=True)
class Reason:
    """Why a row is not picked up, and the documented fix."""

    text: str
    fix: str
    doc: str


_FILTER_FIXES = {  # reversed-filter column → the documented way to make a row eligible
    "customertypecode": ("set Relationship Type to Customer on the accounts that are customers; other "
                         "accounts (prospects, partners, vendors …) are not synced by this map by design",
                         CUSTOMER_DOC),
    "msdyn_sellable": ("set Sellable to Yes on the contacts that are person customers (consumers); other "
                       "contacts are contact persons, not customers", CUSTOMER_DOC),
}


def _literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "''" if value == "" else str(value)


def _condition_reason(c: catalog.Condition) -> Reason:
    """The reason a failed condition of a reversed filter gives: `customertypecode not 3`."""
    value = _literal(c.value)
    text = f"{c.column} {'not' if c.op == 'eq' else 'is'} {value}"
    fix, doc = _FILTER_FIXES.get(c.column, (f"make `{c.column} {c.op} {value}` true for the rows that "
                                            "should sync (the map's reversed filter)", CUSTOMER_DOC))
    return Reason(text, fix, doc)


def why_not(m: catalog.TableMap, row: Mapping[str, Any], companies: Mapping[str, str],
            connected: Iterable[str] | None = None) -> Reason | None:
    """Why map `m` does not pick up Dataverse `row` (None: it does). `companies` maps cdm_companyid
    → company code; `connected` are the codes in the connection (None: any company)."""
    if m.company_specific:
        company = row.get(COMPANY_LOOKUP)
        if not company:
            return Reason("no company", "stamp the rows with their company (the bootstrap step): only rows "
                          "that have company data are eligible for dual-write", COMPANY_DOC)
        code = companies.get(str(company), str(company))
        if connected is not None and code.upper() not in {c.upper() for c in connected}:
            return Reason("company not in the connection",
                          f"add legal entity {code} to the dual-write connection, or leave these rows out",
                          LEGAL_ENTITY_DOC)
    key = m.dataverse_key[0]
    # What the row is (not a customer, not sellable) says more than a key it lacks for that reason.
    for c in m.dataverse_conditions:
        if c.column != key and not c.matches(row):
            return _condition_reason(c)
    if row.get(key) in (None, ""):
        return Reason(f"no {key}", f"give the rows their {key}: it is the map's integration key "
                                   f"({', '.join(m.integration_key)}), the value dual-write matches rows on",
                      KEYS_DOC)
    return None


@dataclass
class Ineligible:
    """What a scan found: rows per (table, company, reason), and each reason's fix."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    reasons: dict[str, Reason] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def table(self) -> list[dict[str, Any]]:
        """The step's table: rows per table, company and reason."""
        return [{"table": t, "company": co, "reason": r, "rows": n}
                for (t, co, r), n in sorted(self.counts.items())]

    def checks(self, csv: str) -> list[Check]:
        """One WARNING per table and reason, with the rows per company and the fix."""
        grouped: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for (t, co, r), n in sorted(self.counts.items()):
            grouped.setdefault((t, r), []).append((co, n))
        out = []
        for (t, r), per in grouped.items():
            reason = self.reasons[r]
            out.append(Check(f"{t}: rows dual-write will not pick up ({r})", StepStatus.WARNING,
                             f"{sum(n for _, n in per)} rows: " + ", ".join(f"{co} {n}" for co, n in per)
                             + f"; every row in {csv}", fix=reason.fix, doc=reason.doc))
        return out


class Scan:
    """Scans the Dataverse tables of `maps` (catalogue names) row by row; `rows()` yields the CSV's rows
    (every row no map of its table picks up) and fills `found` as it goes."""

    def __init__(self, session: Session, maps: Sequence[str], companies: Mapping[str, str],
                 connected: Sequence[str]) -> None:
        self.session = session
        self.companies = dict(companies)  # cdm_companyid → code
        self.connected = list(connected)
        self.found = Ineligible()
        by_table: dict[str, list[catalog.TableMap]] = {}
        for name in maps:
            m = catalog.table_map(name)
            by_table.setdefault(m.dataverse_table, []).append(m)
        self.by_table = by_table

    def rows(self) -> Iterator[dict[str, Any]]:
        tables = Tables(self.session.dataverse)
        for table, maps in self.by_table.items():
            if table == "cdm_companies":
                continue  # the companies themselves: the legal-entities step checks them
            pk = tables.info(table).primary_id
            keys = [m.dataverse_key[0] for m in maps]
            striped = any(m.company_specific for m in maps)
            select = list(dict.fromkeys([pk, *keys, *([COMPANY_LOOKUP] if striped else []),
                                         *(c.column for m in maps for c in m.dataverse_conditions)]))
            for row in self.session.dataverse.query(table, select=select):
                reasons = [why_not(m, row, self.companies, self.connected) for m in maps]
                if any(r is None for r in reasons):
                    continue
                reason = reasons[0]
                assert reason is not None
                company = (GLOBAL if not striped else
                           self.companies.get(str(row.get(COMPANY_LOOKUP)), NO_COMPANY)
                           if row.get(COMPANY_LOOKUP) else NO_COMPANY)
                self.found.counts[(table, company, reason.text)] += 1
                self.found.reasons.setdefault(reason.text, reason)
                yield {"table": table, "company": company, "reason": reason.text, "row_id": row.get(pk),
                       "key": row.get(keys[0]) or ""}


def report(ctx: StepContext, session: Session, maps: Sequence[str], connected: Sequence[str],
           csv_name: str) -> tuple[Ineligible, str]:
    """Scan the Dataverse tables of `maps` into the evidence CSV `csv_name`; what was found, and the
    CSV's path."""
    ids = company_ids(session)
    scan = Scan(session, maps, {row_id: code for code, row_id in ids.items()}, connected)
    path = ctx.write_csv(csv_name, scan.rows(), COLUMNS)
    return scan.found, str(path)
