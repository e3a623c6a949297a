"""Seed data for the six scenario profiles (what each environment holds before a runbook runs).

A profile pairs an F&O side and a Dataverse side (DESIGN.md §1):

| profile | F&O | Dataverse |
|---|---|---|
| `new-new` | new: company DAT and its currency USD only | new: platform rows only |
| `new-existing` | new: DAT only | existing: business units, teams, users, accounts, contacts |
| `new-data-new` | with data: companies, groups, terms, customers | new |
| `new-data-existing` | with data | existing |
| `existing-new` | with data | new |
| `existing-existing` | with data | existing |

Every Dataverse gets what provisioning creates: the organization, the root business unit and its
default team, the SYSTEM/INTEGRATION users, an application user for the sandbox's app
registration, the delegated consultant user, USD as base currency and the CRM prime solutions.
Nothing of dual-write is there: Power Platform integration is a runbook step, and the portal or
runtime calls `install_dual_write_solutions` when it is done.

Business data is drawn from a `random.Random` seeded with profile and row count, so a profile
seeds the same rows every time; ids of platform rows derive from the settings' ids. `rows` is
the number of accounts and of contacts (existing Dataverse) and of customers (F&O with data).

Example:
    >>> import tempfile, pathlib
    >>> from dwlib.sandbox.state import Settings
    >>> from dwlib.sandbox.store import Store
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> counts = seed(st, Settings(profile="existing-existing", rows=100))
    >>> counts["accounts"], counts["contacts"], counts["CustomersV3"]
    (100, 100, 100)
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .. import catalog
from . import dmf_jobs, security, tracelog
from .identity import app_principal, consultant
from .schema import ENTITIES
from .state import PROFILES, Settings
from .store import Store, utcnow

SEEDED_ON = "2024-01-15T08:00:00Z"  # platform rows "were provisioned" then
_DV_STAMPS = [  # business rows: two years of creation dates, formatted once
    (datetime(2022, 1, 1, 9, tzinfo=UTC) + timedelta(days=d, minutes=7 * d)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for d in range(730)
]


@dataclass(frozen=True)
class Profile:
    """What each side of a profile holds: `finops` "new" (DAT only) or "data"; `dataverse`.

    >>> PROFILE_SPECS["new-data-existing"]
    Profile(name='new-data-existing', finops='data', dataverse='existing', quoted_names=True)
    """

    name: str
    finops: Literal["new", "data"]
    dataverse: Literal["new", "existing"]
    # Names with double quotes, which break an initial sync: the operations profiles' data went
    # through a setup already, so it has none.
    quoted_names: bool = True


PROFILE_SPECS: dict[str, Profile] = {p.name: p for p in (
    Profile("new-new", "new", "new"),
    Profile("new-existing", "new", "existing"),
    Profile("new-data-new", "data", "new"),
    Profile("new-data-existing", "data", "existing"),
    Profile("existing-new", "data", "new"),
    Profile("existing-existing", "data", "existing"),
    # Operations: an existing pair with data, linked and running before the runbook (prepare.py).
    Profile("refresh-relink", "data", "new", quoted_names=False),
    Profile("maintenance", "data", "new", quoted_names=False),
    Profile("add-legal-entity", "data", "new", quoted_names=False),
)}
assert tuple(PROFILE_SPECS) == PROFILES


@dataclass(frozen=True)
class Company:
    """An F&O legal entity and, for existing Dataverse, the business unit planned for it.

    >>> COMPANIES[0].code, COMPANIES[0].data_area, COMPANIES[0].business_unit
    ('USMF', 'usmf', 'Contoso US')
    """

    code: str  # LegalEntityId; dataAreaId is its lower case, as F&O returns it
    name: str
    country: str  # ISO 3166 alpha-3, as F&O's AddressCountryRegionId
    currency: str
    business_unit: str
    account_prefix: str  # customer account numbers: "US-000001"
    cities: tuple[str, ...]
    phone: str

    @property
    def data_area(self) -> str:
        """The company's `dataAreaId` as F&O OData returns it (lower case)."""
        return self.code.lower()


