"""Test helpers of the plan and migrate tests: the sandbox's data companies, seeded defects removed."""

from __future__ import annotations

from typing import Any

from dw_helpers import Consultant

from dwlib import catalog
from dwlib.sandbox.schema import ENTITIES

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


def column_differences(c: Consultant, map_name: str, fo: dict[str, Any], dv: dict[str, Any], *,
                       direction: str) -> list[str]:
    """The mapped columns (every catalogue row of the map with both sides that moves `direction`,
    "to_dataverse" or "to_finops") whose values differ between an F&O row and a Dataverse row:
    value maps applied, lookups compared by the key of the row they refer to, numbers by value,
    dates by day. Rows whose value map no source documents are not moved, so not compared."""
    m = catalog.table_map(map_name)
    ent = ENTITIES[m.dataverse_table]
    out = []
    for row in m.mappings:
        if not (row.finops and row.dataverse and getattr(row, direction)) or row.value_map_missing:
            continue
        fo_value, dv_value = fo.get(row.finops), dv.get(row.dataverse)
        if row.lookup:
            nav, column = row.lookup
            lookup = ent.lookup(nav)
            assert lookup is not None
            target = dv.get(lookup.column)
            dv_value = c.dv("GET", f"{lookup.target}({target})").json()[column] if target else None
            equal = str(fo_value or "").lower() == str(dv_value or "").lower()
        elif row.values is not None:
            equal = (fo_value in (None, "") and dv_value is None) or (
                fo_value not in (None, "") and row.to_dataverse_value(fo_value) == dv_value)
        elif isinstance(fo_value, int | float) or isinstance(dv_value, int | float):
            # an F&O field is never null: X++ keeps 0 for a Dataverse null
            equal = fo_value is not None and float(fo_value) == float(dv_value or 0)
        elif "date" in row.dataverse:
            equal = str(fo_value or "")[:10] == str(dv_value or "")[:10]
        else:
            equal = (fo_value or None) == (dv_value or None)
        if not equal:
            out.append(f"{row.finops} {fo_value!r} vs {row.dataverse} {dv_value!r}")
    return out
