"""Typed run parameters: load a YAML file (plus overrides), validate everything, report all at once.

Every key is documented in `params/template.yaml`. Unknown or misspelt keys are errors with a
"did you mean" hint; every problem is reported in one `ParamsError`, each with its path (and line)
in the file. Secrets are references (`dwlib.secrets`), resolved only when used. A file naming a
sandbox (`sandbox: {dir: …}`) takes the URLs, CA bundle, client id and secret reference from that
directory's `connection.yaml` for every key it does not set itself.

Example:
    >>> p = load_params({
    ...     "scenario": "existing-existing",
    ...     "environments": {"tenant_id": "contoso.onmicrosoft.com",
    ...                      "dataverse_url": "https://contoso.crm.dynamics.com/",
    ...                      "finops_url": "https://contoso.operations.dynamics.com"},
    ...     "auth": {"client_id": "11111111-2222-3333-4444-555555555555",
    ...              "client_secret": "env:DW_CLIENT_SECRET"},
    ...     "legal_entities": ["usmf"],
    ... })
    >>> p.environments.dataverse_url, p.legal_entities
    ('https://contoso.crm.dynamics.com', ['USMF'])
    >>> p.environments.authority_url
    'https://login.microsoftonline.com/contoso.onmicrosoft.com'
    >>> p.auth.client_secret
    SecretRef('env:DW_CLIENT_SECRET')
"""

from __future__ import annotations

import difflib
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dwlib import catalog
from dwlib.errors import DwError
from dwlib.scenarios import SCENARIOS
from dwlib.scenarios import scenario as _scenario
from dwlib.secrets import REFERENCE_FORMS, SecretError, SecretRef
from dwlib.text import Language

log = logging.getLogger(__name__)

# The scenario ids as a type (the scenarios themselves: `dwlib.scenarios.SCENARIOS`).
ScenarioId = Literal["new-new", "new-existing", "new-data-new", "new-data-existing", "existing-new",
                     "existing-existing", "health-check", "troubleshoot", "refresh-relink", "maintenance",
                     "add-legal-entity"]
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# The company a new F&O environment is connected for: "A dual-write connection is established for
# DAT company data" (the seed page); in the scope of every scenario with a new F&O.
NEW_FINOPS_COMPANY = "DAT"
Loc = tuple[str | int, ...]


class ParamsError(DwError):
    """Parameters that cannot be used; `problems` lists every `(path, message)` found.

    >>> str(ParamsError([("auth.client_secert", "unknown key; did you mean 'client_secret'?")]))
    "invalid parameters (1 problem):\\n  auth.client_secert: unknown key; did you mean 'client_secret'?"
    """

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid parameters{where} ({count}):\n" + "\n".join(lines))


