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


LookupKind = Literal["Lookup", "Customer", "Owner"]


@dataclass(frozen=True)
class Lookup:
    """A Dataverse lookup column: `_<attribute>_value` holds the id of a row of `target` (or of
    one of `others`).

    A plain lookup has one single-valued navigation property, named like the attribute. A Customer
    lookup (`parentcustomerid`) has one per target table, `parentcustomerid_account` and
    `parentcustomerid_contact`; an Owner lookup (`ownerid`) has one, `ownerid`, that takes a user
    or a team (web-api-navigation-properties.md, Multi-table lookups).

    >>> Lookup("parentcustomerid", "accounts", "Customer", ("contacts",),
    ...        ("parentcustomerid_account", "parentcustomerid_contact")).navigations()
    {'parentcustomerid_account': ('accounts',), 'parentcustomerid_contact': ('contacts',)}
    """

    attribute: str  # logical name of the lookup attribute, e.g. "msdyn_company"
    target: str  # entity set of its (first) target table, e.g. "cdm_companies"
    kind: LookupKind = "Lookup"
    others: tuple[str, ...] = ()  # entity sets of further target tables (Customer, Owner)
    navs: tuple[str, ...] = ()  # navigation property per target, when not the attribute name
    relationships: tuple[str, ...] = ()  # relationship schema name per navigation property, if known

    @property
    def column(self) -> str:
        return f"_{self.attribute}_value"

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target, *self.others)

    def navigations(self) -> dict[str, tuple[str, ...]]:
        """Each single-valued navigation property → the entity sets it may refer to."""
        if self.navs:
            return {nav: (target,) for nav, target in zip(self.navs, self.targets, strict=True)}
        return {self.attribute: self.targets}


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
    kinds: dict[str, str] = field(default_factory=dict)  # column → Dataverse AttributeType beyond storage
    bulk: bool = False  # Dataverse: CreateMultiple/UpdateMultiple/UpsertMultiple available

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

    def navigation(self, nav: str) -> tuple[Lookup, tuple[str, ...]] | None:
        """The lookup behind single-valued navigation property `nav` and the entity sets it may
        refer to; None when there is none. Names match case-sensitively, as the service's do."""
        for lk in self.lookups:
            targets = lk.navigations().get(nav)
            if targets is not None:
                return lk, targets
        return None

    def lookup(self, attribute: str) -> Lookup | None:
        """The lookup whose attribute (logical name) is `attribute`, or None."""
        return next((lk for lk in self.lookups if lk.attribute == attribute), None)


# Columns every Dataverse table has in the emulation.
_DV_SYSTEM: dict[str, ColumnType] = {
    "createdon": "datetime",
    "modifiedon": "datetime",
    "versionnumber": "int",
    "statecode": "int",
    "statuscode": "int",
}
# Owner takes a user or a team (AttributeType Owner); the owning business unit follows the owner.
_DV_OWNED = (Lookup("ownerid", "systemusers", "Owner", ("teams",)),
             Lookup("owningbusinessunit", "businessunits"))
# AttributeTypes the storage type does not tell (dataverse_metadata derives the others).
_DV_KINDS = {"statecode": "State", "statuscode": "Status", "versionnumber": "BigInt"}


