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
from functools import cached_property
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

    @cached_property  # read for every row written or read; do not change the dict it returns
    def all_columns(self) -> dict[str, ColumnType]:
        cols = dict(self.columns)
        for lk in self.lookups:
            cols[lk.column] = "guid"
        return cols

    @cached_property
    def columns_by_type(self) -> dict[ColumnType, tuple[str, ...]]:
        """The names of `all_columns` by their type."""
        out: dict[ColumnType, tuple[str, ...]] = {}
        for name, typ in self.all_columns.items():
            out[typ] = (*out.get(typ, ()), name)
        return out

    def navigation(self, nav: str) -> tuple[Lookup, tuple[str, ...]] | None:
        """The lookup behind single-valued navigation property `nav` and the entity sets it may
        refer to; None when there is none. Names match case-sensitively, as the service's do."""
        return self._navigations.get(nav)

    @cached_property  # looked up for every bound lookup of every row written
    def _navigations(self) -> dict[str, tuple[Lookup, tuple[str, ...]]]:
        out: dict[str, tuple[Lookup, tuple[str, ...]]] = {}
        for lk in self.lookups:
            for nav, targets in lk.navigations().items():
                out.setdefault(nav, (lk, targets))  # the first lookup naming it, as before
        return out

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


def _of(kind: ColumnType, *names: str) -> dict[str, ColumnType]:
    """`names` with one storage type (the wide mapped tables list their columns this way)."""
    return dict.fromkeys(names, kind)


def _kinds(kind: str, *names: str) -> dict[str, str]:
    """`names` with one Dataverse AttributeType beyond storage (Picklist, Money, Memo, Double)."""
    return dict.fromkeys(names, kind)


def _reference(name: str, logical: str, column: str = "msdyn_name") -> Entity:
    """A company-specific reference table a mapped lookup refers to, whose own map is not in the
    catalogue (payment days, schedules, payment methods, tax and vendor groups): its key column and
    the company, which the lookup is resolved in."""
    return _dv(name, logical, f"{logical}id", {column: "string"},
               alternate_keys=((column, "_msdyn_company_value"),),
               lookups=(Lookup("msdyn_company", "cdm_companies"),))


