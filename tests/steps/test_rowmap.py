"""How a map's lookup column finds its Dataverse navigation property (no sandbox needed)."""

from __future__ import annotations

from dataclasses import replace

from dwlib import catalog
from dwlib.steps.support.dvmeta import Lookup, TableInfo
from dwlib.steps.support.rowmap import Lookups, RowMap


class _Tables:
    """`Tables.of_logical` over hand-made definitions."""

    def __init__(self, *infos: TableInfo) -> None:
        self.infos = {i.logical_name: i for i in infos}

    def of_logical(self, logical_name: str) -> TableInfo:
        return self.infos[logical_name]


def _table(entity_set: str, logical: str, columns: list[str], lookups: dict[str, Lookup]) -> TableInfo:
    return TableInfo(entity_set, logical, f"{logical}id", None, {c: "String" for c in columns}, lookups)


def test_a_multi_table_lookup_binds_through_the_navigation_property_of_the_matched_table() -> None:
    """A map row `parentcustomerid.accountnumber` (as a customised contacts map may have) names a
    Customer lookup, which Dataverse exposes as `parentcustomerid_account` and
    `parentcustomerid_contact` (one per table)."""
    documented = catalog.table_map("cds-contacts-v2")
    cds = replace(documented, mappings=(
        *(c for c in documented.mappings if c.finops != "AssociatedContactNumber"),
        catalog.ColumnMapping("AssociatedContactNumber", "=", "parentcustomerid.accountnumber")))
    company = Lookup("msdyn_company", "cdm_company")
    contacts = _table("contacts", "contact", ["msdyn_contactpersonid", "firstname", "lastname"], {
        "parentcustomerid_contact": Lookup("parentcustomerid", "contact"),
        "parentcustomerid_account": Lookup("parentcustomerid", "account"),
        "msdyn_company": company})
    accounts = _table("accounts", "account", ["accountnumber"], {"msdyn_company": company})
    companies = _table("cdm_companies", "cdm_company", ["cdm_companycode"], {})
    fields = ["CONTACTPERSONID", "FIRSTNAME", "LASTNAME", "ASSOCIATEDCONTACTNUMBER"]
    rm = RowMap(cds, contacts, _Tables(contacts, accounts, companies), fields,  # type: ignore[arg-type]
                Lookups(None))  # type: ignore[arg-type]
    assert [(lk.nav, lk.column, lk.target.entity_set) for _, lk in rm.lookup_rows] == [
        ("parentcustomerid_account", "_parentcustomerid_value", "accounts")]
    assert not [s for s in rm.skipped if "parentcustomerid" in s]
