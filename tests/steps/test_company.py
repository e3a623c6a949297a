"""Creating the company in F&O and adding it to the connection (new-existing), with the portal played."""

from __future__ import annotations

from typing import Any

import pytest
from dw_helpers import Consultant

from dwlib.params import ParamsError
from dwlib.sandbox import control
from dwlib.steps.base import StepError, StepStatus
from dwlib.steps.company import AddCompany, CreateCompany
from dwlib.steps.link import PowerPlatformIntegration

PARAMS = {"legal_entities": ["USMF"],
          "companies": [{"code": "USMF", "name": "Contoso US", "country": "usa", "currency": "USD"}]}


def _legal_entity(consultant: Consultant, code: str) -> list[dict[str, Any]]:
    return consultant.fo_rows(f"LegalEntities?$filter=LegalEntityId eq '{code}'")


def test_create_then_add_the_company_converges(start_sandbox, step_context, portal_player) -> None:
    sandbox = start_sandbox("new-existing", rows=20, fresh=True)
    consultant = Consultant(sandbox)
    try:
        play = portal_player(sandbox)
        ctx = step_context(sandbox, consultant=play, params=PARAMS)
        assert PowerPlatformIntegration().execute(ctx).status == StepStatus.PASSED
        with pytest.raises(StepError, match=r"USMF do not exist in finance and operations .* run the "
                                            r"create-company step first"):
            AddCompany().execute(ctx)

        # Irreversible: nothing happens without confirmation, nor in a dry run.
        waiting = CreateCompany().execute(ctx)
        assert waiting.status == StepStatus.WAITING
        assert waiting.summary == "needs confirmation: create USMF 'Contoso US' in F&O LegalEntities"
        dry_ctx = step_context(sandbox, params=PARAMS, dry_run=True, confirm=lambda _what: True)
        dry = CreateCompany().execute(dry_ctx)
        assert dry.status == StepStatus.SKIPPED
        assert _legal_entity(consultant, "USMF") == []

        ctx.confirm = lambda _what: True
        created = CreateCompany().execute(ctx)
        assert created.status == StepStatus.PASSED, [c.to_dict() for c in created.checks]
        row = _legal_entity(consultant, "USMF")[0]
        assert (row["Name"], row["AddressCountryRegionId"], row["AccountingCurrency"]) == (
            "Contoso US", "USA", "USD")
        assert ctx.run_state["companies_created"] == ["USMF"]
        assert CreateCompany().execute(ctx).status == StepStatus.ALREADY_DONE

        added = AddCompany().execute(ctx)
        assert added.status == StepStatus.PASSED, [c.to_dict() for c in added.checks]
        assert ctx.instructions[-1].title == "Add legal entities to the dual-write connection"
        # The LCS setup started the maps and the new company has next to no data: the documented
        # route is with initial writes, and the running Legal entities map writes its company row.
        keep = "Clear 'Skip initial writes for newly added legal entities', then Save."
        assert keep in ctx.instructions[-1].steps
        checks = {c.name: c for c in added.checks}
        assert checks["legal entities in the connection"].evidence == \
            "DualWriteProjectConfigurations.PartitionMap: DAT, USMF"
        assert checks["add USMF"].evidence.startswith("with initial writes: ")
        assert "within the initial-sync limits" in checks["add USMF"].evidence
        assert checks["company USMF in Dataverse"].evidence == (
            "cdm_company USMF 'Contoso US': owner team 'USMF DW' in business unit 'USMF'")
        assert consultant.portal("GET", "/dualwrite/connection")["legalEntities"] == ["DAT", "USMF"]
        shown = len(ctx.instructions)
        assert AddCompany().execute(ctx).status == StepStatus.ALREADY_DONE
        assert len(ctx.instructions) == shown
    finally:
        consultant.close()


def test_an_existing_company_of_another_name_is_not_recreated_but_flagged(start_sandbox,
                                                                          step_context) -> None:
    sandbox = start_sandbox("new-data-existing", rows=20, fresh=True)
    params = {"legal_entities": ["USMF"], "companies": [{"code": "USMF", "name": "Contoso Dataverse"}]}
    ctx = step_context(sandbox, params=params, confirm=lambda _what: True)
    result = CreateCompany().execute(ctx)
    assert result.status == StepStatus.WARNING  # found in place (not created): a check, not a failure
    assert result.checks[0].evidence == ("LegalEntities USMF is named 'Contoso Entertainment System USA', "
                                         "not 'Contoso Dataverse'")
    assert not [e for e in ctx.session.journal.entries() if e.method == "POST" and "LegalEntities" in e.url]


def test_the_company_steps_need_companies_in_the_parameters(start_sandbox, step_context) -> None:
    # The parameters file is refused for it, with its other problems, before any step runs.
    with pytest.raises(ParamsError, match=r"companies: scenario new-existing creates a company"):
        step_context(start_sandbox("new-existing", rows=20),
                     params={"legal_entities": ["USMF"], "companies": []})


