"""The runtime's state machine, refusals, connection and legal-entity limits (no server)."""

from __future__ import annotations

import json

import pytest
from dw_helpers import COMPANIES_MAP, MakeRuntime, run_async, run_maps

from dwlib import catalog
from dwlib.sandbox.dualwrite import DualWrite
from dwlib.sandbox.dw_records import FINOPS_STATUS, STATUS_CODES
from dwlib.sandbox.dw_runtime import EDIT_REFUSED, DualWriteError
from dwlib.sandbox.schema import ENTITIES

ACCOUNTS = "Customers V3 (accounts)"
GROUPS = "Customer groups (msdyn_customergroups)"


def statuses(rt: DualWrite, name: str) -> tuple[set[str], set[int]]:
    """The map's state as F&O DualWriteProjectConfigurations and Dataverse runtime configs show it."""
    project = rt.map_record(name)["project"]
    fo = {
        r["Status"]
        for r in rt.store.find(ENTITIES["DualWriteProjectConfigurations"], {"ProjectName": project})
    }
    dv = {
        r["msdyn_status"]
        for r in rt.store.find(ENTITIES["msdyn_dualwriteruntimeconfigs"], {"msdyn_name": project})
    }
    return fo, dv


def test_link_creates_no_company_the_legal_entities_map_brings_them_with_dw_owner_team(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime("existing-new", link=False)
    rt.setup_power_platform_integration()
    rt.link(start_maps=False)
    conn = rt.connection()
    assert conn is not None and sorted(conn["legalEntities"]) == ["DAT", "DEMF", "FRRT", "GBSI", "USMF"]
    assert rt.store.count(ENTITIES["cdm_companies"]) == 0  # linking creates no company row
    assert rt.store.count(ENTITIES["DualWriteProjectConfigurations"]) == 0  # no project yet
    run_maps(rt, [COMPANIES_MAP])
    # The map's project rows carry the connection's legal entities (PartitionMap).
    (partitions,) = {r["PartitionMap"] for r in rt.store.find(ENTITIES["DualWriteProjectConfigurations"], {})}
    assert sorted(partitions.split(",")) == sorted(conn["legalEntities"])
    assert rt.pp_link() == {
        "Url": rt.finops_url,
        "TenantId": rt.settings.tenant_id,
        "Id": rt.settings.finops_environment_id,
    }
    (usmf,) = rt.store.find(ENTITIES["cdm_companies"], {"cdm_companycode": "USMF"})
    team = rt.store.get(ENTITIES["teams"], {"teamid": usmf["_cdm_defaultowningteam_value"]})
    assert team is not None and team["name"] == "USMF DW"
    bu = rt.store.get(ENTITIES["businessunits"], {"businessunitid": team["_businessunitid_value"]})
    assert bu is not None and bu["name"] == "USMF" and bu["_parentbusinessunitid_value"] is not None
    # Apply Solution made every catalogue map visible in Dataverse.
    assert rt.store.count(ENTITIES["msdyn_dualwriteentitymaps"]) == len(catalog.table_maps())


def test_configure_needs_power_platform_integration(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("new-new", link=False)
    with pytest.raises(DualWriteError, match="0x80048d0b"):
        rt.configure()
    with pytest.raises(DualWriteError, match="not linked"):
        rt.run([ACCOUNTS])


def test_new_new_link_starts_the_maps_as_the_setup_guidance_says(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("new-new", link=False)
    rt.setup_power_platform_integration()

    async def go() -> None:
        rt.link()
        await rt.idle()

    run_async(go())
    assert rt.connection()["legalEntities"] == ["DAT"]  # type: ignore[index]
    assert {m["state"] for m in rt.maps()} == {"Running"}
    # The Legal entities map ran its initial sync: DAT's company row came with it, not with the link.
    (job,) = rt.jobs(COMPANIES_MAP)
    assert job["status"] == "Completed"
    assert [r["cdm_companycode"] for r in rt.store.find(ENTITIES["cdm_companies"], {})] == ["DAT"]


def test_states_follow_the_documented_cycle_and_are_visible_in_both_environments(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime()
    names = catalog.dependency_order([ACCOUNTS])
    rt.run(names, initial_sync=False)
    assert rt.map_record(ACCOUNTS)["state"] == "Running"
    assert statuses(rt, ACCOUNTS) == ({"Running"}, {STATUS_CODES["Running"]})
    project = rt.map_record(ACCOUNTS)["project"]
    rows = rt.store.find(ENTITIES["DualWriteProjectConfigurations"], {"ProjectName": project})
    assert sorted(r["IsDelete"] for r in rows) == ["No", "Yes"]  # two records for every mapping
    assert project.startswith("DWM-")

    rt.pause([ACCOUNTS])
    assert statuses(rt, ACCOUNTS)[0] == {FINOPS_STATUS["Paused"]}

    async def resume() -> str:
        rt.run([ACCOUNTS])  # Run on a paused map resumes it
        state = rt.map_record(ACCOUNTS)["state"]
        await rt.idle()
        return state

    assert run_async(resume()) == "Resuming"
    assert rt.map_record(ACCOUNTS)["state"] == "Running"
    rt.stop([ACCOUNTS])
    assert rt.map_record(ACCOUNTS)["state"] == "NotRunning"
    assert statuses(rt, ACCOUNTS)[0] == {"NotRunning"}
    events = [a["state"] for a in rt.map_record(ACCOUNTS)["activity"]]
    assert events == ["Running", "Paused", "Resuming", "Running", "Not running"]


def test_actions_outside_their_states_are_refused_and_change_nothing(make_runtime: MakeRuntime) -> None:
    rt = make_runtime()
    rt.run(catalog.dependency_order([GROUPS]), initial_sync=False)
    with pytest.raises(DualWriteError, match="Stop is available only for Running maps"):
        rt.stop([ACCOUNTS])
    with pytest.raises(DualWriteError, match="Resume is available only for Paused maps"):
        rt.resume([GROUPS])
    # Pause is multi-select: one selected map not Running and neither pauses.
    with pytest.raises(DualWriteError, match="No map was changed"):
        rt.pause([GROUPS, ACCOUNTS])
    assert rt.map_record(GROUPS)["state"] == "Running"
    rt.pause([GROUPS])
    with pytest.raises(DualWriteError, match=r"Stop is available only for Running maps: .* is Paused"):
        rt.stop([GROUPS])
    with pytest.raises(DualWriteError, match="resume mode"):
        rt.resume([GROUPS], "later")


def test_edits_only_when_not_running_and_visible_in_the_entity_map(make_runtime: MakeRuntime) -> None:
    rt = make_runtime()
    rt.run(catalog.dependency_order([GROUPS]), initial_sync=False)
    with pytest.raises(DualWriteError) as refused:
        rt.edit(GROUPS, remove=["msdyn_description"])
    assert refused.value.message == EDIT_REFUSED
    view = rt.edit(ACCOUNTS, remove=["msdyn_paymentterm.msdyn_name", "msdyn_salestaxgroup.msdyn_name"])
    assert view["lookups"] == catalog.table_map(ACCOUNTS).lookup_count - 2
    (row,) = rt.store.find(ENTITIES["msdyn_dualwriteentitymaps"], {"msdyn_name": ACCOUNTS})
    (task,) = json.loads(row["msdyn_mapping"])["entityMappingTasks"]
    fields = [f["destinationField"] for f in task["legs"][0]["fieldMappings"]]
    assert "msdyn_paymentterm.msdyn_name" not in fields and "accountnumber" in fields
    rt.edit(ACCOUNTS, restore=["msdyn_paymentterm.msdyn_name"])
    assert rt.map_view(ACCOUNTS)["lookups"] == catalog.table_map(ACCOUNTS).lookup_count - 1
    with pytest.raises(DualWriteError, match="integration key"):
        rt.edit(ACCOUNTS, remove=["accountnumber"])
    with pytest.raises(DualWriteError, match="no column rows"):
        rt.edit(ACCOUNTS, remove=["nonexistent"])


def _add_legal_entities(rt: DualWrite, n: int, start: int = 0) -> list[str]:
    codes = [f"L{i:03d}" for i in range(start, start + n)]
    rt.store.bulk_insert(
        ENTITIES["LegalEntities"], [{"LegalEntityId": c, "Name": f"Company {c}"} for c in codes]
    )
    return codes


def _linked_with_many(make_runtime: MakeRuntime, created: int, linked: int) -> tuple[DualWrite, list[str]]:
    """A new-new runtime with `created` extra legal entities, linked to DAT and the first `linked`."""
    rt = make_runtime("new-new", link=False)
    codes = _add_legal_entities(rt, created)
    rt.setup_power_platform_integration()
    rt.link(["DAT", *codes[:linked]], start_maps=False)
    return rt, codes


def test_forty_legal_entities_sync_initially_forty_one_fail_with_the_partition_error(
    make_runtime: MakeRuntime,
) -> None:
    rt, _ = _linked_with_many(make_runtime, 39, 39)

    async def go() -> None:
        rt.run(["Legal entities (cdm_companies)"])
        await rt.idle()

    run_async(go())
    assert rt.map_record("Legal entities (cdm_companies)")["state"] == "Running"  # 40: fine
    rt.stop(["Legal entities (cdm_companies)"])
    added = rt.add_legal_entities(_add_legal_entities(rt, 1, start=39))
    assert added["added"] == ["L039"] and not added["initialWrites"]  # over 40: no initial writes
    run_async(go())
    record = rt.map_record("Legal entities (cdm_companies)")
    assert record["state"] == "NotRunning"
    (job,) = [j for j in rt.jobs("Legal entities (cdm_companies)") if j["status"] == "Error"]
    message = job["errors"][0]["errorMessage"]
    assert f"Unable to get partition map for project {record['project']}" in message
    assert catalog.match_error(message).id == "too-many-legal-entities"  # type: ignore[union-attr]
    rt.run(["Legal entities (cdm_companies)"], initial_sync=False)  # live sync is fine up to 250
    assert rt.map_record("Legal entities (cdm_companies)")["state"] == "Running"


def test_two_hundred_fifty_legal_entities_link_two_hundred_fifty_one_are_refused(
    make_runtime: MakeRuntime,
) -> None:
    rt, codes = _linked_with_many(make_runtime, 250, 249)
    assert len(rt.connection()["legalEntities"]) == 250  # type: ignore[index]
    assert rt.store.count(ENTITIES["cdm_companies"]) == 0  # the Legal entities map brings them
    with pytest.raises(DualWriteError, match="up to 250 legal entities; the connection would have 251"):
        rt.add_legal_entities([codes[249]])
    with pytest.raises(DualWriteError, match="would have 251"):
        rt.link(["DAT", *codes], start_maps=False)
    assert len(rt.connection()["legalEntities"]) == 250  # type: ignore[index]


def test_duplicate_company_rows_fail_the_connection_with_the_documented_error(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime("new-new", link=False)
    # Two companies with one name (the documented cause compares names, not codes).
    rt.store.insert(ENTITIES["cdm_companies"], {"cdm_companycode": "DAT", "cdm_name": "Contoso"})
    rt.store.insert(ENTITIES["cdm_companies"], {"cdm_companycode": "USMF", "cdm_name": "contoso "})
    rt.setup_power_platform_integration()
    with pytest.raises(DualWriteError) as exc:
        rt.link()
    assert catalog.match_error(exc.value.message).id == "duplicate-company"  # type: ignore[union-attr]


def test_legal_entity_changes_are_refused_during_initial_writes(make_runtime: MakeRuntime) -> None:
    rt = make_runtime()

    async def go() -> None:
        rt.run(catalog.dependency_order([GROUPS]))  # jobs are spawned, not yet run
        with pytest.raises(DualWriteError, match=r"Adding legal entities failed: .* Initializing"):
            rt.add_legal_entities(["DAT"])
        with pytest.raises(DualWriteError, match="Removing a legal entity failed"):
            rt.remove_legal_entity("USMF")
        await rt.idle()

    run_async(go())
    assert rt.map_record(GROUPS)["state"] == "Running"
    assert rt.remove_legal_entity("FRRT")["legalEntities"] == ["DAT", "USMF", "GBSI", "DEMF"]


def test_reset_needs_stopped_maps_unless_forced_and_clears_the_configuration(
    make_runtime: MakeRuntime,
) -> None:
    rt = make_runtime()
    rt.run(catalog.dependency_order([ACCOUNTS]), initial_sync=False)
    with pytest.raises(DualWriteError, match="stop all dual-write maps"):
        rt.reset()
    conn = rt.reset(force=True, legal_entities=["USMF"])
    assert conn["legalEntities"] == ["USMF"] and rt.maps() == []
    for name in (
        "DualWriteProjectConfigurations",
        "msdyn_dualwriteruntimeconfigs",
        "msdyn_dualwriteentitymaps",
    ):
        assert rt.store.count(ENTITIES[name]) == 0
    with pytest.raises(DualWriteError, match="Apply Solution"):
        rt.run([ACCOUNTS])
    rt.apply_solutions()
    assert {m["state"] for m in rt.maps()} == {"NotRunning"}


def test_requests_record_the_outcome_of_each_action(make_runtime: MakeRuntime) -> None:
    rt = make_runtime()
    req = rt.run(catalog.dependency_order([GROUPS]), initial_sync=False)
    assert rt.request(req["requestId"])["state"] == "2"
    assert req["requestId"] in rt.map_record(GROUPS)["requests"]
    with pytest.raises(DualWriteError, match="unknown request"):
        rt.request("nope")


def test_added_legal_entities_get_initial_writes_unless_skipped(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("existing-new", link=False)
    rt.setup_power_platform_integration()
    rt.link(["USMF"], start_maps=False)
    companies = ENTITIES["cdm_companies"]

    async def go() -> None:
        rt.run(catalog.dependency_order([ACCOUNTS]))
        await rt.idle()
        assert rt.add_legal_entities(["GBSI"])["initialWrites"]
        assert not rt.add_legal_entities(["DEMF"], skip_initial_writes=True)["initialWrites"]
        await rt.idle()

    run_async(go())

    def accounts_of(code: str) -> int:
        (company,) = rt.store.find(companies, {"cdm_companycode": code})
        return rt.store.count(ENTITIES["accounts"], '"_msdyn_company_value" = ?', [company["cdm_companyid"]])

    orgs = {
        area: rt.store.count(
            ENTITIES["CustomersV3"], '"dataAreaId" = ? AND "PartyType" = ?', [area, "Organization"]
        )
        for area in ("gbsi", "demf")
    }
    assert orgs["gbsi"] and orgs["demf"]
    assert accounts_of("GBSI") == orgs["gbsi"]  # initial writes for the new legal entity
    # Skipped: nothing was copied, not even the company row the Legal entities map would write.
    assert rt.store.find(companies, {"cdm_companycode": "DEMF"}) == []
    assert rt.map_record(ACCOUNTS)["state"] == "Running"
