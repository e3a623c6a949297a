"""Dataverse table metadata the bulk steps need, read once per run from `EntityDefinitions`.

Bootstrap and migration work on tables named in the parameters or the catalogue; their primary
key, primary name, column types and lookups come from the environment itself rather than from
assumptions, so a customised table works too.

Example:
    tables = Tables(session.dataverse)
    info = tables.info("accounts")
    info.primary_id, info.lookups["msdyn_company"]
    ('accountid', Lookup(attribute='msdyn_company', target='cdm_company'))
    >>> Lookup("msdyn_company", "cdm_company").column
    '_msdyn_company_value'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dwlib.clients.odata import literal

from ..base import StepError

if TYPE_CHECKING:
    from dwlib.clients.dataverse import DataverseClient

COMPANY_TABLE = "cdm_company"


@dataclass(frozen=True)
class Lookup:
    """A lookup column: its attribute (logical name) and the table it refers to (logical name)."""

    attribute: str
    target: str

    @property
    def column(self) -> str:
        """The column the Web API returns and filters on (`_x_value`)."""
        return f"_{self.attribute}_value"


@dataclass(frozen=True)
class TableInfo:
    """What a step needs to know about one Dataverse table."""

    entity_set: str
    logical_name: str
    primary_id: str
    primary_name: str | None
    attributes: dict[str, str]  # logical name → AttributeType (String, Integer, Lookup, …)
    lookups: dict[str, Lookup]  # navigation property → lookup

    def navigations(self, name: str) -> list[tuple[str, Lookup]]:
        """`(navigation property, lookup)` pairs a map's lookup name can mean: the navigation property
        of that name, else each of the lookup attribute of that name (a multi-table lookup such as
        `parentcustomerid` has one per target table: `parentcustomerid_account`, …)."""
        if name in self.lookups:
            return [(name, self.lookups[name])]
        return sorted((nav, lk) for nav, lk in self.lookups.items() if lk.attribute == name)

    def company_lookup(self) -> tuple[str, Lookup] | None:
        """`(navigation property, lookup)` of the table's company column (`msdyn_company`;
        `msdyn_companyid` on products), or None when the table is not striped by company."""
        found = sorted((nav, lk) for nav, lk in self.lookups.items() if lk.target == COMPANY_TABLE)
        preferred = [f for f in found if f[0] in ("msdyn_company", "msdyn_companyid")]
        return (preferred or found)[0] if found else None


class Tables:
    """Metadata of Dataverse tables, each read once (by entity set or by logical name)."""

    def __init__(self, dataverse: DataverseClient) -> None:
        self.dataverse = dataverse
        self._by_set: dict[str, TableInfo] = {}
        self._set_of: dict[str, str] = {}

    def info(self, entity_set: str) -> TableInfo:
        """The table behind `entity_set`; StepError when Dataverse has no such table."""
        if entity_set not in self._by_set:
            self._by_set[entity_set] = self._read(f"EntitySetName eq {literal(entity_set)}", entity_set)
        return self._by_set[entity_set]

    def of_logical(self, logical_name: str) -> TableInfo:
        """The table with this logical name (e.g. the target of a lookup)."""
        if logical_name not in self._set_of:
            info = self._read(f"LogicalName eq {literal(logical_name)}", logical_name)
            self._by_set[info.entity_set] = info
            self._set_of[logical_name] = info.entity_set
        return self._by_set[self._set_of[logical_name]]

    def _read(self, where: str, what: str) -> TableInfo:
        dv = self.dataverse
        found = list(dv.query("EntityDefinitions", filter=where, select=[
            "LogicalName", "EntitySetName", "PrimaryIdAttribute", "PrimaryNameAttribute"]))
        if not found:
            raise StepError(f"Dataverse has no table {what!r}. Fix: check the name in the parameters "
                            "(entity set names are plural, e.g. accounts, contacts), and that the solution "
                            "that adds it is installed")
        head = found[0]
        path = f"EntityDefinitions(LogicalName={literal(head['LogicalName'])})"
        attributes = {a["LogicalName"]: a.get("AttributeType") or "" for a in dv.query(
            f"{path}/Attributes", select=["LogicalName", "AttributeType"])}
        nav = "ReferencingEntityNavigationPropertyName"
        lookups = {r[nav]: Lookup(r["ReferencingAttribute"], r["ReferencedEntity"])
                   for r in dv.query(f"{path}/ManyToOneRelationships",
                                     select=["ReferencedEntity", "ReferencingAttribute", nav])}
        return TableInfo(head["EntitySetName"], head["LogicalName"], head["PrimaryIdAttribute"],
                         head.get("PrimaryNameAttribute"), attributes, lookups)