def test_a_missing_accounting_currency_is_created_first_as_dataverse_names_it(start_sandbox,
                                                                              step_context) -> None:
    sandbox = start_sandbox("new-existing", rows=20, fresh=True)  # new F&O: USD only
    params = {"legal_entities": ["GBSI"],
              "companies": [{"code": "GBSI", "name": "Contoso UK", "currency": "GBP"}]}
    consultant = Consultant(sandbox)
    try:
        assert consultant.fo_rows("Currencies?$filter=CurrencyCode eq 'GBP'") == []
        ctx = step_context(sandbox, params=params, confirm=lambda _what: True)
        result = CreateCompany().execute(ctx)
        assert result.status == StepStatus.PASSED, [c.to_dict() for c in result.checks]
        (gbp,) = consultant.fo_rows("Currencies?$filter=CurrencyCode eq 'GBP'")
        (dv,) = consultant.dv_rows("transactioncurrencies?$filter=isocurrencycode eq 'GBP'")
        assert gbp["Name"] == dv["currencyname"] == "Pound Sterling"
        assert _legal_entity(consultant, "GBSI")[0]["AccountingCurrency"] == "GBP"
        assert CreateCompany().execute(ctx).status == StepStatus.ALREADY_DONE
    finally:
        consultant.close()


def test_a_new_company_whose_data_breaks_the_limits_is_added_skipping_initial_writes(
        start_sandbox, step_context, portal_player) -> None:
    sandbox = start_sandbox("new-existing", rows=20, fresh=True)
    consultant = Consultant(sandbox)
    params = {"legal_entities": ["USMF"], "plan.limits.initial_sync_rows_per_legal_entity": 2,
              "companies": [{"code": "USMF", "name": "Contoso US", "customer_groups": ["30", "31", "32"]}]}
    try:
        ctx = step_context(sandbox, consultant=portal_player(sandbox), params=params,
                           confirm=lambda _what: True)
        # the LCS setup runs the maps
        assert PowerPlatformIntegration().execute(ctx).status == StepStatus.PASSED
        assert CreateCompany().execute(ctx).status == StepStatus.PASSED
        added = AddCompany().execute(ctx)
        assert added.status == StepStatus.PASSED, [c.to_dict() for c in added.checks]
        skip = "Select 'Skip initial writes for newly added legal entities', then Save."
        assert skip in ctx.instructions[-3].steps
        checks = {c.name: c for c in added.checks}
        # The running Customer groups map would copy 3 rows of USMF, over the (lowered) limit of 2.
        assert checks["add USMF"].evidence.startswith(
            "skipping initial writes: the running maps' data of the new companies does not fit an initial "
            "write (Customer groups (msdyn_customergroups) USMF: 3 rows in one legal entity (limit 2 per "
            "run)")
        # Skipped initial writes bring no company row: the Legal entities map's initial sync runs again.
        assert [i.title for i in ctx.instructions[-2:]] == ["Stop table maps Legal entities (cdm_companies)",
                                                            "Run table map Legal entities (cdm_companies)"]
        assert "ran the initial sync of Legal entities (cdm_companies) again for USMF" in added.summary
        assert checks["company USMF in Dataverse"].status == StepStatus.PASSED
        assert consultant.dv_rows("msdyn_customergroups?$filter=msdyn_groupid eq '31'") == []  # not copied
    finally:
        consultant.close()


def test_creates_refused_on_the_way_are_retried_and_make_each_row_once(start_sandbox, step_context,
                                                                       portal_player) -> None:
    sandbox = start_sandbox("new-existing", rows=0, fresh=True)
    consultant = Consultant(sandbox)
    try:
        company = {**PARAMS["companies"][0], "currency": "EUR", "customer_groups": ["30"]}
        ctx = step_context(sandbox, consultant=portal_player(sandbox),
                           params={**PARAMS, "companies": [company]})
        assert PowerPlatformIntegration().execute(ctx).status == StepStatus.PASSED
        # F&O throttles the first try of each create (429: it did nothing); a create is not
        # repeated blindly, but one that names its key is settled by looking it up, then sent again.
        control.traps(sandbox, [{"method": "POST", "path": f"^/finops/data/{entity}$", "respond": 429}
                                for entity in ("Currencies", "LegalEntities", "CustomerGroups")])
        ctx.confirm = lambda _what: True
        created = CreateCompany().execute(ctx)
        assert created.status == StepStatus.PASSED, created.summary
        assert all(t["fired"] for t in control.traps(sandbox))
        assert len(_legal_entity(consultant, "USMF")) == 1
        assert len(consultant.fo_rows("Currencies?$filter=CurrencyCode eq 'EUR'")) == 1
        assert len(consultant.fo_rows("CustomerGroups?cross-company=true&$filter=dataAreaId eq 'usmf'")) == 1
    finally:
        consultant.close()