DAT = Company("DAT", "Company accounts data", "USA", "USD", "", "DAT", ("Redmond",), "+1 425 555")
COMPANIES: tuple[Company, ...] = (
    Company("USMF", "Contoso Entertainment System USA", "USA", "USD", "Contoso US", "US",
            ("Seattle", "Chicago", "New York", "Austin", "Denver"), "+1 206 555"),
    Company("GBSI", "Contoso Entertainment System UK", "GBR", "GBP", "Contoso UK", "GB",
            ("London", "Manchester", "Leeds", "Bristol"), "+44 20 7946"),
    Company("DEMF", "Contoso Entertainment System Germany", "DEU", "EUR", "Contoso DE", "DE",
            ("Berlin", "München", "Hamburg", "Köln"), "+49 30 9012"),
    Company("FRRT", "Contoso Retail France", "FRA", "EUR", "Contoso FR", "FR",
            ("Paris", "Lyon", "Marseille"), "+33 1 7091"),
)
_COMPANY_WEIGHTS = (40, 20, 25, 15)  # share of business rows per company / business unit
_COUNTRY_NAMES = {"USA": "United States", "GBR": "United Kingdom", "DEU": "Germany", "FRA": "France"}

CURRENCIES: tuple[tuple[str, str, str, float], ...] = (  # code, name, symbol, rate to USD
    ("USD", "US Dollar", "$", 1.0),
    ("EUR", "Euro", "€", 0.92),
    ("GBP", "Pound Sterling", "£", 0.79),
    ("CAD", "Canadian Dollar", "$", 1.35),
    ("DKK", "Danish Krone", "kr", 6.87),
    ("JPY", "Japanese Yen", "¥", 148.0),
    ("CHF", "Swiss Franc", "CHF", 0.88),
    ("SEK", "Swedish Krona", "kr", 10.4),
    ("NOK", "Norwegian Krone", "kr", 10.6),
    ("AUD", "Australian Dollar", "$", 1.52),
)
CUSTOMER_GROUPS = (("10", "Wholesale customers", "Net30"), ("20", "Major customers", "Net45"),
                   ("30", "Retail customers", "Net10"), ("80", "Other customers", "Net30"),
                   ("90", "Intercompany customers", "Net30"))
PAYMENT_TERMS = (("Net10", "Net 10 days", 10, "Net"), ("Net30", "Net 30 days", 30, "Net"),
                 ("Net45", "Net 45 days", 45, "Net"), ("COD", "Cash on delivery", 0, "COD"),
                 ("Month+15", "Current month + 15 days", 15, "CurrentMth"))

# CRM prime solutions of a provisioned Dataverse with Dynamics 365 apps (uniquename, name, managed).
PRIME_SOLUTIONS = (
    ("System", "System Solution", True), ("Active", "Active Solution", False),
    ("Basic", "Basic Solution", False), ("Default", "Default Solution", False),
    ("msdynce_AppCommon", "Dynamics 365 App Common", True),
    ("msdynce_AppCommonAnchor", "Dynamics 365 App Common Anchor", True),
    ("msdynce_Sales", "Dynamics 365 Sales", True), ("msdynce_SalesAnchor", "Dynamics 365 Sales Anchor", True),
    ("msdynce_Service", "Dynamics 365 Customer Service", True),
)
PRIME_VERSION = "9.2.24012.00206"

# Versions the sandbox "installs" for dual-write solutions (above every version the docs require).
DUAL_WRITE_CORE_VERSION = "1.0.24022.4"
DUAL_WRITE_PACKAGE_VERSION = "2.3.4.171"

_ORG_WORDS = ("Northwind", "Fabrikam", "Adventure", "Alpine", "Blue Yonder", "Coho", "Litware", "Proseware",
              "Wide World", "Tailspin", "Woodgrove", "Lucerne", "Margie's", "Trey", "Humongous", "Wingtip",
              "Graphic", "Fourth Coffee", "Lamna", "Relecloud", "Southridge", "Datum", "Consolidated",
              "Contoso Pharma")
_ORG_NOUNS = ("Traders", "Works", "Bikes", "Outfitters", "Travel", "Foods", "Systems", "Logistics",
              "Insurance", "Publishing", "Wines", "Airlines", "Partners", "Supplies", "Motors", "Labs")