# Columns of the Customers V3, Vendors V2 and CDS Contacts V2 maps (table_maps.yaml) on each side.
_ADDRESS = ("city", "country", "county", "stateorprovince", "line1", "postalcode")
_COORDINATES = tuple(f"address{n}_{c}" for n in (1, 2, 3) for c in ("latitude", "longitude"))
_ACCOUNT_TEXT = (
    "name", "accountnumber", "msdyn_partynumber", "telephone1", "emailaddress1", "fax", "primarytwitterid",
    "websiteurl", *(f"address{n}_{c}" for n in (1, 2) for c in _ADDRESS),
    "msdyn_creditrating", "msdyn_identificationnumber", "msdyn_partycountry", "msdyn_partystateprovince",
    "msdyn_primaryfacebookid", "msdyn_faxextension", "msdyn_primarylinkedinid", "msdyn_taxexemptnumber",
    "msdyn_emailaddress1description", "msdyn_primaryfacebookdescription", "msdyn_faxdescription",
    "msdyn_primarylinkedindescrption", "msdyn_telephone1description", "msdyn_telephone1extension",
    "msdyn_primarytwitteriddescription", "msdyn_websiteurldescription",
)
_CONTACT_TEXT = (
    "firstname", "lastname", "middlename", "fullname", "jobtitle", "emailaddress1", "telephone1", "fax",
    "websiteurl", "msdyn_contactpersonid", "msdyn_partynumber", "address1_postofficebox",
    *(f"address{n}_{c}" for n in (1, 2, 3) for c in _ADDRESS),
    "msdyn_emailaddress1description", "msdyn_faxdescription", "msdyn_faxextension",
    "msdyn_identificationnumber", "msdyn_partycountry", "msdyn_partystateprovince", "msdyn_primaryfacebookid",
    "msdyn_primaryfacebookdescription", "msdyn_primaryinkedinid", "msdyn_primarylinkedindescrption",
    "msdyn_telephone1description", "msdyn_telephone1extension", "msdyn_primarytwitterid",
    "msdyn_primarytwitteriddescription", "msdyn_websiteurldescription", "department", "governmentid",
    "spousesname",
)
_VENDOR_TEXT = (
    "msdyn_vendoraccountnumber", "msdyn_name", "msdyn_firstname", "msdyn_lastname", "msdyn_middlename",
    "msdyn_addressbuildingcompliment", "msdyn_childrennames", "msdyn_addresscity",
    "msdyn_addresscountryregionid", "msdyn_addresscountryregionisocode", "msdyn_addresscountyid",
    "msdyn_creditrating", "msdyn_addressdescription", "msdyn_addressdistrictname", "msdyn_dunsnumber",
    "msdyn_ethnicorigin", "msdyn_hobbies", "msdyn_initials", "msdyn_lastnameprefix",
    "msdyn_organizationnumber", "msdyn_ourvendoraccountnumber", "msdyn_paymentid", "msdyn_phoneticfirstname",
    "msdyn_phoneticmiddlename", "msdyn_phoneticlastname", "msdyn_organizationphoneticname",
    "msdyn_addresspostbox", "msdyn_primarycontacturl", "msdyn_primaryemailaddress",
    "msdyn_primaryemailaddressdescription", "msdyn_primaryfacebook", "msdyn_primaryfacebookdescription",
    "msdyn_primaryfaxnumber", "msdyn_primaryfaxnumberdescription", "msdyn_primaryfaxnumberextension",
    "msdyn_primarylinkedin", "msdyn_primarylinkedindescription", "msdyn_pimaryphonenumber",
    "msdyn_primaryphonenumberdescription", "msdyn_primaryphonenumberextension", "msdyn_primarytelex",
    "msdyn_primarytelexdescription", "msdyn_primarytwitter", "msdyn_primarytwitterdescription",
    "msdyn_primaryurldescription", "msdyn_professionalsuffix", "msdyn_professionatitle",
    "msdyn_addressstateid", "msdyn_addressstreet", "msdyn_addressstreetnumber", "msdyn_vendorknownasname",
    "msdyn_addresszipcode", "msdyn_vendorpartynumber", "msdyn_addresslocationid",
)
_VENDOR_FLAGS = (
    "msdyn_isperson", "msdyn_isforeignentity", "msdyn_isonetimevendor", "msdyn_hasonlytakenbids",
    "msdyn_isminorityowned", "msdyn_isvendorlocallyowned", "msdyn_isserviceveteranowned",
    "msdyn_ownerisdisabled", "msdyn_womanowner", "msdyn_isvendorlocatedinhubzone",
    "msdyn_priceincludessalestax",
)
_VENDOR_NUMBERS = (
    "msdyn_personanniversaryday", "msdyn_anniversaryyear", "msdyn_birthday", "msdyn_birthyear",
    "msdyn_numberofemployees", "msdyn_vendorpersonanniversarymonth", "msdyn_vendorpersonbirthmonth",
)
_FO_ADDRESS = ("City", "CountryRegionISOCode", "County", "State", "Street", "ZipCode")
_FO_CONTACT_INFO = (
    "PrimaryContactEmail", "PrimaryContactEmailDescription", "PrimaryContactFax",
    "PrimaryContactFaxDescription",
    "PrimaryContactFaxExtension", "PrimaryContactFacebook", "PrimaryContactFacebookDescription",
    "PrimaryContactLinkedIn", "PrimaryContactLinkedInDescription", "PrimaryContactPhone",
    "PrimaryContactPhoneDescription", "PrimaryContactPhoneExtension", "PrimaryContactTwitter",
    "PrimaryContactTwitterDescription", "PrimaryContactURL", "PrimaryContactURLDescription",
)
_FO_CUSTOMER_TEXT = (
    "dataAreaId", "CustomerAccount", "PartyType", "OrganizationName", "PersonFirstName", "PersonLastName",
    "PersonMiddleName", "PersonProfessionalTitle", "PersonGender", "PersonMaritalStatus", "NameAlias",
    "CustomerGroupId", "SalesCurrencyCode", "PaymentTerms", "SalesMemo", "PartyNumber", "ContactPersonId",
    "LanguageId", "AddressCountryRegionId", "AddressPostBox", "AddressLocationRoles",
    *(f"{kind}Address{c}" for kind in ("", "Invoice", "Delivery") for c in _FO_ADDRESS), *_FO_CONTACT_INFO,
    "CreditLimitIsMandatory", "CreditRating", "IdentificationNumber", "InvoiceAccount", "InvoiceAddress",
    "IsOneTimeCustomer", "OnHoldStatus", "PartyCountry", "PartyState", "PaymentDay", "PaymentMethod",
    "PaymentSchedule", "TaxExemptNumber", "VendorAccount", "SalesTaxGroup",
)
_FO_VENDOR_TEXT = (
    "dataAreaId", "VendorAccountNumber", "VendorOrganizationName", "VendorGroupId", "CurrencyCode",
    "VendorPartyType", "PersonFirstName", "PersonLastName", "PersonMiddleName", "IsForeignEntity",
    "IsOneTimeVendor", "AddressBuildingCompliment", "PersonChildrenNames", "AddressCity",
    "AddressCountryRegionId", "AddressCountryRegionISOCode", "AddressCountyId", "CreditRating",
    "AddressDescription", "AddressDistrictName", "DUNSNumber", "EthnicOriginId", "FormattedPrimaryAddress",
    "PersonHobbies", "PersonInitials", "LanguageId", "PersonLastNamePrefix", "OrganizationNumber",
    "OurAccountNumber", "PaymentId", "PersonPhoneticFirstName", "PersonPhoneticMiddleName",
    "PersonPhoneticLastName", "OrganizationPhoneticName", "AddressPostBox", "PrimaryURL",
    "PrimaryEmailAddress",
    "PrimaryEmailAddressDescription", "PrimaryFacebook", "PrimaryFacebookDescription", "PrimaryFaxNumber",
    "PrimaryFaxNumberDescription", "PrimaryFaxNumberExtension", "PrimaryLinkedIn",
    "PrimaryLinkedInDescription",
    "PrimaryPhoneNumber", "PrimaryPhoneNumberDescription", "PrimaryPhoneNumberExtension", "PrimaryTelex",
    "PrimaryTelexDescription", "PrimaryTwitter", "PrimaryTwitterDescription", "PrimaryURLDescription",
    "PersonProfessionalSuffix", "PersonProfessionalTitle", "AddressStateId", "AddressStreet",
    "AddressStreetNumber", "VendorKnownAsName", "AddressZipCode", "DefaultPaymentDayName",
    "DefaultPaymentScheduleName", "DefaultPaymentTermsName", "HasOnlyTakenBids", "IsMinorityOwned",
    "IsVendorLocallyOwned", "IsServiceVeteranOwned", "IsOwnerDisabled", "IsWomanOwner", "VendorPartyNumber",
    "AddressLocationId", "PersonMaritalStatus", "OnHoldStatus", "IsVendorLocatedInHUBZone",
    "DefaultVendorPaymentMethodName", "InvoiceVendorAccountNumber", "PersonGender",
    "ArePricesIncludingSalesTax", "SalesTaxGroupCode", "PrimaryContactPersonId",
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
        # plugintracelogsetting: 0 Off, 1 Exception, 2 All (logging-tracing.md, "Enable trace logging")
        {"name": "string", "basecurrencyid": "guid", "plugintracelogsetting": "int"},
        kinds={"plugintracelogsetting": "Picklist"},
        owned=False,
        bulk=False,
    ),
    # Plug-in Trace Log: written by the service, read (GET) and deleted (DELETE) through the Web API
    # (webapi/reference/plugintracelog); `dwlib.sandbox.tracelog` writes it.
    _dv(
        "plugintracelogs",
        "plugintracelog",
        "plugintracelogid",
        {"typename": "string", "messagename": "string", "primaryentity": "string",
         "exceptiondetails": "string", "messageblock": "string", "correlationid": "guid",
         "mode": "int", "operationtype": "int", "depth": "int"},
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
        {"isocurrencycode": "string", "currencyname": "string", "currencysymbol": "string",
         "exchangerate": "decimal"},
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
        {"msdyn_groupid": "string", "msdyn_description": "string", "msdyn_issalestaxincludedinprice": "bool"},
        alternate_keys=(("msdyn_groupid", "_msdyn_company_value"),),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("msdyn_paymenttermid", "msdyn_paymentterms"),
            Lookup("msdyn_clearingperiodpaymenttermname", "msdyn_paymentterms"),
        ),
    ),
    _dv(
        "msdyn_paymentterms",
        "msdyn_paymentterm",
        "msdyn_paymenttermid",
        {"msdyn_name": "string", "msdyn_description": "string",
         **_of("int", "msdyn_numberofmonth", "msdyn_cutoffdayofmonth", "msdyn_days",
               "msdyn_creditcardpaymenttype", "msdyn_creditcardcreditchecktype", "msdyn_paymentmethodtype"),
         **_of("bool", "msdyn_iscashpayment", "msdyn_iscertifiedcompanycheck", "msdyn_isdefaultpaymentterm")},
        alternate_keys=(("msdyn_name", "_msdyn_company_value"),),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("msdyn_paymentdayname", "msdyn_paymentdays"),
            Lookup("msdyn_paymentschedulename", "msdyn_paymentschedules"),
        ),
        kinds=_kinds("Picklist", "msdyn_creditcardpaymenttype", "msdyn_creditcardcreditchecktype",
                     "msdyn_paymentmethodtype"),
    ),
    _reference("msdyn_paymentdays", "msdyn_paymentday"),
    _reference("msdyn_paymentschedules", "msdyn_paymentschedule"),
    _reference("msdyn_customerpaymentmethods", "msdyn_customerpaymentmethod"),
    _reference("msdyn_vendorpaymentmethods", "msdyn_vendorpaymentmethod"),
    _reference("msdyn_taxgroups", "msdyn_taxgroup"),
    _reference("msdyn_vendorgroups", "msdyn_vendorgroup", "msdyn_vendorgroup"),
    _dv(
        "accounts",
        "account",
        "accountid",
        {
            **_of("string", *_ACCOUNT_TEXT),
            **_of("int", "accountcategorycode", "customertypecode", "address1_addresstypecode",
                  "numberofemployees", "msdyn_paymenttermsbasedays", "msdyn_invoiceaddress",
                  "msdyn_onholdstatus"),
            **_of("decimal", "creditlimit", "revenue", *_COORDINATES[:4]),
            **_of("bool", "msdyn_creditlimitismandatory", "msdyn_onetimecustomer"),
            "description": "string",
        },
        alternate_keys=(("accountnumber",), ("accountnumber", "_msdyn_company_value")),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("transactioncurrencyid", "transactioncurrencies"),
            Lookup("msdyn_customergroupid", "msdyn_customergroups"),
            Lookup("msdyn_paymentterm", "msdyn_paymentterms"),
            Lookup("primarycontactid", "contacts", relationships=("account_primary_contact",)),
            Lookup("msdyn_billingaccount", "accounts"),
            Lookup("msdyn_paymentday", "msdyn_paymentdays"),
            Lookup("msdyn_customerpaymentmethod", "msdyn_customerpaymentmethods"),
            Lookup("msdyn_paymentschedule", "msdyn_paymentschedules"),
            Lookup("msdyn_vendor", "msdyn_vendors"),
            Lookup("msdyn_salestaxgroup", "msdyn_taxgroups"),
        ),
        kinds={**_kinds("Picklist", "accountcategorycode", "customertypecode", "address1_addresstypecode",
                        "msdyn_invoiceaddress", "msdyn_onholdstatus"),
               **_kinds("Money", "creditlimit", "revenue"), "description": "Memo",
               **_kinds("Double", *_COORDINATES[:4])},
    ),
    _dv(
        "contacts",
        "contact",
        "contactid",
        {
            **_of("string", *_CONTACT_TEXT),
            **_of("int", "gendercode", "familystatuscode", "address1_addresstypecode"),
            **_of("decimal", *_COORDINATES[:6]),
            **_of("bool", "msdyn_sellable", "msdyn_contactforvendor", "donotemail"),
            "description": "string",
        },
        alternate_keys=(("msdyn_contactpersonid",), ("msdyn_contactpersonid", "_msdyn_company_value")),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("parentcustomerid", "accounts", "Customer", ("contacts",),
                   ("parentcustomerid_account", "parentcustomerid_contact"),
                   ("contact_customer_accounts", "contact_customer_contacts")),
            Lookup("transactioncurrencyid", "transactioncurrencies"),
            Lookup("msdyn_customergroupid", "msdyn_customergroups"),
            Lookup("msdyn_vendorcontactid", "msdyn_vendors"),
        ),
        kinds={**_kinds("Picklist", "gendercode", "familystatuscode", "address1_addresstypecode"),
               "description": "Memo",
               **_kinds("Double", *_COORDINATES[:6])},
    ),
    _dv(
        "msdyn_vendors",
        "msdyn_vendor",
        "msdyn_vendorid",
        {
            **_of("string", *_VENDOR_TEXT),
            "msdyn_formattedprimaryaddress": "string",
            **_of("bool", *_VENDOR_FLAGS),
            **_of("int", *_VENDOR_NUMBERS, "msdyn_language", "msdyn_maritalstatus", "msdyn_onholdstatus",
                  "msdyn_gender"),
            **_of("decimal", "msdyn_vendorcreditlimit", "msdyn_addresslatitude", "msdyn_addresslongitude"),
            "msdyn_vendoronholdreleasedate": "datetime",
        },
        alternate_keys=(("msdyn_vendoraccountnumber", "_msdyn_company_value"),),
        lookups=(
            Lookup("msdyn_company", "cdm_companies"),
            Lookup("transactioncurrencyid", "transactioncurrencies"),
            Lookup("msdyn_currencycode", "transactioncurrencies"),
            Lookup("msdyn_vendorgroupid", "msdyn_vendorgroups"),
            Lookup("msdyn_defaultpaymentdayname", "msdyn_paymentdays"),
            Lookup("msdyn_paymentschedule", "msdyn_paymentschedules"),
            Lookup("msdyn_paymentterms", "msdyn_paymentterms"),
            Lookup("msdyn_vendorpaymentmethod", "msdyn_vendorpaymentmethods"),
            Lookup("msdyn_invoicevendoraccountnumber", "msdyn_vendors"),
            Lookup("msdyn_taxgroup", "msdyn_taxgroups"),
            Lookup("msdyn_vendorprimarycontactperson", "contacts"),
        ),
        kinds={**_kinds("Picklist", "msdyn_language", "msdyn_maritalstatus", "msdyn_onholdstatus",
                        "msdyn_gender"),
               "msdyn_vendorcreditlimit": "Money", "msdyn_formattedprimaryaddress": "Memo",
               **_kinds("Double", "msdyn_addresslatitude", "msdyn_addresslongitude")},
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
            "ClearingPeriodPaymentTermName": "string",
            "IsSalesTaxIncludedInPrice": "string",  # NoYes: F&O OData carries enum values by name
        },
    ),
    _fo(
        "PaymentTerms",
        "PaymentTerm",
        ("dataAreaId", "Name"),
        {"dataAreaId": "string", "Name": "string", "Description": "string",
         **_of("int", "NumberOfDays", "NumberOfMonths", "CutOffDayOfMonth"),
         # enums (by name) and the names of payment days and schedules
         **_of("string", "IsCashPayment", "IsCertifiedCompanyCheck", "IsDefaultPaymentTerm",
               "CreditCardPaymentType", "CreditCardCreditCheckType", "PaymentMethodType", "PaymentDayName",
               "PaymentScheduleName")},
    ),
    _fo(
        "CustomersV3",
        "CustomerV3",
        ("dataAreaId", "CustomerAccount"),
        {
            **_of("string", *_FO_CUSTOMER_TEXT),
            **_of("decimal", "CreditLimit", *(f"{kind}Address{c}" for kind in ("", "Invoice", "Delivery")
                                              for c in ("Latitude", "Longitude"))),
            **_of("int", "OrganizationNumberOfEmployees", "PaymentTermsBaseDays"),
        },
    ),
    _fo(
        "VendorsV2",
        "VendorV2",
        ("dataAreaId", "VendorAccountNumber"),
        {
            **_of("string", *_FO_VENDOR_TEXT),
            **_of("decimal", "CreditLimit", "AddressLatitude", "AddressLongitude"),
            **_of("int", "PersonAnniversaryDay", "PersonAnniversaryYear", "PersonBirthDay", "PersonBirthYear",
                  "OrganizationEmployeeAmount", "PersonAnniversaryMonth", "PersonBirthMonth"),
            "VendorHoldReleaseDate": "datetime",
        },
    ),
    # Data management > Source data formats (table DMFDataSource): each format's Regional settings,
    # Language locale among them, decide how packages write numbers and dates. The public collection
    # and its field names are UNVERIFIED (docs/fidelity.md).
    _fo(
        "DataManagementSourceDataFormats",
        "DataManagementSourceDataFormat",
        ("SourceName",),
        _of("string", "SourceName", "Description", "Type", "FileFormat", "LanguageLocale"),
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
