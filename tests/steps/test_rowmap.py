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


class _Rows:
    """`DataverseClient.query` over hand-made rows; counts the reads."""

    def __init__(self, rows: list[dict[str, str | None]]) -> None:
        self.rows, self.reads = rows, 0

    def query(self, entity_set: str, select: list[str]) -> list[dict[str, str | None]]:
        self.reads += 1
        return [{k: r.get(k) for k in select} for r in self.rows]


def test_a_large_lookup_target_is_kept_on_disk_and_answers_as_the_in_memory_one() -> None:
    from dwlib.steps.support.rowmap import LookupColumn

    company = Lookup("msdyn_company", "cdm_company")
    accounts = _table("accounts", "account", ["accountnumber"], {"msdyn_company": company})
    lk = LookupColumn("msdyn_billingaccount", "_msdyn_billingaccount_value", accounts, "accountnumber", True)
    rows = [{"accountid": f"id-{i}", "accountnumber": f"US-{i:03d}" if i % 5 else None,
             "_msdyn_company_value": f"co-{i % 2}"} for i in range(40)]
    rows.append({"accountid": "id-dup", "accountnumber": "us-001", "_msdyn_company_value": "co-1"})
    small, large = _Rows(rows), _Rows(rows)
    in_memory, on_disk = Lookups(small, in_memory=1_000), Lookups(large, in_memory=7)  # type: ignore[arg-type]
    asks = [("US-001", "co-1"), ("us-001", "co-1"), ("US-001", "co-0"), ("US-005", "co-1"), ("nope", "co-0")]
    assert [on_disk.id_of(lk, v, c) for v, c in asks] == [in_memory.id_of(lk, v, c) for v, c in asks] == [
        "id-1", "id-1", None, None, None]  # the first row with a value wins, as it did in memory
    ids = ["id-3", "id-5", "id-dup", "missing"]
    assert [on_disk.value_of(lk, i) for i in ids] == [in_memory.value_of(lk, i) for i in ids] == [
        "US-003", "", "us-001", None]
    assert on_disk._indexes[("accounts", "accountnumber")].spill is not None
    assert in_memory._indexes[("accounts", "accountnumber")].spill is None
    on_disk.forget("accounts")  # rows were written: read again at the next ask
    assert on_disk.id_of(lk, "US-002", "co-0") == "id-2" and large.reads == 2
    on_disk.close()
