"""The sandbox carries every column the catalogue's maps move, on both sides, with Dataverse types
that fit the maps (a value map to booleans is a Boolean column, to numbers a choice with those
options), and its DMF packages write numbers and dates in the source data format's locale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dwlib import catalog
from dwlib.catalog.locales import locale
from dwlib.errors import SandboxError
from dwlib.sandbox import dmf_package, profiles
from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.dataverse_metadata import definitions
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.server import configure
from dwlib.sandbox.state import Paths, Settings, write_private
from dwlib.sandbox.store import Store

_NUMBERS = {"Integer", "BigInt", "Decimal", "Double", "Money"}


def _attributes(table: str) -> dict[str, dict]:
    return {a["LogicalName"]: a for a in definitions(ENTITIES[table])["Attributes"]}


@pytest.mark.parametrize("map_id", [m.id for m in catalog.table_maps()])
def test_every_mapped_column_exists_on_both_sides_with_a_fitting_type(map_id: str) -> None:
    m = catalog.table_map(map_id)
    fo = ENTITIES.get(m.finops_entity_set or "")
    attributes = _attributes(m.dataverse_table)
    for row in m.mappings:
        where = f"{row.finops} {row.direction} {row.dataverse}"
        if fo is not None and row.finops:
            assert row.finops in fo.columns, f"{m.finops_entity_set} has no {row.finops} ({where})"
        if row.dataverse is None:
            continue
        if row.lookup:
            nav, column = row.lookup
            lookup = ENTITIES[m.dataverse_table].lookup(nav)
            assert lookup is not None and attributes[nav]["AttributeType"] == "Lookup", where
            assert column in ENTITIES[lookup.target].columns, where
            continue
        kind = attributes[row.dataverse]["AttributeType"]
        if row.values:
            if all(isinstance(v, bool) for _, v in row.values):
                assert kind == "Boolean", where
            else:
                assert kind == "Picklist", where
                options = {o["Value"] for o in attributes[row.dataverse]["OptionSet"]["Options"]}
                assert {v for _, v in row.values} <= options, where
        elif fo is not None and row.finops and fo.columns[row.finops] in ("int", "decimal"):
            assert kind in _NUMBERS, where
        elif fo is not None and row.finops and fo.columns[row.finops] == "datetime":
            assert kind == "DateTime", where


@pytest.fixture
def sbx(tmp_path: Path) -> Sandbox:
    paths = Paths(tmp_path)
    write_private(paths.identity_key, os.urandom(32))
    settings = Settings(profile="existing-new", rows=20, dmf_locale="nl-NL")
    store = Store(paths.db)
    profiles.seed(store, settings)
    return Sandbox(paths=paths, settings=settings, store=store, identity=None,  # type: ignore[arg-type]
                   base_url="https://127.0.0.1:9")


def test_packages_write_numbers_and_dates_in_the_source_formats_locale(sbx: Sandbox, tmp_path: Path) -> None:
    """nl-NL: decimal commas and day-month-year dates; reading them back in nl-NL gives the values."""
    (fmt,) = sbx.store.find(ENTITIES["DataManagementSourceDataFormats"], {"SourceName": "CSV-Unicode"})
    assert fmt["LanguageLocale"].lower() == "nl-nl"
    loc = dmf_package.package_locale(sbx.store)
    vendor = dmf_package.DMF_ENTITIES["VendorsV2"]
    row = {c: None for c in vendor.columns} | {"VendorAccountNumber": "V-1", "CreditLimit": 1234.5,
                                               "VendorHoldReleaseDate": "2024-01-31T12:00:00Z"}
    path = tmp_path / "v.zip"
    parts = [(vendor, iter([[row[c] for c in vendor.columns]]))]
    for _ in dmf_package.write_package(path, "VendorsV2-Export", parts, loc):
        pass
    _, (pe,) = dmf_package.read_package(path.read_bytes())
    text = dict(zip(vendor.fields, pe.rows[0], strict=True))
    assert (text["CREDITLIMIT"], text["VENDORHOLDRELEASEDATE"]) == ("1234,5", "31-01-2024")
    nl = locale("nl-NL")
    assert float(nl.parse_number(text["CREDITLIMIT"])) == 1234.5
    customers = [r for r in sbx.store.find(ENTITIES["CustomersV3"], {}) if r.get("AddressLatitude")]
    assert customers and all(isinstance(r["AddressLatitude"], float) for r in customers)


def test_the_dmf_locale_setting_is_checked_and_kept(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="--dmf-locale: unknown language locale 'xx-YY'"):
        configure(tmp_path / "a", profile="new-new", dmf_locale="xx-YY")
    assert configure(tmp_path / "b", profile="new-new", dmf_locale="nl-NL").dmf_locale == "nl-nl"
    with pytest.raises(SandboxError, match="seeded with DMF locale nl-nl, not en-us"):
        configure(tmp_path / "b", dmf_locale="en-us")