_ORG_SUFFIXES = ("Inc.", "Ltd", "GmbH", "S.A.", "LLC", "Corp.", "plc", "AG", "")
_FIRST = ("Alex", "Maria", "John", "Sofia", "Liam", "Emma", "Noah", "Olivia", "Lukas", "Mia", "Hugo",
          "Chloé", "Oliver", "Amelia", "Jonas", "Léa", "Ethan", "Ava", "Felix", "Isla", "Yuki", "Priya")
_LAST = ("Smith", "Müller", "Dubois", "Jones", "Schmidt", "Martin", "Brown", "Fischer", "Bernard",
         "Taylor", "Weber", "Moreau", "Wilson", "Becker", "Laurent", "García", "Kowalski", "Nguyen",
         "O'Brien", "Andersen", "Rossi", "Tanaka")
_SALES_USERS = ("Alex Wilber", "Megan Bowen", "Adele Vance", "Lee Gu", "Nestor Wilke", "Lidia Holloway",
                "Pradeep Gupta", "Isaiah Langer")


def _guids(rng: random.Random, n: int) -> list[str]:
    """`n` random version-4 GUID strings, an order of magnitude cheaper than `uuid.uuid4()`."""
    out = []
    for _ in range(n):
        h = f"{rng.getrandbits(128):032x}"
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}")
    return out


def _stable_id(namespace: str, name: str) -> str:
    """A platform row id that stays the same for the same settings (e.g. the root business unit)."""
    return str(uuid.uuid5(uuid.UUID(namespace), name))


class _Tally:
    """Rows seeded per table; tells `progress` (if any) after each table's load."""

    def __init__(self, progress: Callable[[str, int], None] | None) -> None:
        self.counts: dict[str, int] = {}
        self.progress = progress

    def add(self, table: str, rows: int) -> None:
        self.counts[table] = self.counts.get(table, 0) + rows
        if self.progress is not None:
            self.progress(table, rows)