def _dv(
    name: str,
    logical: str,
    pk: str,
    columns: dict[str, ColumnType],
    *,
    alternate_keys: tuple[tuple[str, ...], ...] = (),
    lookups: tuple[Lookup, ...] = (),
    owned: bool = True,
    kinds: dict[str, str] | None = None,
    bulk: bool = True,
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
        kinds={**_DV_KINDS, **(kinds or {})},
        bulk=bulk,
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
        bulk=False,
    ),
    _dv(
        "businessunits",
        "businessunit",
        "businessunitid",
        {"name": "string", "divisionname": "string"},
        lookups=(Lookup("parentbusinessunitid", "businessunits"),),
        owned=False,
        bulk=False,
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
        bulk=False,
    ),
    _dv(
        "teams",
        "team",
        "teamid",
        {"name": "string", "teamtype": "int", "isdefault": "bool"},
        lookups=(Lookup("businessunitid", "businessunits"),),
        owned=False,
        bulk=False,
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
            "accountcategorycode": "int",
            "customertypecode": "int",
            "creditlimit": "decimal",
            "revenue": "decimal",
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
            Lookup("primarycontactid", "contacts", relationships=("account_primary_contact",)),
        ),
        kinds={"accountcategorycode": "Picklist", "customertypecode": "Picklist", "creditlimit": "Money",
               "revenue": "Money", "description": "Memo"},
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
            Lookup("parentcustomerid", "accounts", "Customer", ("contacts",),
                   ("parentcustomerid_account", "parentcustomerid_contact"),
                   ("contact_customer_accounts", "contact_customer_contacts")),
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
        bulk=False,
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
        kinds={"msdyn_mapping": "Memo"},
        owned=False,
        bulk=False,
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
        kinds={"msdyn_status": "Picklist"},
        owned=False,
        bulk=False,
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
            "Status": "string",  # an enum: F&O OData carries enum values by name
            "IsDebugMode": "string",
            "IsDelete": "string",
            "IntegrationKey": "string",
            "QueryFilterExpression": "string",
            "PartitionMap": "string",
        },
    ),
)

# Platform tables the sandbox derives from this schema instead of storing rows (dataverse_metadata):
# which message each table supports (bulk-operations.md, Availability with standard tables).
PLATFORM: tuple[Entity, ...] = (
    _dv("sdkmessages", "sdkmessage", "sdkmessageid", {"name": "string"}, owned=False, bulk=False),
    _dv("sdkmessagefilters", "sdkmessagefilter", "sdkmessagefilterid",
        {"primaryobjecttypecode": "string", "iscustomprocessingstepallowed": "bool"},
        lookups=(Lookup("sdkmessageid", "sdkmessages"),), owned=False, bulk=False),
)

ENTITIES: dict[str, Entity] = {e.name: e for e in DATAVERSE + FINOPS}
_ALL: dict[str, Entity] = {**ENTITIES, **{e.name: e for e in PLATFORM}}


def entity(name: str, service: Service) -> Entity | None:
    """The entity set `name` of `service` (platform tables included), matched case-sensitively as
    OData does.

    >>> entity("Accounts", "dataverse") is None, entity("sdkmessagefilters", "dataverse").key
    (True, ('sdkmessagefilterid',))
    """
    ent = _ALL.get(name)
    return ent if ent is not None and ent.service == service else None


def relationship_name(ent: Entity, lk: Lookup, nav: str) -> str:
    """The schema name of the N:1 relationship behind `ent`'s navigation property `nav`; it is
    also the name of the collection-valued navigation property on the target table.

    >>> contacts = ENTITIES["contacts"]
    >>> relationship_name(contacts, contacts.lookup("parentcustomerid"), "parentcustomerid_contact")
    'contact_customer_contacts'
    """
    if lk.relationships:
        return lk.relationships[list(lk.navigations()).index(nav)]
    if lk.kind == "Owner":  # the platform's names for the system relationships of owned tables
        return f"owner_{ent.name}"
    if lk.attribute == "owningbusinessunit":
        return f"business_unit_{ent.name}"
    return f"{_ALL[lk.target].logical_name}_{ent.logical_name}_{lk.attribute}"


def _collections() -> dict[str, dict[str, tuple[Entity, Lookup]]]:
    out: dict[str, dict[str, tuple[Entity, Lookup]]] = {}
    for ent in DATAVERSE:
        for lk in ent.lookups:
            if lk.kind == "Owner":
                continue  # its partner lives on the abstract `principal` type, not on a table
            for nav, targets in lk.navigations().items():
                for target in targets:
                    out.setdefault(target, {})[relationship_name(ent, lk, nav)] = (ent, lk)
    return out


_COLLECTIONS = _collections()


def collection(ent: Entity, name: str) -> tuple[Entity, Lookup] | None:
    """The table and lookup behind `ent`'s collection-valued navigation property `name` (the
    rows of that table whose lookup refers to a row of `ent`), or None.

    >>> referencing, lk = collection(ENTITIES["accounts"], "contact_customer_accounts")
    >>> referencing.name, lk.column
    ('contacts', '_parentcustomerid_value')
    """
    return _COLLECTIONS.get(ent.name, {}).get(name)
