"""The parameter model: what a run's parameters are, as pydantic models, with the checks that
span fields (each problem keeping its own path). Loading a file into it, and wording pydantic's
errors for people, is `dwlib.params.load`; callers import both from `dwlib.params`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dwlib import catalog
from dwlib.scenarios import scenario as _scenario
from dwlib.secrets import REFERENCE_FORMS, SecretError, SecretRef
from dwlib.text import Language

# The scenario ids as a type (the scenarios themselves: `dwlib.scenarios.SCENARIOS`).
ScenarioId = Literal["new-new", "new-existing", "new-data-new", "new-data-existing", "existing-new",
                     "existing-existing", "health-check", "troubleshoot", "refresh-relink", "maintenance",
                     "add-legal-entity"]
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# The company a new F&O environment is connected for: "A dual-write connection is established for
# DAT company data" (the seed page); in the scope of every scenario with a new F&O.
NEW_FINOPS_COMPANY = "DAT"
Loc = tuple[str | int, ...]


class KeyProblems(ValueError):
    """Raised by cross-field checks so each problem keeps its own path below the model's."""

    def __init__(self, items: Sequence[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in items))
        self.items = list(items)


def dotted(loc: Loc) -> str:
    """`a.b[0].c`; keys that are not plain names (business units: "", "Contoso US") are quoted.

    >>> dotted(("bootstrap", "mapping", "Contoso US")), dotted(("runs", 0, "name"))
    ('bootstrap.mapping["Contoso US"]', 'runs[0].name')
    """
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", p):
            out += f".{p}" if out else p
        else:
            out += f'["{p}"]'
    return out


def _secret_ref(value: Any) -> SecretRef:
    if isinstance(value, SecretRef):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a secret reference ({REFERENCE_FORMS})")
    try:
        return SecretRef.parse(value)
    except SecretError as exc:
        raise ValueError(str(exc)) from None


def _https_url(value: str) -> str:
    url = httpx.URL(value.strip())
    if url.scheme != "https" or not url.host:
        raise ValueError("must be an https:// URL (TLS is always on)")
    if url.query or url.fragment:
        raise ValueError("must be a base URL without ?query or #fragment")
    return str(url).rstrip("/")


def _company_code(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]{1,4}", value):
        raise ValueError("company codes are F&O legal entity ids: 1-4 letters or digits (e.g. DAT, USMF)")
    return value.upper()


def _path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return (base / value.expanduser()).resolve()


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