def seed(
    store: Store, settings: Settings, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Fill an empty store with the rows of `settings.profile`; returns rows seeded per table.

    `progress(table, rows)` is called after each table's load (logging, benchmarks).
    Runs in one transaction. Also seeds the DMF data projects (`dmf_jobs.seed_definition_groups`)
    and records that Power Platform integration is not set up (`kv pp_link = None`).

    >>> import tempfile, pathlib
    >>> from dwlib.sandbox.state import Settings
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> seed(st, Settings(profile="new-new", rows=1000))["LegalEntities"]
    1
    """
    spec = PROFILE_SPECS.get(settings.profile)
    if spec is None:
        raise ValueError(f"unknown profile {settings.profile!r}: use one of {', '.join(PROFILES)}")
    if settings.rows < 0:
        raise ValueError(f"rows must be 0 or more, got {settings.rows}")
    rng = random.Random(f"dw-sandbox:{spec.name}:{settings.rows}")
    tally = _Tally(progress)
    with store.transaction():
        platform = _Platform(store, settings, spec, tally)
        if spec.dataverse == "existing":
            _seed_dataverse_business(store, rng, settings.rows, platform, tally)
        _seed_finops(store, rng, settings.rows, spec, tally, settings.dmf_locale)
        if spec.dataverse == "existing" and spec.finops == "data":
            _share_customers(store)
        tally.add("dmf_definition_groups", dmf_jobs.seed_definition_groups(store))
        store.kv_set("pp_link", None)
    return tally.counts


def _insert(store: Store, tally: _Tally, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert platform rows (few) with the store's defaults, stamped as provisioned at SEEDED_ON."""
    ent = ENTITIES[table]
    stamp = {"createdon": SEEDED_ON, "modifiedon": SEEDED_ON} if ent.service == "dataverse" else {}
    tally.add(table, store.bulk_insert(ent, [{**stamp, **r} for r in rows]))


class _Platform:
    """What Dataverse provisioning creates; keeps the ids business rows refer to."""

    def __init__(self, store: Store, settings: Settings, spec: Profile, tally: _Tally) -> None:
        org = settings.organization_id
        existing = spec.dataverse == "existing"
        self.org_name = "Contoso" if existing else f"org{org.replace('-', '')[:8]}"
        self.root_bu = _stable_id(org, "businessunit:root")
        self.currencies = {code: _stable_id(org, f"currency:{code}")
                           for code in (("USD", "GBP", "EUR") if existing else ("USD",))}
        self.system_user = _stable_id(org, "systemuser:SYSTEM")
        _insert(store, tally, "organizations", [
            {"organizationid": org, "name": self.org_name, "basecurrencyid": self.currencies["USD"],
             "plugintracelogsetting": tracelog.OFF}])
        _insert(store, tally, "businessunits", [
            {"businessunitid": self.root_bu, "name": self.org_name, "_parentbusinessunitid_value": None}])
        _insert(store, tally, "teams", [
            {"teamid": _stable_id(org, "team:root"), "name": self.org_name, "teamtype": 0, "isdefault": True,
             "_businessunitid_value": self.root_bu}])
        rates = {c[0]: c for c in CURRENCIES}
        _insert(store, tally, "transactioncurrencies", [
            {"transactioncurrencyid": cid, "isocurrencycode": code, "currencyname": rates[code][1],
             "currencysymbol": rates[code][2], "exchangerate": rates[code][3]}
            for code, cid in self.currencies.items()])
        app, user = app_principal(settings), consultant(settings)
        users = [
            (self.system_user, "SYSTEM", "", None, None, 1),
            (_stable_id(org, "systemuser:INTEGRATION"), "INTEGRATION", "", None, None, 1),
            (_stable_id(org, f"systemuser:{app.app_id}"), f"# {app.name}", f"{app.app_id}@sandbox",
             app.app_id, app.oid, 4),
            (_stable_id(org, "systemuser:consultant"), "Sandbox Consultant", user.name, None, user.oid, 0),
        ]
        _insert(store, tally, "systemusers", [
            {"systemuserid": uid, "fullname": name, "domainname": domain, "applicationid": appid,
             "azureactivedirectoryobjectid": oid, "isdisabled": False, "accessmode": mode,
             "_businessunitid_value": self.root_bu}
            for uid, name, domain, appid, oid, mode in users])
        _insert(store, tally, "solutions", [
            {"solutionid": _stable_id(org, f"solution:{u}"), "uniquename": u, "friendlyname": f,
             "version": PRIME_VERSION, "ismanaged": m, "installedon": SEEDED_ON}
            for u, f, m in PRIME_SOLUTIONS])
        _insert(store, tally, "roles", [
            {"roleid": _stable_id(org, f"role:{name}"), "name": name, "_businessunitid_value": self.root_bu}
            for name in security.STANDARD_ROLES])
        for uid, *_ in users[2:]:  # the app registration and the consultant administer the environment
            security.grant_user(store, uid, [security.STANDARD_ROLES[0]])


def install_dual_write_solutions(store: Store) -> int:
    """Install what Power Platform integration with dual-write adds to Dataverse; idempotent.

    Dual Write Core and the orchestration packages of the catalogue's table maps
    (`catalog.required_solutions()`, at versions that meet the documented minimums), and the
    Dataverse application users of the dual-write first-party apps (`catalog.app_users()`) in the
    root business unit. Returns the number of rows added (0 when already installed).

    >>> import tempfile, pathlib
    >>> from dwlib.sandbox.state import Settings
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> _ = seed(st, Settings(profile="new-new", rows=0))
    >>> install_dual_write_solutions(st) > 0, install_dual_write_solutions(st)
    (True, 0)
    """
    solutions, users = ENTITIES["solutions"], ENTITIES["systemusers"]
    (root,) = [r["businessunitid"] for r in store.find(ENTITIES["businessunits"],
                                                       {"_parentbusinessunitid_value": None})]
    core = catalog.required_solutions([])  # no package named: Dual Write Core alone
    added = 0
    with store.transaction():
        added += security.register_plugins(store)
        root_team = store.find(ENTITIES["teams"], {"_businessunitid_value": root, "isdefault": True}, limit=1)
        if root_team:
            security.grant_team(store, root_team[0]["teamid"], security.dual_write_roles()[:1])
        for sol in catalog.required_solutions():
            if not any(store.find(solutions, {"uniquename": name}, limit=1) for name in sol.names):
                version = DUAL_WRITE_CORE_VERSION if sol in core else DUAL_WRITE_PACKAGE_VERSION
                store.insert(solutions, {"solutionid": _stable_id(root, f"solution:{sol.uniquename}"),
                                         "uniquename": sol.uniquename, "friendlyname": sol.uniquename,
                                         "version": version, "ismanaged": True, "installedon": utcnow()})
                added += 1
        for user in catalog.app_users():
            app_id = user.application_id
            if user.side == "dataverse" and not store.find(users, {"applicationid": app_id}, limit=1):
                uid = _stable_id(root, f"systemuser:{app_id}")
                store.insert(users, {"systemuserid": uid,
                                     "fullname": f"# {user.name}", "domainname": f"{app_id}@sandbox",
                                     "applicationid": app_id, "isdisabled": False, "accessmode": 4,
                                     "_businessunitid_value": root})
                security.grant_user(store, uid, [catalog.requirements().system_administrator])
                added += 1
    return added


def _pick(rng: random.Random, items: Sequence[Any], weights: Sequence[int], n: int) -> list[Any]:
    return rng.choices(items, weights=weights, k=n)


def _seed_dataverse_business(
    store: Store, rng: random.Random, n: int, platform: _Platform, tally: _Tally
) -> None:
    """Business units per planned company, their teams and sales users, accounts and contacts."""
    bus = [(c, _guids(rng, 1)[0]) for c in COMPANIES]
    _insert(store, tally, "businessunits", [
        {"businessunitid": bu, "name": c.business_unit, "divisionname": c.name,
         "_parentbusinessunitid_value": platform.root_bu} for c, bu in bus])
    _insert(store, tally, "teams", [
        team for c, bu in bus for team in (
            {"teamid": _guids(rng, 1)[0], "name": c.business_unit, "teamtype": 0, "isdefault": True,
             "_businessunitid_value": bu},
            {"teamid": _guids(rng, 1)[0], "name": f"Key accounts {c.business_unit[8:]}", "teamtype": 0,
             "isdefault": False, "_businessunitid_value": bu})])
    # Owners: two sales users per business unit, plus the root BU's SYSTEM user for a few rows
    # that belong to no planned company (the bootstrap reports them as unmapped).
    owners: list[tuple[str, str, Company | None]] = []
    users = []
    for k, (c, bu) in enumerate(bus):
        for name in _SALES_USERS[2 * k:2 * k + 2]:
            uid = _guids(rng, 1)[0]
            owners.append((uid, bu, c))
            users.append({"systemuserid": uid, "fullname": name, "isdisabled": False, "accessmode": 0,
                          "domainname": name.lower().replace(" ", ".") + "@contoso.com",
                          "azureactivedirectoryobjectid": _guids(rng, 1)[0], "_businessunitid_value": bu})
    _insert(store, tally, "systemusers", users)
    owners.append((platform.system_user, platform.root_bu, None))
    weights = [w for w in _COMPANY_WEIGHTS for _ in range(2)] + [2]
    # Sorted ids make the primary-key B-tree an append: loading is markedly faster.
    account_ids, contact_ids = sorted(_guids(rng, n)), sorted(_guids(rng, n))
    account_owner = _pick(rng, owners, weights, n)
    tally.add("accounts", store.bulk_load(
        ENTITIES["accounts"], _ACCOUNT_COLUMNS,
        _accounts(store, rng, n, account_ids, contact_ids, account_owner, platform)))
    tally.add("contacts", store.bulk_load(
        ENTITIES["contacts"], _CONTACT_COLUMNS,
        _contacts(store, rng, n, account_ids, contact_ids, account_owner, _pick(rng, owners, weights, n),
                  platform)))


_ACCOUNT_COLUMNS = (
    "accountid", "name", "accountnumber", "customertypecode", "creditlimit", "telephone1", "emailaddress1",
    "address1_city", "address1_country", "_transactioncurrencyid_value", "_primarycontactid_value",
    "_ownerid_value", "_owningbusinessunit_value", "createdon", "modifiedon", "versionnumber", "statecode",
    "statuscode", "address1_line1", "address1_postalcode", "websiteurl", "numberofemployees",
    "msdyn_onholdstatus", "msdyn_creditlimitismandatory",
)
_HOLD_CODES = (806380000,) * 8 + (806380001, 806380002)  # msdyn_onholdstatus (REF #101's value map)


def _accounts(
    store: Store, rng: random.Random, n: int, ids: list[str], contact_ids: list[str],
    owner: list[tuple[str, str, Company | None]], platform: _Platform,
) -> Iterator[tuple[Any, ...]]:
    """Account rows without company; ~85 % customers (type 3), realistic defects (see module doc)."""
    version = store.reserve_rowversions(n)
    words, nouns, suffixes = (rng.choices(x, k=n) for x in (_ORG_WORDS, _ORG_NOUNS, _ORG_SUFFIXES))
    kinds = _pick(rng, (3, 8, 10, None), (85, 10, 3, 2), n)
    usd = platform.currencies["USD"]
    for i in range(n):
        uid, bu, company = owner[i]
        c = company or DAT
        # Defects the runbooks must survive: double quotes in names (they break initial-sync
        # parsing), blank account numbers, e-mails and cities, inactive rows.
        name = (f'{words[i]} "{nouns[i]}" {suffixes[i]}' if i % 97 == 13
                else f"{words[i]} {nouns[i]} {suffixes[i]}").rstrip()
        stamp = _DV_STAMPS[i % 730]
        yield (
            ids[i], name, None if i % 53 == 7 else f"ACC-{i + 1:07d}", kinds[i],
            float(1000 * (i % 50)) if i % 3 else None, f"{c.phone} {i % 10000:04d}",
            None if i % 31 == 3 else f"info{i + 1}@{words[i].lower().replace(' ', '')}.example",
            None if i % 41 == 5 else c.cities[i % len(c.cities)], _COUNTRY_NAMES[c.country],
            platform.currencies.get(c.currency, usd), contact_ids[i] if i % 2 == 0 else None,
            uid, bu, stamp, stamp, version + i, 1 if i % 59 == 11 else 0, 2 if i % 59 == 11 else 1,
            f"{1 + i % 400} Market Street", f"{20000 + (i * 53) % 79999}",
            None if i % 4 == 1 else f"https://{words[i].lower().replace(' ', '')}.example", 10 + i % 900,
            _HOLD_CODES[i % 10], i % 13 == 5,
        )


_CONTACT_COLUMNS = (
    "contactid", "firstname", "lastname", "fullname", "emailaddress1", "telephone1", "msdyn_contactpersonid",
    "msdyn_sellable", "_parentcustomerid_value", "_transactioncurrencyid_value", "_ownerid_value",
    "_owningbusinessunit_value", "createdon", "modifiedon", "versionnumber", "statecode", "statuscode",
    "jobtitle", "gendercode", "address1_line1",
)


def _contacts(
    store: Store, rng: random.Random, n: int, account_ids: list[str], ids: list[str],
    account_owner: list[tuple[str, str, Company | None]], own_owner: list[tuple[str, str, Company | None]],
    platform: _Platform,
) -> Iterator[tuple[Any, ...]]:
    """Contacts without company: 70 % under an account (same owner), 25 % sellable with a contact
    person id, 5 % sellable without one (not eligible for the Customers V3 → contacts map)."""
    version = store.reserve_rowversions(n)
    firsts, lasts = rng.choices(_FIRST, k=n), rng.choices(_LAST, k=n)
    kind = _pick(rng, ("sellable", "sellable-no-id", "contact"), (25, 5, 70), n)
    usd = platform.currencies["USD"]
    for i in range(n):
        parent = i % 10 < 7
        uid, bu, company = account_owner[i] if parent else own_owner[i]
        c = company or DAT
        first = f'{firsts[i]} "{firsts[i][:3]}"' if i % 89 == 17 else (None if i % 67 == 4 else firsts[i])
        full = f"{first} {lasts[i]}" if first else lasts[i]
        stamp = _DV_STAMPS[(i * 7) % 730]
        yield (
            ids[i], first, lasts[i], full,
            None if i % 29 == 2 else f"{lasts[i].lower().replace(chr(39), '')}{i + 1}@mail.example",
            f"{c.phone} {(i * 3) % 10000:04d}", f"CP-{i + 1:07d}" if kind[i] == "sellable" else None,
            kind[i] != "contact", account_ids[i] if parent else None,
            platform.currencies.get(c.currency, usd), uid, bu, stamp, stamp, version + i, 0, 1,
            ("Buyer", "Owner", "Manager", None)[i % 4], (1, 2, None)[i % 3], f"{1 + i % 300} Park Lane",
        )


SHARED_EVERY = 20  # one Dataverse customer in 20 is also an F&O customer (same account number)


def _share_customers(store: Store) -> int:
    """Make some existing Dataverse customers F&O customers too, as on a real engagement where both
    sides were fed from one source: every `SHARED_EVERY`-th customer account (and sellable contact)
    gets the account number of an F&O organization (person) customer. Their owning business unit
    points at a company chosen independently, so the two documented bootstrap methods differ on
    them: by business unit a row may land in another company than its F&O customer (a duplicate),
    by account number it takes the F&O customer's company. Returns the rows changed.

    _share_customers(store)  → 10 for 100 rows
    """
    pairs = (("accounts", "accountid", "accountnumber", "customertypecode = 3", "Organization"),
             ("contacts", "contactid", "msdyn_contactpersonid", "msdyn_sellable = 1", "Person"))
    changed = 0
    for table, pk, key, eligible, party in pairs:
        ent = ENTITIES[table]
        fo = [r[0] for r in store.query(
            f'SELECT "CustomerAccount" FROM "{ENTITIES["CustomersV3"].table}" WHERE "PartyType" = ? '
            'ORDER BY "dataAreaId", "CustomerAccount"', (party,))]
        rows = [r[0] for r in store.query(
            f'SELECT "{pk}" FROM "{ent.table}" WHERE {eligible} AND "{key}" IS NOT NULL ORDER BY "{pk}"')]
        for account, row_id in zip(fo[::SHARED_EVERY], rows[::SHARED_EVERY], strict=False):
            store.update(ent, {pk: row_id}, {key: account})
            changed += 1
    return changed


# Data management > Source data formats of a new F&O (name, type, file format); the Language locale
# of the file formats is the sandbox's `dmf_locale`.
SOURCE_FORMATS = (("CSV", "File", "Delimited"), ("CSV-Unicode", "File", "Delimited"),
                  ("Excel", "File", "Excel"), ("XML-Element", "File", "XML"),
                  ("XML-Attribute", "File", "XML"), ("Package", "Package", ""))


def _seed_finops(store: Store, rng: random.Random, n: int, spec: Profile, tally: _Tally,
                 dmf_locale: str = "en-us") -> None:
    """Source data formats, legal entities and currencies always; groups, terms and customers for
    F&O with data.

    A new (empty) F&O has company DAT and its accounting currency, USD: the base currency of a new
    Dataverse too, so the Currencies map of new-new reconciles.
    """
    _insert(store, tally, "DataManagementSourceDataFormats", [
        {"SourceName": name, "Description": name, "Type": kind, "FileFormat": fmt,
         "LanguageLocale": dmf_locale if kind == "File" else ""} for name, kind, fmt in SOURCE_FORMATS])
    with_data = spec.finops == "data"
    companies = (DAT,) + (COMPANIES if with_data else ())
    _insert(store, tally, "LegalEntities", [
        {"LegalEntityId": c.code, "Name": c.name, "CompanyType": "Organization",
         "AddressCountryRegionId": c.country, "AccountingCurrency": c.currency} for c in companies])
    _insert(store, tally, "Currencies", [
        {"CurrencyCode": code, "Name": name, "Symbol": sym} for code, name, sym, _ in CURRENCIES
        if with_data or code == DAT.currency])
    if not with_data:
        return
    _insert(store, tally, "PaymentTerms", [
        {"dataAreaId": c.data_area, "Name": name, "Description": desc, "NumberOfDays": days,
         "NumberOfMonths": 0, "CutOffDayOfMonth": 0, "PaymentMethodType": method,
         "IsCashPayment": "Yes" if name == "COD" else "No",
         "IsCertifiedCompanyCheck": "No", "IsDefaultPaymentTerm": "Yes" if name == "Net30" else "No",
         "CreditCardCreditCheckType": "Normal"}
        for c in COMPANIES for name, desc, days, method in PAYMENT_TERMS])
    _insert(store, tally, "CustomerGroups", [
        {"dataAreaId": c.data_area, "CustomerGroupId": gid, "Description": desc, "PaymentTermId": terms,
         "IsSalesTaxIncludedInPrice": "Yes" if gid == "30" else "No"}
        for c in COMPANIES for gid, desc, terms in CUSTOMER_GROUPS])
    tally.add("CustomersV3", store.bulk_load(ENTITIES["CustomersV3"], _CUSTOMER_COLUMNS,
                                             _customers(rng, n, spec.quoted_names)))


_CUSTOMER_COLUMNS = (
    "dataAreaId", "CustomerAccount", "PartyType", "OrganizationName", "PersonFirstName", "PersonLastName",
    "NameAlias", "CustomerGroupId", "SalesCurrencyCode", "PaymentTerms", "CreditLimit", "PartyNumber",
    "PrimaryContactEmail", "PrimaryContactPhone", "AddressCity", "AddressCountryRegionId",
    "AddressCountryRegionISOCode", "AddressStreet", "AddressZipCode", "AddressLatitude", "AddressLongitude",
    "DeliveryAddressCity", "DeliveryAddressCountryRegionISOCode", "DeliveryAddressStreet",
    "DeliveryAddressZipCode", "DeliveryAddressLatitude", "DeliveryAddressLongitude", "PrimaryContactURL",
    "OrganizationNumberOfEmployees", "CreditLimitIsMandatory", "IsOneTimeCustomer", "OnHoldStatus",
    "PersonGender", "PersonMaritalStatus", "LanguageId",
)
_ON_HOLD = ("No",) * 8 + ("Invoice", "All")  # CustVendorBlocked names (REF #101's value map)
_GENDERS, _MARITAL = ("Male", "Female"), ("Single", "Married", "Divorced", "Widowhood")


def _customers(rng: random.Random, n: int, quoted_names: bool = True) -> Iterator[tuple[Any, ...]]:
    """Customers across the data companies: 80 % organizations (groups 10/20/80), 20 % persons (30),
    with addresses (coordinates as decimals, which packages write in the DMF locale) and enum values
    that the maps' value maps convert."""
    company = _pick(rng, COMPANIES, _COMPANY_WEIGHTS, n)
    words, nouns, suffixes = (rng.choices(x, k=n) for x in (_ORG_WORDS, _ORG_NOUNS, _ORG_SUFFIXES))
    firsts, lasts = rng.choices(_FIRST, k=n), rng.choices(_LAST, k=n)
    person = _pick(rng, (False, True), (80, 20), n)
    seq = dict.fromkeys(COMPANIES, 0)
    for i in range(n):
        c = company[i]
        seq[c] += 1
        quoted = quoted_names and i % 101 == 19
        if person[i]:
            org, pfirst, plast, group = None, firsts[i], lasts[i], "30"
            alias = lasts[i]
        else:
            org = (f'{words[i]} "{nouns[i]}" {suffixes[i]}' if quoted
                   else f"{words[i]} {nouns[i]} {suffixes[i]}").rstrip()
            pfirst, plast, group = None, None, ("10", "20", "80")[i % 3]
            alias = words[i]
        city = c.cities[i % len(c.cities)]
        street, zip_code = f"{1 + i % 250} Main Street", f"{10000 + (i * 37) % 89999}"
        lat, lon = round(20 + (i * 7919) % 4000 / 100, 4), round(-120 + (i * 104729) % 24000 / 100, 4)
        yield (
            c.data_area, f"{c.account_prefix}-{seq[c]:06d}", "Person" if person[i] else "Organization",
            org, pfirst, plast, alias, group, c.currency, ("Net30", "Net45", "Net10", "COD")[i % 4],
            float(500 * (i % 40)) + (0.5 if i % 5 == 1 else 0.0), f"{i + 1:09d}",
            None if i % 37 == 9 else f"ap{i + 1}@{c.account_prefix.lower()}.customer.example",
            f"{c.phone} {(i * 11) % 10000:04d}", city, c.country, c.country, street, zip_code, lat, lon,
            None if person[i] else city, None if person[i] else c.country, None if person[i] else street,
            None if person[i] else zip_code, None if person[i] else lat, None if person[i] else lon,
            None if person[i] else f"https://www.{words[i].lower().replace(' ', '')}.example",
            None if person[i] else 5 + i % 500, "Yes" if i % 11 == 3 else "No", "No", _ON_HOLD[i % 10],
            _GENDERS[i % 2] if person[i] else None, _MARITAL[i % 4] if person[i] else None, "en-us",
        )