class _KeyProblems(ValueError):
    """Raised by cross-field checks so each problem keeps its own path below the model's."""

    def __init__(self, items: Sequence[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(msg for _, msg in items))
        self.items = list(items)


# ---- field types -------------------------------------------------------------------------------

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
            raise _KeyProblems([((needs,), f"required when method is '{self.method}'")])
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
            raise _KeyProblems([(("name",), f"{self.name} stands for {len(maps)} maps; defaults belong to "
                                 f"one: name it ({' or '.join(m.name for m in maps)})")])
        m = maps[0]
        # Only column rows that write an F&O column from a Dataverse column can take a Default.
        columns = sorted({r.finops.upper() for r in m.mappings if r.finops and r.dataverse and r.to_finops})
        bad = [(("defaults", k), f"{m.name} has no column row writing F&O column {k} from Dataverse; "
                f"use one of {', '.join(columns)}") for k in self.defaults if k not in columns]
        if bad:
            raise _KeyProblems(bad)
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
            raise _KeyProblems(problems)
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
            raise _KeyProblems(problems)
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


# ---- loading -----------------------------------------------------------------------------------

PARAM_KEYS = tuple(Params.model_fields)  # the top-level keys of a parameters file (papermill -f)


def notebook_parameters(namespace: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """What a notebook's globals say about its parameters: the `params_file` it names (what `dw run`
    sets), and the keys of a parameters file given inline (what papermill's `-f FILE` injects).

    >>> notebook_parameters({"params_file": None, "scenario": "new-new", "options": None, "x": 1})
    (None, {'scenario': 'new-new'})
    """
    source = namespace.get("params_file")
    inline = {k: namespace[k] for k in PARAM_KEYS if namespace.get(k) is not None}
    return (str(source) if source else None), inline


def load_params(
    source: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    base_dir: Path | None = None,
    scenario: str | None = None,
    sandbox_pending: bool = False,
) -> Params:
    """Load and validate parameters from a YAML file (or a mapping) plus `overrides`.

    `overrides` keys may be dotted paths (`{"options.dry_run": True}`). Relative paths in the
    parameters resolve against `base_dir` (default: the current directory). `scenario`: the runbook
    the parameters are for (a file for another one is a problem like any other). Raises
    `ParamsError` with every problem the file has, each with its path (and line).

    A sandbox that is not running yet (no `connection.yaml`) is one problem among the others: what
    it would supply is stood in for, so the rest of the file is checked all the same.
    `sandbox_pending` says the caller starts the sandbox next (`dw run --sandbox`): then its
    absence is no problem, but environments the file names itself are (the sandbox supplies them).
    The parameters returned then hold stand-ins: use them to check, never to connect.

    Warnings are logged once per process (the same warning, at the same place, is said once however
    often the file is loaded: `dw run`, the form, the runbook).

    >>> load_params({"scenario": "new-new"}, {"options.dry_run": True})
    Traceback (most recent call last):
    ...
    dwlib.params.ParamsError: invalid parameters (2 problems):
      environments: required
      auth: required
    """
    lines: dict[Loc, int] = {}
    problems: list[tuple[str, str]] = []
    label = ""
    if isinstance(source, Mapping):
        data: dict[str, Any] = _deep_copy(source)
    else:
        label = str(source)
        data, lines, problems = read_yaml(Path(source))
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)

    def at(loc: Loc) -> str:
        line = lines.get(loc)
        return dotted(loc) + (f" (line {line})" if line else "")

    other = scenario_problem(scenario, data.get("scenario"))
    if other:
        problems.append((at(("scenario",)), other))
    base = (base_dir or Path.cwd()).resolve()
    problems += [(at(loc), msg) for loc, msg in _merge_sandbox(data, base, pending=sandbox_pending)]
    try:
        params = Params.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        found = validation_problems(exc, lines)
        try:
            References.model_validate(data, context={"base_dir": base})
        except ValidationError as refs:
            found += [p for p in validation_problems(refs, lines) if p not in found]
        problems += found
    if problems:
        raise ParamsError(sorted(problems, key=_line_of), label) from None
    say_once(params.warnings)
    return params


def scenario_problem(expected: str | None, given: Any) -> str:
    """Why parameters for scenario `given` do not fit the runbook of `expected` ("" when they do, or
    when `given` is no scenario at all: validation says so).

    >>> scenario_problem("new-new", "existing-new")[:49]
    'the parameters are for existing-new, not new-new:'
    """
    if expected is None or given not in SCENARIOS or given == expected:
        return ""
    return (f"the parameters are for {given}, not {expected}: run the {given} runbook (dw run {given}, "
            f"notebooks/{given}.ipynb), or fix scenario:")


_said: set[str] = set()  # the warnings said in this process


def say_once(warnings: Iterable[str]) -> None:
    """Log each warning not said before in this process; a warning names its place, so one said
    again is the same thing at the same place (e.g. a file loaded by the form, then by the runbook).

    >>> say_once(["x: said once"]); say_once(["x: said once"])
    """
    for warning in warnings:
        if warning not in _said:
            _said.add(warning)
            log.warning("%s", warning)


def said(warnings: Iterable[str]) -> None:
    """Note warnings as said, by whoever showed them (the form shows its own, then they are news to
    nobody).

    >>> said(["y: shown by the form"])
    """
    _said.update(warnings)


def _line_of(problem: tuple[str, str]) -> int:
    found = re.search(r"\(line (\d+)\)", problem[0])
    return int(found.group(1)) if found else 0


def read_text(path: Path) -> str:
    r"""A parameters (or plan) file as text: UTF-8, with or without a byte order mark; `ParamsError`
    saying where when it cannot be read or is not UTF-8.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "p.yaml"; _ = f.write_bytes(b"a: 1\nb: caf\xe9\n")
    >>> read_text(f)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dwlib.params.ParamsError: invalid parameters in ... (1 problem):
      (line 2): the file is not UTF-8 text: byte 0xe9 in column 7; save it as UTF-8 ...
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ParamsError([("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ParamsError([(f"(line {line})", f"the file is not UTF-8 text: byte 0x{raw[exc.start]:02x} in "
                                              f"column {column}; save it as UTF-8 (e.g. in an editor's Save "
                                              "with Encoding, or iconv -f latin1 -t utf-8)")],
                          str(path)) from None


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Loc, int], list[tuple[str, str]]]:
    """A YAML mapping file: its data, the line of every key (by path) and duplicate-key problems;
    `ParamsError` when it cannot be read or is not a mapping. Shared with other YAML inputs that
    report problems the same way (e.g. `dwlib.batch` plans).

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "p.yaml"; _ = f.write_text("a: {b: 1}")
    >>> read_yaml(f)[:2]
    ({'a': {'b': 1}}, {(): 1, ('a',): 1, ('a', 'b'): 1})
    """
    text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError([("", f"not valid YAML: {exc}")], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError([("", "the file must be a mapping of keys (scenario:, environments:, …)")],
                          str(path))
    lines: dict[Loc, int] = {}
    problems: list[tuple[str, str]] = []
    if node is not None:
        _index(node, (), lines, problems)
    return data, lines, problems


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: list[tuple[str, str]]) -> None:
    """Record the line of every key, and report duplicate keys (YAML would keep the last silently)."""
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append((f"{dotted((*loc, key))} (line {key_node.start_mark.line + 1})",
                                 "duplicate key; keep one"))
            seen.add(key)
            _index(value_node, (*loc, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines, problems)


def validation_problems(exc: ValidationError, lines: dict[Loc, int],
                        root: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """Pydantic's errors as `(path (line N), message)` problems, worded for people, with "did you
    mean" for unknown keys of `root` (default `Params`) and its nested models."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        if loc[-1:] == ("[key]",):  # pydantic's marker for a problem with a mapping's key itself
            loc = loc[:-1]
        cause = (err.get("ctx") or {}).get("error")
        items = cause.items if isinstance(cause, _KeyProblems) else [((), _message(err, loc, root or Params))]
        for sub, msg in items:
            full = (*loc, *sub)
            # The key's own line, else its list item's (a shorthand item: `- Customers V3`); a key
            # the file lacks (required, or set by an override) has none.
            item = next((full[:n] for n in range(len(full), 0, -1) if isinstance(full[n - 1], int)), None)
            line = lines.get(full) or (lines.get(item) if item else None)
            out.append((dotted(full) + (f" (line {line})" if line else ""), msg))
    return out


def _message(err: Any, loc: Loc, root: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1], root)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(valid)}"
        return f"unknown key; {hint}"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        # Literal fields hold names, never secrets, so the input may be quoted back.
        options = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        close = difflib.get_close_matches(str(err["input"]), options, n=1, cutoff=0.6)
        return f"must be one of {err['ctx']['expected']}" + (f"; did you mean '{close[0]}'?" if close else "")
    msg: str = err["msg"]
    return msg.removeprefix("Value error, ").replace("Input should be", "must be")


