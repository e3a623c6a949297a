"""Seed data of the six profiles: contents, realistic defects, determinism, row scaling."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dwlib import catalog
from dwlib.sandbox import identity, prepare, profiles
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.state import PROFILES, Settings
from dwlib.sandbox.store import Store
from dwlib.scenarios import OPERATIONS

ROWS = 300


def _seeded(
    tmp_path: Path, profile: str, rows: int = ROWS, **kw: Any
) -> tuple[Store, Settings, dict[str, int]]:
    store = Store(tmp_path / f"{profile}-{rows}.sqlite")
    settings = Settings(profile=profile, rows=rows, **kw)
    return store, settings, profiles.seed(store, settings)


def _all(store: Store, table: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return store.find(ENTITIES[table], match or {})


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_has_what_provisioning_creates(tmp_path: Path, profile: str) -> None:
    store, settings, counts = _seeded(tmp_path, profile)
    spec = profiles.PROFILE_SPECS[profile]
    (org,) = _all(store, "organizations")
    assert org["organizationid"] == settings.organization_id
    (usd,) = _all(store, "transactioncurrencies", {"isocurrencycode": "USD"})
    assert org["basecurrencyid"] == usd["transactioncurrencyid"]
    (root,) = _all(store, "businessunits", {"_parentbusinessunitid_value": None})
    assert _all(store, "teams", {"_businessunitid_value": root["businessunitid"], "isdefault": True})

    users = _all(store, "systemusers")
    (app,) = [u for u in users if u["applicationid"] == settings.client_id]
    assert app["azureactivedirectoryobjectid"] == identity.app_principal(settings).oid
    (person,) = [u for u in users if u["azureactivedirectoryobjectid"] == identity.consultant(settings).oid]
    assert person["applicationid"] is None and person["_businessunitid_value"] == root["businessunitid"]
    # Dual-write is not set up in any profile: no first-party app users, no dual-write solutions.
    assert not {u["applicationid"] for u in users} & {u.application_id for u in catalog.app_users()}
    solutions = {s["uniquename"] for s in _all(store, "solutions")}
    assert {"System", "Active", "Basic"} <= solutions
    assert not solutions & {name for s in catalog.required_solutions() for name in s.names}
    assert store.kv_get("pp_link", "missing") is None
    assert counts.get("cdm_companies", 0) == store.count(ENTITIES["cdm_companies"]) == 0

    existing = spec.dataverse == "existing"
    assert store.count(ENTITIES["accounts"]) == counts.get("accounts", 0) == (ROWS if existing else 0)
    assert store.count(ENTITIES["contacts"]) == counts.get("contacts", 0) == (ROWS if existing else 0)
    assert store.count(ENTITIES["businessunits"]) == 1 + (len(profiles.COMPANIES) if existing else 0)

    companies = {e["LegalEntityId"] for e in _all(store, "LegalEntities")}
    with_data = spec.finops == "data"
    assert companies == {"DAT"} | ({c.code for c in profiles.COMPANIES} if with_data else set())
    currencies = {c["CurrencyCode"] for c in _all(store, "Currencies")}
    assert currencies == ({c[0] for c in profiles.CURRENCIES} if with_data else {"USD"})
    # Every legal entity's accounting currency exists (F&O's relation).
    assert {e["AccountingCurrency"] for e in _all(store, "LegalEntities")} <= currencies
    assert store.count(ENTITIES["CustomersV3"]) == (ROWS if with_data else 0)
    assert store.count(ENTITIES["CustomerGroups"]) == (len(profiles.COMPANIES) * 5 if with_data else 0)
    assert counts["dmf_definition_groups"] > 0


def test_profile_table_matches_the_design(tmp_path: Path) -> None:
    assert {p: (s.finops, s.dataverse) for p, s in profiles.PROFILE_SPECS.items()} == {
        "new-new": ("new", "new"), "new-existing": ("new", "existing"),
        "new-data-new": ("data", "new"), "new-data-existing": ("data", "existing"),
        "existing-new": ("data", "new"), "existing-existing": ("data", "existing"),
        # The operations runbooks: a pair with data, linked before the runbook (prepare.py).
        "refresh-relink": ("data", "new"), "maintenance": ("data", "new"),
        "add-legal-entity": ("data", "new"),
    }


def test_every_operations_runbook_has_one_preparation_on_a_known_profile() -> None:
    assert set(prepare.PREPARATIONS) == set(OPERATIONS)
    for scenario, prep in prepare.PREPARATIONS.items():
        assert prep.profile in PROFILES, scenario
        # A portal play links companies; a setup run sets its own up and then seeds a state.
        played = prep.history is prepare.History.PORTAL
        assert bool(prep.linked) == played and (prep.seed is None) == played, scenario
    # The profiles played at their start are the operations runbooks' own; a setup's is its runbook's.
    assert {p for p in PROFILES if prepare.played(p)} == {"refresh-relink", "maintenance", "add-legal-entity"}
    assert prepare.profile("health-check") == "new-data-new" and prepare.profile("new-new") == "new-new"


def test_the_operations_profiles_seed_no_names_that_break_an_initial_sync(tmp_path: Path) -> None:
    quoted = [r for r in _all(_seeded(tmp_path, "maintenance", rows=300)[0], "CustomersV3")
              if '"' in (r.get("OrganizationName") or "")]
    assert quoted == []
    assert profiles.PROFILE_SPECS["existing-new"].quoted_names  # the setups keep that defect


def test_existing_dataverse_rows_have_no_company_and_owners_across_business_units(tmp_path: Path) -> None:
    store, _, _ = _seeded(tmp_path, "new-existing", rows=2000)
    bus = {b["businessunitid"]: b["name"] for b in _all(store, "businessunits")}
    user_bu = {u["systemuserid"]: u["_businessunitid_value"] for u in _all(store, "systemusers")}
    for table in ("accounts", "contacts"):
        rows = _all(store, table)
        assert all(r["_msdyn_company_value"] is None for r in rows)
        # The owner's business unit is the row's owning business unit, as Dataverse keeps it.
        assert all(user_bu[r["_ownerid_value"]] == r["_owningbusinessunit_value"] for r in rows)
        per_bu = Counter(bus[r["_owningbusinessunit_value"]] for r in rows)
        assert {c.business_unit for c in profiles.COMPANIES} <= set(per_bu)
        assert max(per_bu.values()) < 0.6 * len(rows)

    accounts = _all(store, "accounts")
    types = Counter(a["customertypecode"] for a in accounts)
    assert types[3] > 0.7 * len(accounts) and len(types) > 1
    assert any('"' in a["name"] for a in accounts)
    assert any(a["accountnumber"] is None for a in accounts)
    assert any(a["emailaddress1"] is None for a in accounts)
    numbers = [a["accountnumber"] for a in accounts if a["accountnumber"]]
    assert len(numbers) == len(set(numbers))

    contacts = _all(store, "contacts")
    sellable = [c for c in contacts if c["msdyn_sellable"]]
    with_id = [c for c in sellable if c["msdyn_contactpersonid"]]
    assert 0 < len(with_id) < len(sellable) < len(contacts)
    assert not [c for c in contacts if c["msdyn_contactpersonid"] and not c["msdyn_sellable"]]
    assert any('"' in (c["firstname"] or "") for c in contacts)
    account_ids = {a["accountid"] for a in accounts}
    parents = [c["_parentcustomerid_value"] for c in contacts if c["_parentcustomerid_value"]]
    assert parents and set(parents) <= account_ids


def test_finops_customers_reference_their_company_setup(tmp_path: Path) -> None:
    store, _, _ = _seeded(tmp_path, "existing-new", rows=1000)
    companies = {e["LegalEntityId"] for e in _all(store, "LegalEntities")}
    groups = {(g["dataAreaId"], g["CustomerGroupId"]) for g in _all(store, "CustomerGroups")}
    terms = {(t["dataAreaId"], t["Name"]) for t in _all(store, "PaymentTerms")}
    currencies = {c["CurrencyCode"] for c in _all(store, "Currencies")}
    customers = _all(store, "CustomersV3")
    assert Counter(c["PartyType"] for c in customers).keys() == {"Organization", "Person"}
    for c in customers:
        assert c["dataAreaId"] == c["dataAreaId"].lower() and c["dataAreaId"].upper() in companies
        assert (c["dataAreaId"], c["CustomerGroupId"]) in groups
        assert (c["dataAreaId"], c["PaymentTerms"]) in terms
        assert c["SalesCurrencyCode"] in currencies
        assert bool(c["OrganizationName"]) == (c["PartyType"] == "Organization")
    assert not [c for c in customers if c["dataAreaId"] == "dat"]
    assert any('"' in (c["OrganizationName"] or "") for c in customers)


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        order = {t: "1" if t == "_recversion" else "1, 2" for t in tables}  # the counter has one column
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY {order[t]}').fetchall() for t in tables}
    finally:
        conn.close()


def test_seeding_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stamps of the time of seeding (createdon, installedon) are the clock's: held still, so two
    # seedings that straddle a second compare equal and only the seeded data is compared.
    from dwlib.sandbox import profiles
    from dwlib.sandbox import store as store_module

    for module in (store_module, profiles):
        monkeypatch.setattr(module, "utcnow", lambda: "2026-01-01T00:00:00Z")
    ids = {"tenant_id": "3f2a3c1e-0000-4000-8000-000000000001",
           "client_id": "3f2a3c1e-0000-4000-8000-000000000002",
           "organization_id": "3f2a3c1e-0000-4000-8000-000000000003"}
    dumps = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        store, _, _ = _seeded(tmp_path / name, "existing-existing", **ids)
        store.close()
        dumps.append(_dump(store.path))
    assert dumps[0]["dv_accounts"] and dumps[0]["fo_customersv3"]
    assert dumps[0] == dumps[1]


@pytest.mark.parametrize("rows", [0, 1, 37])
def test_rows_scale_accounts_contacts_and_customers(tmp_path: Path, rows: int) -> None:
    store, _, counts = _seeded(tmp_path, "existing-existing", rows=rows)
    assert counts.get("accounts", 0) == counts.get("contacts", 0) == counts.get("CustomersV3", 0) == rows
    assert store.count(ENTITIES["accounts"]) == rows


def test_progress_reports_each_table(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    seen: list[tuple[str, int]] = []
    counts = profiles.seed(store, Settings(profile="new-existing", rows=10),
                           lambda table, n: seen.append((table, n)))
    assert ("accounts", 10) in seen and ("contacts", 10) in seen
    assert sum(n for t, n in seen if t == "systemusers") == counts["systemusers"]


def test_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown profile 'old-old': use one of new-new"):
        profiles.seed(Store(tmp_path / "s.sqlite"), Settings(profile="old-old", rows=1))


def test_install_dual_write_solutions_meets_the_catalogue_and_is_idempotent(tmp_path: Path) -> None:
    store, _, _ = _seeded(tmp_path, "new-new", rows=0)
    assert profiles.install_dual_write_solutions(store) > 0
    assert profiles.install_dual_write_solutions(store) == 0
    installed = {s["uniquename"]: s["version"] for s in _all(store, "solutions")}
    for required in catalog.required_solutions():
        assert required.satisfied_by(installed.get(required.uniquename)), required
    app_ids = {u["applicationid"] for u in _all(store, "systemusers")}
    assert {"00000015-0000-0000-c000-000000000000", "2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b"} <= app_ids


def _indexes(store: Store, table: str) -> set[str]:
    return {r[0] for r in store.query("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                      "AND sql IS NOT NULL", (table,))}


def test_bulk_load_keeps_indexes_and_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    ent = ENTITIES["teams"]
    before = _indexes(store, ent.table)
    assert before
    cols = ["teamid", "name", "_businessunitid_value"]
    # Into an empty table (indexes dropped and rebuilt) and into a filled one; a failure rolls back.
    with pytest.raises(sqlite3.IntegrityError):
        store.bulk_load(ent, cols, [("t1", "Sales", "b1"), ("t1", "Again", "b1")])
    assert store.count(ent) == 0 and _indexes(store, ent.table) == before
    assert store.bulk_load(ent, cols, [("t1", "Sales", "b1"), ("t2", "Service", "b1")]) == 2
    assert _indexes(store, ent.table) == before
    assert [r["teamid"] for r in store.find(ent, {"_businessunitid_value": "b1"})] == ["t1", "t2"]
    with pytest.raises(sqlite3.IntegrityError):
        store.bulk_load(ent, cols, [("t3", "Field", "b2"), ("t1", "Again", "b2")])
    assert store.count(ent) == 2 and _indexes(store, ent.table) == before


def test_a_state_file_without_row_versions_gets_them(tmp_path: Path) -> None:
    """A sandbox state written before F&O rows had a row version opens with the column added (the
    rows at version 1) and the trigger that changes it on update."""
    db = tmp_path / "s.sqlite"
    cur = ENTITIES["Currencies"]
    Store(db).insert(cur, {"CurrencyCode": "USD", "Name": "US dollar"})
    conn = sqlite3.connect(db)
    conn.execute(f'DROP TRIGGER "tr_{cur.table}_version"')
    conn.execute(f'ALTER TABLE "{cur.table}" DROP COLUMN "_RecVersion"')
    conn.commit()
    conn.close()
    store = Store(db)
    key = {"CurrencyCode": "USD"}
    row = store.get(cur, key)
    assert store.recversion(cur, key) == 1 and row is not None and set(row) == set(cur.all_columns)
    store.update(cur, key, {"Name": "Dollar"})
    assert (store.recversion(cur, key) or 0) > 1
