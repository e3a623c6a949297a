"""Test helpers of the plan and migrate tests: the sandbox's data companies, seeded defects removed."""

from __future__ import annotations

from dw_helpers import Consultant

LES = ["USMF", "GBSI", "DEMF", "FRRT"]  # the data companies of the sandbox profiles with F&O data
TEXT = ("OrganizationName", "PersonFirstName", "PersonLastName", "NameAlias", "SalesMemo")


def unquote_customers(c: Consultant) -> None:
    """Remove the double quotes the sandbox seeds into some F&O customer names (the other fix the
    docs give besides migrating), so the plan has no reason to migrate them."""
    for row in c.fo_rows("CustomersV3?cross-company=true"):
        changes = {k: row[k].replace('"', "") for k in TEXT if '"' in (row.get(k) or "")}
        if changes:
            key = f"dataAreaId='{row['dataAreaId']}',CustomerAccount='{row['CustomerAccount']}'"
            r = c.fo("PATCH", f"CustomersV3({key})?cross-company=true", changes)
            assert r.status_code == 204, r.text