Secret = Annotated[SecretRef, BeforeValidator(_secret_ref), PlainSerializer(str, return_type=str)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
CompanyCode = Annotated[str, AfterValidator(_company_code)]
AnyPath = Annotated[Path, AfterValidator(_path)]
FilePath = Annotated[Path, AfterValidator(_path), AfterValidator(_existing_file)]


class _Model(BaseModel):
    # hide_input_in_errors: a pasted secret must never be echoed back in a validation error.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              arbitrary_types_allowed=True)


# ---- the model ---------------------------------------------------------------------------------

class Environments(_Model):
    """Where the two environments and their identity provider are.

    >>> Environments(tenant_id="t", dataverse_url="https://o.crm.dynamics.com",
    ...              finops_url="https://f.operations.dynamics.com").authority_url
    'https://login.microsoftonline.com/t'
    """

    tenant_id: str = Field(min_length=1)
    authority: HttpsUrl | None = None
    ca_bundle: FilePath | None = None
    dataverse_url: HttpsUrl
    finops_url: HttpsUrl
    gateway_url: HttpsUrl | None = None  # only for options.admin: gateway
    # Lifecycle Services: the F&O environment's metadata (build version, type), read by preflight.
    lcs_api_url: HttpsUrl = "https://lcsapi.lcs.dynamics.com"
    lcs_project_id: int | None = Field(default=None, ge=1)
    lcs_environment_id: str | None = Field(default=None, min_length=1)
    # Power Platform admin API: environment SKU and location, read by preflight.
    power_platform_api_url: HttpsUrl = "https://api.bap.microsoft.com"

    @property
    def authority_url(self) -> str:
        """The Entra ID authority: `authority` if given, else login.microsoftonline.com/{tenant}."""
        return self.authority or f"{DEFAULT_AUTHORITY_HOST}/{self.tenant_id}"


class Certificate(_Model):
    """A certificate credential of the app registration (PEM files).

    auth: {method: certificate, certificate: {path: cert.pem, private_key: "file:key.pem"}}
    >>> sorted(Certificate.model_fields)
    ['passphrase', 'path', 'private_key', 'thumbprint']
    """

    path: FilePath
    private_key: Secret
    passphrase: Secret | None = None
    thumbprint: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{40}$")


class Auth(_Model):
    """How to sign in: an app registration (secret or certificate) or a consultant (device code).

    >>> Auth(method="device_code", client_id="app").client_secret is None
    True
    """

    method: Literal["client_secret", "certificate", "device_code"] = "client_secret"
    client_id: str = Field(min_length=1)
    client_secret: Secret | None = None
    certificate: Certificate | None = None
    token_cache: AnyPath | None = None

    @model_validator(mode="after")
    def _credential_for_method(self) -> Auth:
        needs = {"client_secret": "client_secret", "certificate": "certificate"}.get(self.method)
        if needs and getattr(self, needs) is None:
            raise KeyProblems([((needs,), f"required when method is '{self.method}'")])
        return self


def _map_name(name: str) -> str:
    try:
        catalog.maps_named(name)
    except catalog.CatalogError:
        raise ValueError(unknown_map(name)) from None
    return name


class TableMapChoice(_Model):
    """A dual-write table map to enable; a plain string is shorthand for `{name: …}`.

    `defaults` gives column rows a Default value transform: F&O column → the value written to F&O
    when the Dataverse value is empty (dual-write "Customizing mappings"), e.g. a customer group
    for accounts that have none; the migration applies them too.

    >>> TableMapChoice.model_validate("Customers V3 (contacts)").name
    'Customers V3 (contacts)'
    >>> TableMapChoice(name="Customers V3 (accounts)", defaults={"customergroupid": "30"}).defaults
    {'CUSTOMERGROUPID': '30'}
    """

    # A name the catalogue does not know would pass here and fail at the plan step, after the portal
    # gates and the bootstrap: it is a problem of the file, said with the file's other problems.
    name: Annotated[str, Field(min_length=1), AfterValidator(_map_name)]
    initial_sync_master: Literal["finops", "dataverse"] | None = None
    skip_initial_sync: bool = False
    # F&O column names as the docs' mapping tables write them: upper case.
    defaults: dict[Annotated[str, AfterValidator(str.upper)], Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _default_columns(self) -> TableMapChoice:
        if not self.defaults:
            return self
        maps = catalog.maps_named(self.name)
        if len(maps) > 1:
            raise KeyProblems([(("name",), f"{self.name} stands for {len(maps)} maps; defaults belong to "
                                 f"one: name it ({' or '.join(m.name for m in maps)})")])
        m = maps[0]
        # Only column rows that write an F&O column from a Dataverse column can take a Default.
        columns = sorted({r.finops.upper() for r in m.mappings if r.finops and r.dataverse and r.to_finops})
        bad = [(("defaults", k), f"{m.name} has no column row writing F&O column {k} from Dataverse; "
                f"use one of {', '.join(columns)}") for k in self.defaults if k not in columns]
        if bad:
            raise KeyProblems(bad)
        return self


def unknown_map(name: str) -> str:
    """Why `name` names no table map of the catalogue (`catalog.maps_named`), with the closest names.

    >>> unknown_map("Contacts V2")
    "no table map 'Contacts V2' in the catalogue; did you mean 'CDS Contacts V2 (contacts)'?"
    """
    maps = catalog.table_maps()
    entities = [m.finops_entity for m in maps]  # the ones standing for several maps are names too
    names = [*(m.name for m in maps), *dict.fromkeys(e for e in entities if entities.count(e) > 1)]
    lowered = name.strip().lower()
    close = [n for n in names if lowered in n.lower()]
    if not close:  # a misspelling: compare with the names without their "(table)" part
        short = {n.partition(" (")[0].lower(): n for n in names}
        close = [short[s] for s in difflib.get_close_matches(lowered, list(short), n=1, cutoff=0.6)]
    known = ", ".join(m.name for m in maps)
    hint = f"did you mean {' or '.join(repr(n) for n in close)}?" if close else f"use one of {known}"
    return f"no table map {name!r} in the catalogue; {hint}"


class Company(_Model):
    """A legal entity to create in F&O (scenarios new-existing and new-data-existing), for the
    existing Dataverse data; the runbook then adds it to the dual-write connection.

    >>> Company(code="usmf", name="Contoso US", country="usa").code
    'USMF'
    """

    code: CompanyCode
    name: str = Field(min_length=1, max_length=60)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")  # AddressCountryRegionId (ISO 3)
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")  # AccountingCurrency (ISO 4217)
    # Customer groups the new company needs (CustomerGroupId, e.g. a table map's default group).
    customer_groups: list[Annotated[str, Field(min_length=1, max_length=10)]] = Field(default_factory=list)


class Bootstrap(_Model):
    """Stamping existing Dataverse rows with their company, by one of the two documented methods:

    - `business-unit` (the bootstrap FAQ's sample): owning business unit → company code, `mapping`;
    - `account-number` (the current page, Azure Data Factory): a row whose account number (customer
      account) is an F&O customer's takes that customer's company (DataAreaId) and customer group,
      which avoids duplicates when the same customers exist on both sides; rows without a match
      follow `mapping` when it names their business unit, else they are reported.

    `customer_group`: the customer group (of each row's company) given to rows the Customers V3
    maps sync that have none, because F&O requires one.

    >>> Bootstrap(mapping={"Contoso US": "usmf"}).mapping, Bootstrap().method
    ({'Contoso US': 'USMF'}, 'business-unit')
    """

    method: Literal["business-unit", "account-number"] = "business-unit"
    mapping: dict[str, CompanyCode] = Field(default_factory=dict)
    customer_group: str | None = Field(default=None, min_length=1, max_length=10)
    tables: list[str] = Field(default_factory=lambda: ["accounts", "contacts"])
    # FastTrack's sample aborts past 100 failed updates (maxFaultThreshold = 100).
    max_failed_rows: int = Field(default=100, ge=0)


class PlanLimits(_Model):
    """Overrides of the documented initial-sync limits the plan decides with: for tests against
    small sandboxes only (unset: the catalogue's documented values).

    >>> PlanLimits(initial_sync_rows_per_legal_entity=50).single_threaded_dataverse_to_finops_rows is None
    True
    """

    initial_sync_rows_per_legal_entity: int | None = Field(default=None, ge=1)
    single_threaded_dataverse_to_finops_rows: int | None = Field(default=None, ge=1)


class PlanOptions(_Model):
    """How the plan step decides between initial sync and migration.

    >>> PlanOptions().limits.initial_sync_rows_per_legal_entity is None
    True
    """

    limits: PlanLimits = Field(default_factory=PlanLimits)


class MigrateOptions(_Model):
    """The F&O data projects the migrate step exports from and imports into; `{entity}` is the
    entity's OData collection (e.g. CustomersV3).

    >>> MigrateOptions().export_project.format(entity="CustomersV3")
    'CustomersV3-Export'
    """

    export_project: str = Field(default="{entity}-Export", pattern=r"\{entity\}")
    import_project: str = Field(default="{entity}-Import", pattern=r"\{entity\}")


class HttpOptions(_Model):
    """Timeouts and retry budgets of the HTTP calls: per call, and for the whole run.

    A `Retry-After` is waited out as given (retrying early extends the penalty), so both budgets
    must cover the service protection window of 5 minutes.

    >>> HttpOptions().retry_budget_s
    3600.0
    """

    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    retry_attempts: int = Field(default=8, ge=0, le=50)
    retry_total_s: float = Field(default=600.0, gt=0)
    backoff_s: float = Field(default=0.5, ge=0)
    max_wait_s: float = Field(default=120.0, gt=0)
    retry_budget_s: float = 3600.0

    @field_validator("retry_budget_s")
    @classmethod
    def _covers_a_window(cls, value: float) -> float:
        if value < 300:
            raise ValueError("must be 300 or more: a run must be able to wait out one 5-minute service "
                             "protection window (Retry-After up to 300 s)")
        return value

    @model_validator(mode="after")
    def _budgets_fit(self) -> HttpOptions:
        if self.retry_total_s > self.retry_budget_s:
            raise ValueError(f"retry_total_s ({self.retry_total_s:g}) is the waiting of one call and cannot "
                             f"exceed retry_budget_s ({self.retry_budget_s:g}), the waiting of the whole run")
        return self


class InitialSyncOptions(_Model):
    """Watching the initial sync: how long it may run before the step gives up, how often to look.

    >>> InitialSyncOptions().timeout_s
    14400.0
    """

    timeout_s: float = Field(default=14400.0, gt=0)
    poll_s: float = Field(default=10.0, gt=0)


class VerifyOptions(_Model):
    """The verification: the live round trip (once per environments, always, or never) and its company.

    >>> VerifyOptions().round_trip
    'once'
    """

    round_trip: Literal["once", "always", "never"] = "once"
    company: CompanyCode | None = None  # None: the first company in scope with customer groups
    timeout_s: float = Field(default=300.0, gt=0)  # per direction of the round trip
    poll_s: float = Field(default=2.0, gt=0)
    sample_keys: int = Field(default=10, ge=0, le=1000)  # missing keys shown per row (the CSV has all)


GATE_COMMAND_REFUSED = (
    "gate_command: parameters cannot name a command to run (a shared parameters file would run it "
    "on whoever opens the runbook); against a local sandbox set options.gates: sandbox-consultant, "
    "for a command of your own run dw run --gate-command 'CMD …' or set the environment variable "
    "DW_GATE_COMMAND")


class Health(_Model):
    """The health check (scenario `health-check`): how much drift between the sides it tolerates.

    >>> Health().max_drift_rows
    0
    """

    # Rows out of sync (missing on a side, or values differing) per map and company above which the
    # health check fails (dw run exits 1); what it finds below is a warning.
    max_drift_rows: int = Field(default=0, ge=0)


DEBUG_MINUTES_MAX = 60  # verbose logging may hold personal data: a bound, not an open end


class Troubleshoot(_Model):
    """The troubleshoot runbook: minutes of debug mode (`IsDebugMode`) to reproduce in; 0 = none.

    >>> Troubleshoot().debug_minutes
    0.0
    """

    debug_minutes: float = Field(default=0.0, ge=0, le=DEBUG_MINUTES_MAX)


class Options(_Model):
    """How a run behaves.

    >>> Options(dry_run=True).batch_size
    1000
    """

    dry_run: bool | None = None  # None: Params.dry_run decides (real environments: yes; sandbox: no)
    confirm_irreversible: bool = False
    # Portal-only actions: "portal" shows instructions and polls the documented reads (supported);
    # "gateway" drives the dual-write management gateway (unsupported by Microsoft, opt-in).
    admin: Literal["portal", "gateway"] = "portal"
    gate_timeout_s: float = Field(default=1800.0, gt=0)
    gate_poll_s: float = Field(default=5.0, gt=0)
    # Who acts on a portal gate besides the person reading it (`dwlib.gates`): "show" nobody (the
    # instruction is shown and recorded, the gate polls); "sandbox-consultant" plays the consultant
    # on a local sandbox. A command of one's own comes only from the command line or the
    # environment (DW_GATE_COMMAND), never from a file.
    gates: Literal["show", "sandbox-consultant"] = "show"
    concurrency: int = Field(default=4, ge=1, le=32)
    batch_size: int = Field(default=1000, ge=1, le=1000)
    page_size: int = Field(default=5000, ge=1, le=5000)
    http: HttpOptions = Field(default_factory=HttpOptions)

    @model_validator(mode="before")
    @classmethod
    def _no_command(cls, data: Any) -> Any:
        # Parameter files travel by email and in repositories: one that names a command to run
        # would run it on whoever opens the runbook.
        if isinstance(data, Mapping) and "gate_command" in data:
            raise ValueError(GATE_COMMAND_REFUSED)
        return data


class SandboxRef(_Model):
    """A local sandbox whose `connection.yaml` supplies URLs, CA bundle and credentials.

    sandbox: {dir: .dw/sandbox/existing-existing}
    >>> list(SandboxRef.model_fields)
    ['dir']
    """

    dir: AnyPath


class Params(_Model):
    """Everything a runbook needs to know, validated. Build it with `load_params`.

    params = load_params("params/sandbox-existing-existing.yaml", {"options.dry_run": True})
    >>> "scenario" in Params.model_fields
    True
    """

    scenario: ScenarioId
    # The runbook's language: notebooks/<scenario>.ipynb (en) or notebooks/<language>/<scenario>.ipynb.
    language: Language = "en"
    environments: Environments
    auth: Auth
    legal_entities: list[CompanyCode] = Field(default_factory=list)
    table_maps: list[TableMapChoice] = Field(default_factory=list)
    companies: list[Company] = Field(default_factory=list)
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    plan: PlanOptions = Field(default_factory=PlanOptions)
    migrate: MigrateOptions = Field(default_factory=MigrateOptions)
    initial_sync: InitialSyncOptions = Field(default_factory=InitialSyncOptions)
    verify: VerifyOptions = Field(default_factory=VerifyOptions)
    health: Health = Field(default_factory=Health)
    troubleshoot: Troubleshoot = Field(default_factory=Troubleshoot)
    options: Options = Field(default_factory=Options)
    sandbox: SandboxRef | None = None
    _warnings: list[str] = PrivateAttr(default_factory=list)

    def column_defaults(self, map_name: str) -> dict[str, str]:
        """The Default value transforms the parameters give map `map_name` (F&O column in upper
        case → value; {} when none), whichever way the map is named.

        params.column_defaults("customers-v3-accounts")  → {'CUSTOMERGROUPID': '30'}
        """
        out: dict[str, str] = {}
        for t in self.table_maps:
            if t.defaults and catalog.table_map(t.name).name == catalog.table_map(map_name).name:
                out.update(t.defaults)
        return out

    @property
    def warnings(self) -> list[str]:
        """Things that are allowed but worth a second look (e.g. company codes not 3 long)."""
        return list(self._warnings)

    @property
    def dry_run(self) -> bool:
        """Whether the run only checks and plans. The one place of the rule: `options.dry_run`
        when the parameters set it; otherwise a dry run against real environments and a real run
        against a local sandbox (`sandbox:` set).

        >>> Options().dry_run is None
        True
        """
        if self.options.dry_run is not None:
            return self.options.dry_run
        return self.sandbox is None

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        problems = company_problems(self)
        if self.options.admin == "gateway":
            if self.environments.gateway_url is None:
                problems.append((("environments", "gateway_url"), "required when options.admin is 'gateway'"))
            if self.auth.method != "device_code":
                problems.append((("options", "admin"), "the gateway needs a consultant's sign-in: set "
                                 "auth.method: device_code, or use admin: portal"))
        if problems:
            raise KeyProblems(problems)
        self._warnings = code_warnings(self)
        if self.companies and not creates_companies(self.scenario):
            self._warnings.append(
                f"companies: scenario {self.scenario} creates no company; the list is ignored")
        return self


class References(_Model):
    """The keys company references run across, validated on their own when another part of a file
    is wrong (which stops `Params` before its cross checks): their problems come in the same pass.

    >>> References.model_validate({"scenario": "existing-existing", "environments": "not checked here"})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for References
    ...
    """

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    scenario: ScenarioId
    legal_entities: list[CompanyCode] = Field(default_factory=list)
    companies: list[Company] = Field(default_factory=list)
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    verify: VerifyOptions = Field(default_factory=VerifyOptions)

    @model_validator(mode="after")
    def _cross_checks(self) -> References:
        problems = company_problems(self)
        if problems:
            raise KeyProblems(problems)
        return self


def creates_companies(scenario_id: str) -> bool:
    """Whether the scenario creates companies in F&O (and so needs `companies`).

    >>> creates_companies("new-existing"), creates_companies("existing-existing")
    (True, False)
    """
    return any(ref.step == "create-company" for ref in _scenario(scenario_id).steps)


def company_problems(p: Params | References) -> list[tuple[Loc, str]]:
    """Company references a file itself gets wrong: what the scenario needs and does not get, codes
    named where they are not in scope."""
    sc = _scenario(p.scenario)
    problems: list[tuple[Loc, str]] = []
    known = set(p.legal_entities)
    if not known and sc.finops == "existing":
        problems.append((("legal_entities",), f"scenario {sc.id} connects an existing finance and operations "
                         "environment, which links every legal entity: list the ones to keep in the "
                         "dual-write connection (at most 40 with an initial sync)"))
    if creates_companies(sc.id) and not p.companies:
        problems.append((("companies",), f"scenario {sc.id} creates a company in finance and operations for "
                         "the existing Dataverse data: list it, e.g. companies: [{code: USMF, name: Contoso "
                         "US}] (and the code in legal_entities)"))
    for bu, code in p.bootstrap.mapping.items():
        if known and code not in known:
            problems.append((("bootstrap", "mapping", bu), f"company {code} is not in legal_entities"))
    seen: set[str] = set()
    for i, company in enumerate(p.companies):
        where: Loc = ("companies", i, "code")
        if known and company.code not in known:
            problems.append((where, f"company {company.code} is not in legal_entities"))
        if company.code in seen:
            problems.append((where, f"company {company.code} is listed twice"))
        seen.add(company.code)
    in_scope = known | seen | ({NEW_FINOPS_COMPANY} if sc.finops != "existing" else set())
    checked = p.verify.company
    if checked is not None and in_scope and checked not in in_scope:
        problems.append((("verify", "company"), f"company {checked} is not in the run's scope "
                         f"({', '.join(sorted(in_scope))}): choose one of them, or null"))
    return problems


def code_warnings(p: Params) -> list[str]:
    """One warning per company code that is not three characters long, naming every place it is
    used: a code repeated across the file is one thing to check, said once."""
    places: dict[str, list[str]] = {}
    for i, code in enumerate(p.legal_entities):
        places.setdefault(code, []).append(dotted(("legal_entities", i)))
    for bu, code in sorted(p.bootstrap.mapping.items()):  # the same text whatever the keys' order
        places.setdefault(code, []).append(dotted(("bootstrap", "mapping", bu)))
    return [f"company code {code} has {len(code)} characters ({', '.join(where)}); the setup guidance says "
            "three-letter ISO code, so check it is the F&O legal entity id"
            for code, where in places.items() if len(code) != 3]

