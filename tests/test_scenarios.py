"""The order of the steps in each scenario, against the guidance and the pages it links."""

from __future__ import annotations

import pytest

from dwlib.scenarios import OPERATIONS, SCENARIOS

BOOTSTRAPPED = [s.id for s in SCENARIOS.values()
                if s.id not in OPERATIONS and any(r.step == "bootstrap-apply" for r in s.steps)]


def _at(scenario: str, step: str) -> list[int]:
    """Positions of the uses of `step` in `scenario`."""
    return [i for i, r in enumerate(SCENARIOS[scenario].steps) if r.step == step]


def test_the_scenarios_with_existing_dataverse_data_bootstrap() -> None:
    assert sorted(BOOTSTRAPPED) == ["existing-existing", "new-data-existing", "new-existing"]


@pytest.mark.parametrize("scenario", BOOTSTRAPPED)
def test_the_legal_entities_map_runs_before_the_bootstrap(scenario: str) -> None:
    # Companies come from the Legal entities (cdm_companies) map (the legal-entities step runs it),
    # not from linking: "Enable the Cdm_companies table map" comes before "Run the sample bootstrapping code".
    (companies,) = _at(scenario, "legal-entities")
    assert companies < min(_at(scenario, "bootstrap-simulate"))


@pytest.mark.parametrize("scenario", BOOTSTRAPPED)
def test_the_bootstrap_comes_before_any_map_goes_live_and_needs_no_map_customisation(scenario: str) -> None:
    steps = [r.step for r in SCENARIOS[scenario].steps]
    apply = steps.index("bootstrap-apply")
    # Maps over the stamped tables stop first (the LCS setup may have started them) …
    assert steps.index("stop-maps") < steps.index("bootstrap-simulate") < apply
    # … and no step runs a map, migrates or syncs before the company data is in place.
    assert all(s not in steps[:apply] for s in ("table-maps", "migrate", "initial-sync"))
    # The documented path customises no standard map (map-defaults stays an explicit option).
    assert "map-defaults" not in steps


def test_new_data_existing_plans_again_after_the_new_company_is_bootstrapped() -> None:
    plans = _at("new-data-existing", "plan")
    assert len(plans) == 2
    apply = min(_at("new-data-existing", "bootstrap-apply"))
    first, second = plans
    assert first < min(_at("new-data-existing", "create-company"))  # the F&O volumes, before creating
    assert apply < second < min(_at("new-data-existing", "migrate"))  # the new company's volume too
    assert SCENARIOS["new-data-existing"].steps[second].id == "plan-new-company"
    # One initial sync, both ways, after the second plan.
    assert _at("new-data-existing", "initial-sync") == [len(SCENARIOS["new-data-existing"].steps) - 2]


def test_refresh_relink_resets_before_it_relinks_with_the_setup_steps() -> None:
    steps = [r.step for r in SCENARIOS["refresh-relink"].steps]
    # relink-environments: stop all maps, clean up (Reset link), then relink and enable the maps.
    assert steps[:3] == ["detect-refresh", "stop-all-maps", "reset-link"]
    assert steps[3:] == ["legal-entities", "plan", "migrate", "table-maps", "initial-sync", "verify"]


def test_maintenance_pauses_and_resumes_around_its_gate() -> None:
    assert [r.step for r in SCENARIOS["maintenance"].steps] == [
        "map-states", "pause-maps", "maintenance-over", "resume-maps", "verify"]


def test_add_legal_entity_reuses_the_new_company_steps_and_verifies_only_that_company() -> None:
    steps = SCENARIOS["add-legal-entity"].steps
    names = [r.step for r in steps]
    assert names[:5] == ["create-company", "add-company", "stop-maps", "bootstrap-simulate",
                         "bootstrap-apply"]
    assert names.index("plan") < names.index("table-maps") < names.index("verify")
    assert steps[-1].options == {"companies": "added"}