def _fields_at(loc: Loc, root: type[BaseModel]) -> list[str]:
    """The keys the model accepts at `loc` (for "did you mean" hints)."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap(annotation, part)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _unwrap(annotation: Any, part: str | int) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):  # Optional[X] / X | None
        if _is_model(arg) and isinstance(part, str):
            return arg.model_fields[part].annotation if part in arg.model_fields else None
        origin = typing.get_origin(arg)
        if origin is list and isinstance(part, int):
            return typing.get_args(arg)[0]
        if origin is dict and isinstance(part, str):
            return typing.get_args(arg)[1]
        if origin in (typing.Union, types.UnionType):
            found = _unwrap(arg, part)
            if found is not None:
                return found
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


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


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = _deep_copy(value)


# connection.yaml key → where it goes in the parameters (only when the file leaves it unset).
_FROM_CONNECTION = {
    "tenant_id": ("environments", "tenant_id"),
    "authority": ("environments", "authority"),
    "ca_bundle": ("environments", "ca_bundle"),
    "dataverse_url": ("environments", "dataverse_url"),
    "finops_url": ("environments", "finops_url"),
    "gateway_url": ("environments", "gateway_url"),
    "lcs_api_url": ("environments", "lcs_api_url"),
    "lcs_project_id": ("environments", "lcs_project_id"),
    "lcs_environment_id": ("environments", "lcs_environment_id"),
    "power_platform_api_url": ("environments", "power_platform_api_url"),
    "client_id": ("auth", "client_id"),
}
# Stand-ins for what a sandbox's connection.yaml supplies while there is none (not started yet):
# the rest of the file is checked against them. Such a load fails, or only checks (see load_params).
_STAND_IN = {
    "tenant_id": "sandbox", "dataverse_url": "https://sandbox.invalid/dataverse",
    "finops_url": "https://sandbox.invalid/finops", "gateway_url": "https://sandbox.invalid/gateway",
    "client_id": "sandbox", "client_secret_file": "sandbox-client-secret",
    "client_certificate_file": __file__,  # any file that exists: only checked, never read
    "client_private_key_file": "sandbox-client-key",
}


def _merge_sandbox(data: dict[str, Any], base: Path, *, pending: bool) -> list[tuple[Loc, str]]:
    """Fill what the file leaves unset from its sandbox's connection.yaml (or stand-ins, see
    `load_params`); the problems: the sandbox not started, or, `pending`, environments the file sets."""
    sandbox = data.get("sandbox")
    if not isinstance(sandbox, dict) or not isinstance(sandbox.get("dir"), str | Path):
        return []
    problems: list[tuple[Loc, str]] = []
    path = (base / Path(sandbox["dir"]).expanduser()).resolve() / "connection.yaml"
    if pending:
        conn: dict[str, Any] = _STAND_IN
        own = data.get("environments")
        own = own if isinstance(own, dict) else {}
        problems += [(("environments", field), "dw run --sandbox runs against a fresh sandbox, whose "
                      "connection.yaml supplies it: remove it, or run without --sandbox")
                     for key, (section, field) in _FROM_CONNECTION.items()
                     if section == "environments" and own.get(field) is not None]
    else:
        try:
            conn = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError):
            conn = _STAND_IN
            problems.append((("sandbox", "dir"), f"{path} not found: start the sandbox first "
                                                 f"(`dw sandbox start --dir {sandbox['dir']}`)"))
    for key, (section, field) in _FROM_CONNECTION.items():
        target = data.setdefault(section, {})
        if isinstance(target, dict) and key in conn:
            target.setdefault(field, conn[key])
    auth = data["auth"] if isinstance(data.get("auth"), dict) else {}
    method = auth.setdefault("method", "client_secret")
    if method == "client_secret":
        auth.setdefault("client_secret", f"file:{conn.get('client_secret_file', '')}")
    elif method == "certificate":
        auth.setdefault("certificate", {"path": conn.get("client_certificate_file"),
                                        "private_key": f"file:{conn.get('client_private_key_file', '')}"})
    return problems
