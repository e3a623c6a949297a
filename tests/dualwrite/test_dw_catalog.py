"""The catalogue: table maps, the documented order, limits, known errors, solutions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwlib import catalog

FIXTURES = Path(__file__).parent / "fixtures" / "map-columns"

REQUIRED_MAPS = [
    "Legal entities (cdm_companies)",
    "Currencies (transactioncurrencies)",
    "Customer groups (msdyn_customergroups)",
    "Terms of payment (msdyn_paymentterms)",
    "Customers V3 (accounts)",
    "Customers V3 (contacts)",
    "Vendors V2 (msdyn_vendors)",
    "CDS Contacts V2 (contacts)",
]


def test_required_maps_are_catalogued_with_their_documented_facts() -> None:
    names = [m.name for m in catalog.table_maps()]
    assert set(REQUIRED_MAPS) <= set(names)
    accounts = catalog.table_map("Customers V3 (accounts)")
    assert accounts.finops_data_entity == "CustCustomerV3Entity"
    assert accounts.integration_key == ("accountnumber", "msdyn_company.cdm_companycode")
    assert accounts.source_filter == '((PartyType == "Organization"))'
    assert accounts.dataverse_filter == "customertypecode eq 3"
    assert accounts.single_threaded and not catalog.table_map("Customers V3 (contacts)").single_threaded
    assert catalog.table_map("Vendors V2 (msdyn_vendors)").single_threaded


def test_lookup_count_counts_the_dataverse_lookup_rows() -> None:
    accounts = catalog.table_map("customers-v3-accounts")
    lookups = [r.dataverse for r in accounts.mappings if r.dataverse and "." in r.dataverse]
    # The pre-GAB map has 10: "10 or more lookups" fail the export when Dataverse has rows.
    assert accounts.lookup_count == len(lookups) == catalog.limits().failing_lookups == 10


def _documented(map_id: str) -> list[tuple[str, str, str, str]]:
    """The rows of a published map page (tests/dualwrite/fixtures/map-columns/<id>.txt)."""
    lines = (FIXTURES / f"{map_id}.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(part.strip() for part in line.split("|")) for line in lines  # type: ignore[misc]
            if line and not line.startswith("#")]


@pytest.mark.parametrize("map_id", [m.id for m in catalog.table_maps()])
def test_every_map_carries_its_published_column_rows(map_id: str) -> None:
    """Each catalogue map has the rows of its published page, in order: the F&O field (the page's
    upper-case name), the map type, the Dataverse column and the default."""
    m = catalog.table_map(map_id)
    ours = [(c.finops.upper() if c.finops else "none", c.direction, c.dataverse or "none",
             "" if c.default is None else str(c.default)) for c in m.mappings]
    assert ours == _documented(map_id)
    assert m.mappings_complete and m.mappings_source.split(":")[0] in ("OLD", "REF")


def test_value_maps_are_the_documented_ones_and_the_unsourced_ones_are_marked() -> None:
    accounts = catalog.table_map("Customers V3 (accounts)")
    rows = {c.finops: c for c in accounts.mappings}
    hold = rows["OnHoldStatus"]
    assert dict(hold.values or ()) == {"no": 806380000, "invoice": 806380001, "all": 806380002,
                                       "payment": 806380003, "requisition": 806380004, "never": 806380005}
    assert hold.to_dataverse_value("Requisition") == 806380004 and hold.to_finops_value(806380002) == "All"
    assert rows["CreditLimitIsMandatory"].to_dataverse_value("Yes") is True
    with pytest.raises(catalog.ValueMapError, match="'Sometimes' has no entry"):
        hold.to_dataverse_value("Sometimes")
    # No source lists msdyn_invoiceaddress's values: the row is kept, marked and not converted.
    assert accounts.unsourced == [rows["InvoiceAddress"]] and rows["InvoiceAddress"].value_map_missing
    terms = {c.finops: c for c in catalog.table_map("terms-of-payment").mappings}
    assert terms["PaymentMethodType"].to_finops_value(806380992) == "CurrentMth"
    # Every other transform has its value list, and every row says where it comes from.
    for m in catalog.table_maps():
        assert all(c.values is not None for c in m.mappings if c.direction == "><" and c not in m.unsourced)
        assert all(c.source for c in m.mappings)
    gender = {c.finops: c for c in catalog.table_map("customers-v3-contacts").mappings}["PersonGender"]
    assert gender.values_source == "INFERRED"  # the page gives no list: taken from REF #220, marked


def test_filters_parse_into_conditions_that_evaluate_rows() -> None:
    contacts = catalog.table_map("Customers V3 (contacts)")
    cond = contacts.dataverse_conditions
    assert [c.column for c in cond] == ["msdyn_sellable", "msdyn_contactpersonid"]
    assert all(c.matches({"msdyn_sellable": True, "msdyn_contactpersonid": "CP-1"}) for c in cond)
    assert not all(c.matches({"msdyn_sellable": False, "msdyn_contactpersonid": "CP-1"}) for c in cond)
    (person,) = contacts.finops_conditions
    assert person.matches({"PartyType": "Person"}) and not person.matches({"PartyType": "Organization"})
    with pytest.raises(ValueError, match="unsupported"):
        catalog.parse_dataverse_filter("startswith(name, 'A')")


def test_dependency_order_follows_the_documented_finance_order() -> None:
    order = catalog.dependency_order(["Customers V3 (contacts)", "Customers V3 (accounts)"])
    # §5.3: currencies, legal entities, terms of payment, customer groups, then customers.
    assert order == [
        "Currencies (transactioncurrencies)",
        "Legal entities (cdm_companies)",
        "Terms of payment (msdyn_paymentterms)",
        "Customer groups (msdyn_customergroups)",
        "Customers V3 (accounts)",
        "Customers V3 (contacts)",
    ]
    every = catalog.dependency_order([m.name for m in catalog.table_maps()])
    for m in catalog.table_maps():
        assert all(every.index(dep) < every.index(m.name) for dep in m.depends_on)
    assert catalog.dependency_order(["Customers V3 (contacts)"], include_dependencies=False) == [
        "Customers V3 (contacts)"
    ]


def test_unknown_map_names_the_known_ones() -> None:
    with pytest.raises(catalog.CatalogError, match="Customers V3 \\(accounts\\)"):
        catalog.table_map("Customers V4")


def test_limits_are_the_documented_numbers() -> None:
    lim = catalog.limits()
    assert (
        lim.initial_sync_rows_per_legal_entity,
        lim.single_threaded_dataverse_to_finops_rows,
        lim.failing_lookups,
        lim.initial_sync_legal_entities,
        lim.live_sync_legal_entities,
        lim.top_errors,
    ) == (500_000, 70_000, 10, 40, 250, 5)


# Verbatim texts of dualwrite-facts.md §6 (and the §2.2 / §2.18 ones) → the catalogue entry.
DOCUMENTED = [
    (
        "Dual-write failure - Plugin registration failed: [(Unable to get partition map for project "
        "DWM-1ae35e60-4bc2-4905-88ea-XXXXX. Error Exceeds the maximum partitions allowed for mapping "
        "DWM-1ae35e60-4bc2-4905-88ea- XXXXX)], One or more errors occurred.",
        "too-many-legal-entities",
    ),
    (
        "CRMExport: Package execution complete. Error Description 5 Attempts to get data from "
        "https://xxxxx//datasets/yyyyy/tables/accounts/items?$select=accountnumber, address2_city "
        "(msdyn_company/cdm_companyid eq 'ID')&$orderby=accountnumber asc failed.",
        "too-many-lookups",
    ),
    (
        "Initial writes failed while parsing the data for leg:From Dynamics 365 for Finance and Operations "
        "Entity to Dynamics 365 for Sales Entity - Legal Entity. Message: Type=Microsoft.VisualBasic.FileIO."
        "MalformedLineException, Msg=Line # cannot be parsed using the current Delimiters.",
        "double-quotes-in-data",
    ),
    (
        "([Bad Request], The remote server returned an error: (400) Bad Request.), AX export encountered an "
        "error",
        "dmf-service-not-running",
    ),
    (
        "([Forbidden], The remote server returned an error: (403) Forbidden.), AX export encountered an "
        "error",
        "dtappid-forbidden",
    ),
    (
        "Couldn't resolve the guid for the field: msdyn_billingaccount.accountnumber. The lookup wasn't "
        "found: "
        "C-1. Try this URL(s) to check if the reference data exists: https://x",
        "missing-reference-data",
    ),
    ("Party number couldn't be found in Dataverse.", "party-number-not-found"),
    (
        "An error occurred while validating input parameters: Microsoft.OData.ODataException: Can't convert "
        "the literal '000000' to the expected type'Edm.Decimal',",
        "decimal-literal-locale",
    ),
    ("Cannot convert the literal '08:00:00' to the expected type edm.int32", "time-literal-int32"),
    (
        "Unable to complete initial data sync. Error: dual-write failure - plugin registration failed: "
        "Unable "
        "to build dual-write lookup metadata. Error object reference not set to an instance of an object.",
        "lookup-metadata",
    ),
    ("Project validation failed. Missing destination field msdyn_x", "missing-destination-field"),
    ("Missing source field PARTYTYPE in the schema.", "missing-source-field"),
    (
        "Customer groups (msdyn_customergroups) : Dual write failure - Dynamics 365 for Sales solution "
        "'Dynamics365Company' has version mismatch. Version: '2.0.2.10' Required version: '2.0.133'",
        "solution-version-mismatch",
    ),
    ("Saving connection set failed! An item with the same key has already been added.", "duplicate-company"),
    ("Response status code does not indicate success: 404 (Not Found).", "app-consent-missing"),
    (
        "Finance and operations apps environment ***.cloudax.dynamics.com is not discoverable.",
        "finops-not-discoverable",
    ),
    (
        "MSG=[Failed to setup dual write environment. Error Details:Response status code does not indicate "
        "success: 403 (Forbidden). ...",
        "no-power-apps-license",
    ),
    ("Response status code does not indicate success: 401 (Unauthorized).", "not-setup-user"),
    ("login.microsoftonline.com refused to connect.", "login-refused"),
    ("Response status code does not indicate success: 403 (tokenexchange).", "token-exchange-forbidden"),
    (
        '[Forbidden], [{"status":403,"source":"","message":"Error from token exchange: User is not allowed '
        "to "
        'access connection dynamicscrmonline/xxxxxx-xxxx-xxxx-xxxxxxxx"}], The remote server returned an '
        "error: "
        "(403) Forbidden.",
        "linked-dataverse-unavailable",
    ),
    (
        "DOMException: Failed to read the 'sessionStorage' property from 'Window': Access is denied for this "
        "document.",
        "third-party-cookies",
    ),
    (
        "DW9003 Failed to connect to CRM. Ensure that the service principal has the correct permissions to "
        "access CRM.",
        "dw9003",
    ),
    (
        "Microsoft has detected that your environment is linked via Dual-write to a different destination "
        "than "
        "specified in Power Platform Integration, which is not recommended.",
        "link-mismatch",
    ),
    (
        "The 'link' and 'Unlink' buttons have been replaced with the ‘reset link’ button. Learn more",
        "reset-link-banner",
    ),
    ("0x80048d0b Dataverse instance isn't integrated with finance and operations.", "not-integrated"),
    ("DWDVEV1001 Missing Dataverse APIHub connection, without ConnectionFix support",
     "dwdvev1001-dataverse-connection-missing"),
    ("DWFOEV1001 Missing AX APIHub connection without ConnectionFix support",
     "dwfoev1001-finops-connection-missing"),
    ("DWDVEV1003 Company mismatched between DualWrite and Dataverse",
     "dwdvev1003-company-mismatch-dataverse"),
    ("DWFOEV1003 Company mismatched between DualWrite and FO", "dwfoev1003-company-mismatch-finops"),
    ("DWFOEV1005 Missing AX APIHub connection", "dwfoev1005-apihub-connector"),
    (
        "DWDVEV1002 DataVerse deprecated connection is getting used for New Regions",
        "dwdvev1002-deprecated-connection",
    ),
    ("DWDVEV1004 Stale DualWrite Configuration present in DV", "dwdvev1004-stale-configuration-dataverse"),
    ("DWFOEV1004 Stale DualWrite Configuration present in F&O", "dwfoev1004-stale-configuration-finops"),
    ("DWFOEV1006 Default team name doesn't match its business unit name", "dwfoev1006-default-team-renamed"),
    ("DWDVEV1007 Default owning team is missing on a company", "dwdvev1007-no-default-owning-team"),
    (
        "Dual write failure - Plugin registration failed: [(Unable to get partition map for project "
        "DWM-1ae35e60-4bc2-4905-88ea-XXXXX. Error Exceeds the maximum partitions allowed for mapping "
        "DWM-1ae35e60-4bc2-4905-88ea-XXXXX)], One or more errors occurred.",
        "too-many-legal-entities",
    ),
    ("5 Attempts to get data from https://XXXX.azure-apim.net/apim... Failed", "too-many-lookups"),
    (
        "Dual write Initial Sync completed with status: Error. Following are the details: Executed leg: From "
        "AX Financial dimensions to CRM msdyn_dimensionattributes ([Bad Request], The remote server returned "
        "an error: (400) Bad Request.), AX export encountered an error. Dual write Initial sync failed",
        "dmf-service-not-running",
    ),
    (
        "[{\\\"error\\\":{\\\"code\\\":\\\"0x80072560\\\",\\\"message\\\":\\\"The user isn't a member of the "
        "organization.\\\"}}], The remote server returned an error: (403) Forbidden.",
        "user-not-member",
    ),
    ("Payload creation failed with error Invalid URI: The URI is empty.", "payload-uri-empty"),
    (
        "An unexpected error occurred from ISV code. (ErrorType = ClientError) Unexpected exception from "
        "plug-in (Execute): Microsoft.Dynamics.Integrator.DualWriteRuntime.Plugins.PostCommitPlugin: "
        "System.Exception: failed to process entity account - (A connection attempt failed because the "
        "connected party did not properly respond",
        "payload-uri-empty",
    ),
    (
        "SecureConfig Organization (???) doesn't match actual CRM Organization (???).",
        "secureconfig-mismatch",
    ),
    (
        "Unable to write data to entity aaa_fundingsources. Unable to lookup ebecsfs_contracts with values "
        "{PC00...}. Writes to aaa_fundingsources failed with error message Exception message: The remote "
        "server returned an error: (400) Bad Request.",
        "lookup-in-same-batch",
    ),
    (
        "Unable to write data to entity msdyn_partypostaladdresses.Writes to "
        "DirPartyPostalAddressLocationCDSEntity failed with error message Request failed with status code "
        "BadRequest and CDS error code : 0x80040265 response message: An error occurred in plugin. A record "
        "that has the attribute values Location ID already exists.",
        "location-id-exists",
    ),
    *[(f"Project validation failed. [DIPV{code}] the map is not valid", f"dipv{code}") for code in (
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1010", "1011", "1012",
        "1014", "1015", "1016", "1017", "1018", "1019", "1020", "1021", "1022", "1023", "1024", "1025",
        "1026", "1027", "1028", "1029", "1030", "1031")],
    (
        "Project validation failed. [DIPV1025] Missing destination field msdyn_x in the cached schema",
        "dipv1025",
    ),
    (
        '[{\\"error\\":{\\"code\\":\\"0x80072560\\",\\"message\\":\\"The user is not a member of the '
        'organization.\\"}}], The remote server returned an error: (403) Forbidden.',
        "user-not-member",
    ),
    (
        "Cannot save the changes to the database. Unit of Work can not commit transaction. Unable to write "
        "data "
        "to entity uoms. Writes to UnitOfMeasureEntity failed with error message Unable to sync with entity "
        "uoms.",
        "live-missing-reference-data",
    ),
    ("Unable to generate payload for entity CustCustomerV3Entity", "payload-uri-empty"),
    (
        "SecureConfig Organization (???) does not match actual CRM Organization (???).",
        "secureconfig-mismatch",
    ),
    (
        "Unable to write data to entity aaa_fundingsources. Unable to lookup ebecsfs_contracts with values "
        "{PC00...}.",
        "lookup-in-same-batch",
    ),
    (
        "An error occurred in plugin. A record that has the attribute values Location ID already exists.",
        "location-id-exists",
    ),
    (
        '"RecordError0":"Write failed for entity Customers V3 with unknown exception - Party record not '
        "found "
        "for party type 'Organization'\"}.",
        "party-record-not-found",
    ),
    (
        "Cannot update a party's type from 'DirOrganization' to 'DirPerson', a delete of the existing party "
        "followed by an insert with the new type should be performed instead.",
        "party-type-change",
    ),
    (
        "Error Code: -2147220970 Error Message: Message size exceeded when sending context to Sandbox. "
        "Message "
        "size: 117 MB",
        "message-size-exceeded",
    ),
    (
        "Unable to write data to table x. Principal team (Id=1, ..., is missing prvReadcol_x privilege "
        "(Id=2) "
        "on OTC=3.",
        "missing-privilege",
    ),
    (
        "Cannot select a row in Dual write project sync (DualWriteProjectConfiguration). The SQL database "
        "has "
        "issued an error. Invalid column name 'ISDELETE'.",
        "isdelete-column",
    ),
]


@pytest.mark.parametrize(("text", "error_id"), DOCUMENTED, ids=[e for _, e in DOCUMENTED])
def test_every_documented_error_text_maps_to_its_remediation(text: str, error_id: str) -> None:
    hit = catalog.match_error(text)
    assert hit is not None and hit.id == error_id
    assert hit.fix and hit.meaning and hit.doc_url.startswith("https://learn.microsoft.com/")


# Documented fixes (issue 13, item 10): what each entry must tell the consultant to do.
FIXES = {
    "payload-uri-empty": ("DualWriteProjectConfigurationEntity", "run the map again"),
    "user-not-member": ("System Administrator", "owning team", "00000015-0000-0000-c000-000000000000"),
    "linked-dataverse-unavailable": ("support ticket", "Not running"),
    "dwfoev1005-apihub-connector": ("BypassApiHubConnector",),
    "live-missing-reference-data": ("exists on both sides", "DualWriteProjectConfigurationEntity",
                                    "run the map again"),
    "lookup-in-same-batch": ("relationship",),
}


@pytest.mark.parametrize("error_id", sorted(FIXES))
def test_documented_fixes_are_the_documented_ones(error_id: str) -> None:
    fix = catalog.known_error(error_id).fix
    assert all(part.lower() in fix.lower() for part in FIXES[error_id]), fix
    assert "reset the dual-write link" not in fix.lower() and "reset link and" not in fix.lower()


def test_duplicate_companies_are_compared_by_name_as_documented() -> None:
    assert "same name" in catalog.known_error("duplicate-company").meaning


def test_match_error_prefers_the_phase_and_returns_none_for_unknown_text() -> None:
    live = (
        "Unable to write data to entity accounts. Writes to CustCustomerV3Entity failed with error message "
        "Couldn't resolve the guid for the field: msdyn_customergroupid.msdyn_groupid. The lookup wasn't "
        "found"
    )
    assert catalog.match_error(live).id == "missing-reference-data"
    assert catalog.match_error(live, phase="live-sync").id == "live-missing-reference-data"
    assert catalog.match_error("all good") is None


def test_required_solutions_include_core_app_core_and_finance_with_versions() -> None:
    sols = {s.uniquename: s for s in catalog.required_solutions()}
    assert {"DualWriteCore", "Dynamics365Company", "Dynamics365FinanceExtended"} <= set(sols)
    assert "Dynamics365SupplyChainExtended" not in sols  # only Party & GAB needs Supply Chain
    assert sols["DualWriteCore"].names == ("DualWriteCore", "msdyn_DualWriteCore")
    assert not sols["Dynamics365Company"].satisfied_by("2.0.2.10")  # the documented mismatch
    assert sols["Dynamics365Company"].satisfied_by("2.0.133") and not sols["Dynamics365Company"].satisfied_by(
        None
    )
    gab = {s.uniquename for s in catalog.required_solutions(["Party & GAB"])}
    assert {"Dynamics365SupplyChainExtended", "HCMCommon", "Party"} <= gab
    with pytest.raises(KeyError, match="unknown dual-write package"):
        catalog.required_solutions(["Nope"])


def test_app_users_are_the_documented_ids() -> None:
    ids = {(u.side, u.application_id) for u in catalog.app_users()}
    assert ("dataverse", "00000015-0000-0000-c000-000000000000") in ids
    assert ("finops", "6f7d0213-62b1-43a8-b7f4-ff2bb8b7b452") in ids
