"""The tables the sandbox emulates, as data.

Every entity set of both services is described once here; the store creates one SQLite table per
entity set from these definitions, and the OData layer uses them to validate `$select`,
`$filter` and `$orderby` names, to address rows by key or alternate key, and to translate lookups
(`_x_value` columns and `x@odata.bind` navigation properties).

Example:
    >>> ENTITIES["accounts"].key
    ('accountid',)
    >>> ENTITIES["CustomersV3"].key
    ('dataAreaId', 'CustomerAccount')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Service = Literal["dataverse", "finops"]
ColumnType = Literal["guid", "string", "int", "decimal", "bool", "datetime", "json"]


@dataclass(frozen=True)
class Lookup:
    """A Dataverse single-valued navigation property stored as a `_<name>_value` column."""

    nav: str  # navigation property used in `<nav>@odata.bind`, e.g. "msdyn_company"
    target: str  # entity set it points at, e.g. "cdm_companies"

    @property
    def column(self) -> str:
        return f"_{self.nav.lower()}_value"


@dataclass(frozen=True)
class Entity:
    """One entity set: its key, columns, alternate keys and lookups."""

    name: str  # entity set name as addressed in URLs
    service: Service
    logical_name: str  # Dataverse logical name / F&O public entity name (singular)
    key: tuple[str, ...]
    columns: dict[str, ColumnType]
    alternate_keys: tuple[tuple[str, ...], ...] = ()
    lookups: tuple[Lookup, ...] = ()
    system_columns: tuple[str, ...] = field(default=())

    @property
    def table(self) -> str:
        prefix = "dv" if self.service == "dataverse" else "fo"
        return f"{prefix}_{self.name.lower()}"

    @property
    def all_columns(self) -> dict[str, ColumnType]:
        cols = dict(self.columns)
        for lk in self.lookups:
            cols[lk.column] = "guid"
        return cols

    def lookup_by_nav(self, nav: str) -> Lookup | None:
        for lk in self.lookups:
            if lk.nav.lower() == nav.lower():
                return lk
        return None


# Columns every Dataverse table has in the emulation.
_DV_SYSTEM: dict[str, ColumnType] = {
    "createdon": "datetime",
    "modifiedon": "datetime",
    "versionnumber": "int",
    "statecode": "int",
    "statuscode": "int",
}
_DV_OWNED = (Lookup("ownerid", "systemusers"), Lookup("owningbusinessunit", "businessunits"))


def _dv(
    name: str,
    logical: str,
    pk: str,
    columns: dict[str, ColumnType],
    *,
    alternate_keys: tuple[tuple[str, ...], ...] = (),
    lookups: tuple[Lookup, ...] = (),
    owned: bool = True,
) -> Entity:
    cols: dict[str, ColumnType] = {pk: "guid", **columns, **_DV_SYSTEM}
    return Entity(
        name=name,
        service="dataverse",
        logical_name=logical,
        key=(pk,),
        columns=cols,
        alternate_keys=alternate_keys,
        lookups=lookups + (_DV_OWNED if owned else ()),
        system_columns=tuple(_DV_SYSTEM),
    )


def _fo(
    name: str,
    logical: str,
    key: tuple[str, ...],
    columns: dict[str, ColumnType],
) -> Entity:
    return Entity(name=name, service="finops", logical_name=logical, key=key, columns=columns)


DATAVERSE: tuple[Entity, ...] = (
    _dv(
        "organizations",
        "organization",
        "organizationid",
        {"name": "string", "basecurrencyid": "guid"},
        owned=False,
    ),
    _dv(
        "businessunits",
        "businessunit",
        "businessunitid",
        {"name": "string", "divisionname": "string"},
        lookups=(Lookup("parentbusinessunitid", "businessunits"),),
        owned=False,
    ),
    _dv(
        "systemusers",
        "systemuser",
        "systemuserid",
        {
            "fullname": "string",
            "domainname": "string",
            "applicationid": "guid",
            "azureactivedirectoryobjectid": "guid",
            "isdisabled": "bool",
            "accessmode": "int",
        },
        lookups=(Lookup("businessunitid", "businessunits"),),
        owned=False,
    ),
    _dv(
        "teams",
        "team",
        "teamid",
        {"name": "string", "teamtype": "int", "isdefault": "bool"},
        lookups=(Lookup("businessunitid", "businessunits"),),
        owned=False,
    ),
    _dv(
        "transactioncurrencies",
        "transactioncurrency",
        "transactioncurrencyid",
        {"isocurrencycode": "string", "currencyname": "string", "exchangerate": "decimal"},
        alternate_keys=(("isocurrencycode",),),
        owned=False,
    ),
    _dv(
        "cdm_companies",
        "cdm_company",
        "cdm_companyid",
        {"cdm_companycode": "string", "cdm_name": "string"},
        alternate_keys=(("cdm_companycode",),),
        lookups=(Lookup("cdm_defaultowningteam", "teams"),),
    ),
    _dv(
        "msdyn_customergroups",
        "msdyn_customergroup",
        "msdyn_customergroupid",
        {"msdyn_groupid": "string", "msdyn_description": "string"},
        alternate_keys=(("msdyn_groupid", "_msdyn_company_value"),),
        lookups=(Lookup("msdyn_company", "cdm_companies"),),
    ),
    _dv(
        "msdyn_paymentterms",
        "msdyn_paymentterm",
        "msdyn_paymenttermid",
        {"msdyn_name": "string", "msdyn_description": "string"},
        alternate_keys=(("msdyn_name", "_msdyn_company_value"),),
        lookups=(Lookup("msdyn_company", "cdm_companies"),),
    ),
    _dv(
        "accounts",
        "account",
        "accountid",
        {
            "name": "string",
            "accountnumber": "string",
            "customertypecode": "int",
            "creditlimit": "decimal",
            "description": "string",
            "msdyn_partynumber": "string",
            "telephone1": "string",
            "emailaddress1": "string",
            "address1_city": "string",
            "address1_country": "string",
        },
        alternate_keys=(("accountnumber",), ("accountnumber", "_msdyn_company_value")),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("transactioncurrencyid", "transactioncurrencies"),
            Lookup("msdyn_customergroupid", "msdyn_customergroups"),
            Lookup("msdyn_paymentterm", "msdyn_paymentterms"),
            Lookup("primarycontactid", "contacts"),
        ),
    ),
    _dv(
        "contacts",
        "contact",
        "contactid",
        {
            "firstname": "string",
            "lastname": "string",
            "fullname": "string",
            "emailaddress1": "string",
            "telephone1": "string",
            "msdyn_contactpersonid": "string",
            "msdyn_sellable": "bool",
            "msdyn_partynumber": "string",
        },
        alternate_keys=(("msdyn_contactpersonid",), ("msdyn_contactpersonid", "_msdyn_company_value")),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("parentcustomerid", "accounts"),
            Lookup("transactioncurrencyid", "transactioncurrencies"),
            Lookup("msdyn_customergroupid", "msdyn_customergroups"),
        ),
    ),
    _dv(
        "msdyn_vendors",
        "msdyn_vendor",
        "msdyn_vendorid",
        {"msdyn_vendoraccountnumber": "string", "msdyn_vendorname": "string"},
        alternate_keys=(("msdyn_vendoraccountnumber", "_msdyn_company_value"),),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("transactioncurrencyid", "transactioncurrencies"),
        ),
    ),
    _dv(
        "solutions",
        "solution",
        "solutionid",
        {
            "uniquename": "string",
            "friendlyname": "string",
            "version": "string",
            "ismanaged": "bool",
            "installedon": "datetime",
        },
        alternate_keys=(("uniquename",),),
        owned=False,
    ),
    # Security: roles and their assignment to users and teams (the N:N intersect tables).
    _dv("roles", "role", "roleid", {"name": "string"},
        lookups=(Lookup("businessunitid", "businessunits"),), owned=False),
    _dv("systemuserrolescollection", "systemuserroles", "systemuserroleid",
        {"systemuserid": "guid", "roleid": "guid"}, owned=False),
    _dv("teamrolescollection", "teamroles", "teamroleid", {"teamid": "guid", "roleid": "guid"}, owned=False),
    # Plug-in registration: assemblies, their types and the steps that run them (statecode 1: disabled).
    _dv("pluginassemblies", "pluginassembly", "pluginassemblyid", {"name": "string", "version": "string"},
        owned=False),
    _dv("plugintypes", "plugintype", "plugintypeid", {"typename": "string", "name": "string"},
        lookups=(Lookup("pluginassemblyid", "pluginassemblies"),), owned=False),
    _dv("sdkmessageprocessingsteps", "sdkmessageprocessingstep", "sdkmessageprocessingstepid",
        {"name": "string"}, lookups=(Lookup("plugintypeid", "plugintypes"),), owned=False),
    _dv(
        "msdyn_dualwriteentitymaps",
        "msdyn_dualwriteentitymap",
        "msdyn_dualwriteentitymapid",
        {
            "msdyn_name": "string",
            "msdyn_displayname": "string",
            "msdyn_version": "string",
            "msdyn_mapping": "json",
            "ismanaged": "bool",
        },
        owned=False,
    ),
    _dv(
        "msdyn_dualwriteruntimeconfigs",
        "msdyn_dualwriteruntimeconfig",
        "msdyn_dualwriteruntimeconfigid",
        {
            "msdyn_name": "string",
            "msdyn_status": "int",
            "msdyn_internalentityname": "string",
            "msdyn_externalentityname": "string",
            "msdyn_unsecure": "json",
        },
        owned=False,
    ),
)

FINOPS: tuple[Entity, ...] = (
    _fo(
        "LegalEntities",
        "LegalEntity",
        ("LegalEntityId",),
        {
            "LegalEntityId": "string",
            "Name": "string",
            "CompanyType": "string",
            "AddressCountryRegionId": "string",
            "AccountingCurrency": "string",
        },
    ),
    _fo(
        "Currencies",
        "Currency",
        ("CurrencyCode",),
        {"CurrencyCode": "string", "Name": "string", "Symbol": "string"},
    ),
    _fo(
        "CustomerGroups",
        "CustomerGroup",
        ("dataAreaId", "CustomerGroupId"),
        {
            "dataAreaId": "string",
            "CustomerGroupId": "string",
            "Description": "string",
            "PaymentTermId": "string",
        },
    ),
    _fo(
        "PaymentTerms",
        "PaymentTerm",
        ("dataAreaId", "Name"),
        {"dataAreaId": "string", "Name": "string", "Description": "string", "NumberOfDays": "int"},
    ),
    _fo(
        "CustomersV3",
        "CustomerV3",
        ("dataAreaId", "CustomerAccount"),
        {
            "dataAreaId": "string",
            "CustomerAccount": "string",
            "PartyType": "string",
            "OrganizationName": "string",
            "PersonFirstName": "string",
            "PersonLastName": "string",
            "NameAlias": "string",
            "CustomerGroupId": "string",
            "SalesCurrencyCode": "string",
            "PaymentTerms": "string",
            "CreditLimit": "decimal",
            "SalesMemo": "string",
            "PartyNumber": "string",
            "ContactPersonId": "string",
            "PrimaryContactEmail": "string",
            "PrimaryContactPhone": "string",
            "AddressCity": "string",
            "AddressCountryRegionId": "string",
        },
    ),
    _fo(
        "VendorsV2",
        "VendorV2",
        ("dataAreaId", "VendorAccountNumber"),
        {
            "dataAreaId": "string",
            "VendorAccountNumber": "string",
            "VendorOrganizationName": "string",
            "VendorGroupId": "string",
            "CurrencyCode": "string",
        },
    ),
    _fo(
        "DualWriteProjectConfigurations",
        "DualWriteProjectConfiguration",
        ("RecId",),
        {
            "RecId": "int",
            "ProjectName": "string",
            "ExternalEntityName": "string",
            "InternalEntityName": "string",
            "ExternalEnvironmentURL": "string",
            "Status": "int",
            "IsDebugMode": "string",
            "IsDelete": "string",
            "IntegrationKey": "string",
            "QueryFilterExpression": "string",
            "PartitionMap": "string",
        },
    ),
)

ENTITIES: dict[str, Entity] = {e.name: e for e in DATAVERSE + FINOPS}


def entity(name: str, service: Service) -> Entity | None:
    """The entity set `name` of `service`, matched case-sensitively as OData does."""
    ent = ENTITIES.get(name)
    return ent if ent is not None and ent.service == service else None
