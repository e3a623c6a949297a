"""`dw doctor`: read, on real environments, what the sandbox emulates without a documented source.

Some behaviours a runbook decision depends on are not documented (docs/fidelity.md, "To verify on
a real environment"): how a map's state shows in `msdyn_dualwriteruntimeconfigs` and F&O
`DualWriteProjectConfigurations`, the shape of `msdyn_mapping`, whether `cdm_companycode` is a key,
the company lookup's navigation property and the bulk messages of each table in scope, the error
of an aggregate over 50,000 rows, what DMF answers for a job it does not know, the shape of
`GetExecutionErrors`, … Each `Read` here is one read-only call that shows one of them; its id is the
one the table names. `examine` makes them all through a run's clients (the same stack, journal and
retries) and, with a directory, records each request and response, redacted, as fixture
candidates: `NN-<read>.request.json`, `NN-<read>.response.json`, and `index.json` listing them.

Redaction: `Authorization`, cookies and any header or JSON key that carries a token or secret
become `***`; so do the values of known personal-data columns (names, e-mail addresses, phone
numbers, street addresses, user principal names) and their annotations; SAS signatures in URLs are
masked; any bearer token or JWT left in a text is scrubbed (`dwlib.secrets.scrub`).

Example:
    >>> redact({"fullname": "Léa Laurent", "access_token": "eyJ0.x.y", "msdyn_name": "DWM-1"})
    {'fullname': '***', 'access_token': '***', 'msdyn_name': 'DWM-1'}
    >>> [r.id for r in READS][:2]
    ['dataverse-link', 'dataverse-solutions']
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from dwlib import catalog
from dwlib.secrets import MASK, scrub

from .clients.errors import ClientError
from .clients.http import redact_url
from .clients.odata import ODataService
from .clients.session import Session

Service = Literal["dataverse", "finops"]
FORMATTED = 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'
DMF = "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."
UNKNOWN_JOB = "{unknown_job}"  # stands for an execution id no job has (one per examination)
JOB = "{execution_id}"  # stands for the `--execution-id` given (reads that need it are skipped without)

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                             "x-ms-client-secret", "ocp-apim-subscription-key"})
_SECRET_KEYS = frozenset({"access_token", "refresh_token", "id_token", "client_secret", "client_assertion",
                          "password", "token", "secret", "sig"})
# Columns of the tables these reads may return that hold personal data (Dataverse and F&O names).
PII_COLUMNS = frozenset(name.lower() for name in (
    "fullname", "firstname", "lastname", "middlename", "nickname", "yomifullname", "emailaddress1",
    "emailaddress2", "emailaddress3", "internalemailaddress", "personalemailaddress", "telephone1",
    "telephone2", "telephone3", "mobilephone", "fax", "domainname", "windowsliveid", "address1_line1",
    "address1_line2", "address1_line3", "address1_composite", "address1_postalcode", "birthdate",
    "PersonFirstName", "PersonLastName", "PersonMiddleName", "PrimaryContactEmail", "PrimaryContactPhone",
    "PrimaryContactFax", "AddressStreet", "AddressZipCode", "FullPrimaryAddress", "upn", "unique_name",
    "preferred_username", "email", "UserPrincipalName", "Email", "NetworkAlias", "createdby", "modifiedby"))
_SAS = re.compile(r"([?&](?:sig|signature)=)[^&\s\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class Read:
    """One read-only call and the unverified behaviour its answer shows."""

    id: str
    service: Service
    verifies: str
    path: str
    method: str = "GET"
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None  # DMF actions: POST with this JSON

    def needs_job(self) -> bool:
        return JOB in json.dumps(self.body or {})


BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
AGGREGATE_LIMIT = 50_000  # rows an $apply may cover (aggregate-data.md)
_RELATIONSHIP_COLUMNS = "ReferencingAttribute,ReferencedEntity,ReferencingEntityNavigationPropertyName"


def _company_tables() -> list[str]:
    """The logical names of the Dataverse tables whose rows the catalogue's maps stripe by company."""
    return list(dict.fromkeys(m.dataverse_logical for m in catalog.table_maps() if m.company_specific))


def _table_reads() -> tuple[Read, ...]:
    """Per table in scope: its company lookup's navigation property, and each bulk message."""
    out = []
    for table in _company_tables():
        out.append(Read(
            f"dataverse-company-navigation-{table}", "dataverse",
            f"the navigation property (and its casing) of {table}'s lookup to cdm_company, which "
            "bootstrap and migrate bind the company through",
            f"EntityDefinitions(LogicalName='{table}')/ManyToOneRelationships",
            params={"$select": _RELATIONSHIP_COLUMNS, "$filter": "ReferencedEntity eq 'cdm_company'"}))
        out += [Read(
            f"dataverse-bulk-{message.lower()}-{table}", "dataverse",
            f"whether {table} takes {message} (a filter listed) or the client sends $batch change sets "
            "(none)",
            "sdkmessagefilters",
            params={"$select": "sdkmessagefilterid",
                    "$filter": "sdkmessageid/name eq @message and primaryobjecttypecode eq @table",
                    "@message": f"'{message}'", "@table": f"'{table}'"}) for message in BULK_MESSAGES]
    return tuple(out)


READS: tuple[Read, ...] = (
    Read("dataverse-link", "dataverse",
         "RetrieveFinanceAndOperationsIntegrationDetails: Url/TenantId/Id when linked; the HTTP status "
         "and code 0x80048d0b when not",
         "RetrieveFinanceAndOperationsIntegrationDetails"),
    Read("dataverse-solutions", "dataverse",
         "the unique names and versions of the dual-write solutions (Dual Write Core's name)",
         "solutions", params={"$select": "uniquename,friendlyname,version,ismanaged",
                              "$filter": "startswith(uniquename,'msdyn_DualWrite') or startswith(uniquename,"
                                         "'DualWrite') or startswith(uniquename,'Dynamics365Company')"}),
    Read("dataverse-runtime-status", "dataverse",
         "msdyn_dualwriteruntimeconfigs: which maps have a row, and msdyn_status with its formatted value "
         "(the map state labels the client reads)",
         "msdyn_dualwriteruntimeconfigs",
         params={"$select": "msdyn_name,msdyn_status,msdyn_internalentityname,msdyn_externalentityname,"
                            "versionnumber", "$top": "50"},
         headers={"Prefer": FORMATTED}),
    Read("dataverse-status-options", "dataverse",
         "the options (values and labels) of msdyn_dualwriteruntimeconfig.msdyn_status",
         "EntityDefinitions(LogicalName='msdyn_dualwriteruntimeconfig')/Attributes(LogicalName='msdyn_status')/"
         "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
         params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}),
    Read("dataverse-entity-map", "dataverse",
         "msdyn_dualwriteentitymaps.msdyn_mapping: entityMappingTasks[].legs[].fieldMappings[]."
         "valueTransforms[] (Default transforms and their defaultValue)",
         "msdyn_dualwriteentitymaps",
         params={"$select": "msdyn_name,msdyn_version,msdyn_mapping", "$top": "1"}),
    Read("dataverse-value-maps", "dataverse",
         "the value transforms (enum value maps) of the live Customers V3 and CDS Contacts V2 maps: "
         "INVOICEADDRESS, gendercode and familystatuscode, which the catalogue could not source",
         "msdyn_dualwriteentitymaps",
         params={"$select": "msdyn_name,msdyn_version,msdyn_mapping",
                 "$filter": "startswith(msdyn_name,'Customers V3') or "
                            "startswith(msdyn_name,'CDS Contacts V2')"}),
    Read("dataverse-company-key", "dataverse",
         "cdm_company's alternate keys: cdm_companycode among them (then no two companies share a code)",
         "EntityDefinitions(LogicalName='cdm_company')/Keys",
         params={"$select": "LogicalName,KeyAttributes,EntityKeyIndexStatus"}),
    *_table_reads(),
    Read("dataverse-aggregate-limit", "dataverse",
         f"the status, code and message of an $apply over more than {AGGREGATE_LIMIT:,} rows (accounts): "
         "verified only where accounts has that many rows; elsewhere the answer is the count",
         "accounts", params={"$apply": "aggregate($count as n)"}),
    Read("finops-project-status", "finops",
         "DualWriteProjectConfigurations: the entity set's name, Status as an enum name (the map state), "
         "IsDelete 'No'/'Yes', two rows per map, PartitionMap (the connection's legal entities)",
         "DualWriteProjectConfigurations",
         params={"$select": "ProjectName,Status,IsDelete,InternalEntityName,ExternalEntityName,"
                            "ExternalEnvironmentURL,PartitionMap", "$top": "50", "cross-company": "true"}),
    Read("finops-source-data-formats", "finops",
         "DataManagementSourceDataFormats and its LanguageLocale: the locale DMF packages are written in "
         "(en-us is what the initial sync needs)",
         "DataManagementSourceDataFormats", params={"$select": "SourceName,Type,LanguageLocale"}),
    Read("finops-page-size", "finops",
         "whether F&O honours Prefer: odata.maxpagesize (one row and a nextLink) or pages by itself",
         "LegalEntities", params={"$select": "LegalEntityId"}, headers={"Prefer": "odata.maxpagesize=1"}),
    Read("dmf-status-unknown", "finops",
         "GetExecutionSummaryStatus of an id no job has: 'Unknown' (the client sends a lost start again "
         "only then)", DMF + "GetExecutionSummaryStatus", "POST", body={"executionId": UNKNOWN_JOB}),
    Read("dmf-errors-unknown", "finops",
         "GetExecutionErrors of an id no job has: the shape of an empty answer",
         DMF + "GetExecutionErrors", "POST", body={"executionId": UNKNOWN_JOB}),
    Read("dmf-job-status", "finops", "GetExecutionSummaryStatus of a real job (--execution-id)",
         DMF + "GetExecutionSummaryStatus", "POST", body={"executionId": JOB}),
    Read("dmf-job-errors", "finops",
         "GetExecutionErrors of a real job (--execution-id, best one that failed): the shape of its list",
         DMF + "GetExecutionErrors", "POST", body={"executionId": JOB}),
    Read("dmf-job-package", "finops",
         "GetExportedPackageUrl of a real export job (--execution-id): a string or the documented nested "
         "{\"value\": …}", DMF + "GetExportedPackageUrl", "POST", body={"executionId": JOB}),
)


@dataclass
class Outcome:
    """What one read got: the HTTP status (None when no answer came) and the files it was saved in."""

    read: Read
    status: int | None
    error: str = ""
    request_file: str = ""
    response_file: str = ""


def examine(session: Session, record: Path | None = None, *, execution_id: str | None = None,
            reads: Sequence[Read] = READS) -> list[Outcome]:
    """Make every read (those about a real job only with `execution_id`); with `record`, save each
    request and response there, redacted, with `index.json`.

    with connect(load_params("params/my-engagement.yaml")) as s: examine(s, Path("doctor"))
    """
    values = {UNKNOWN_JOB: f"dw-doctor-{uuid.uuid4()}", JOB: execution_id or ""}
    services: dict[Service, ODataService] = {"dataverse": session.dataverse, "finops": session.finops}
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for n, read in enumerate((r for r in reads if execution_id or not r.needs_job()), start=1):
        body = _fill(read.body, values)
        response: httpx.Response | None = None
        try:
            response = services[read.service].send(
                read.method, read.path, safe=True, check=False, params=dict(read.params),
                headers=dict(read.headers), **({"json": body} if body is not None else {}))
            outcome = Outcome(read, response.status_code)
        except ClientError as exc:  # no answer at all: recorded as such
            outcome = Outcome(read, None, error=str(exc))
        if record is not None:
            stem = f"{n:02d}-{read.id}"
            outcome.request_file, outcome.response_file = f"{stem}.request.json", f"{stem}.response.json"
            _write(record / outcome.request_file, _request(read, body, response, services[read.service]))
            _write(record / outcome.response_file, _response(response) if response is not None else
                   {"status": None, "error": outcome.error})
        outcomes.append(outcome)
    if record is not None:
        _write(record / "index.json", index(session, outcomes))
    return outcomes


def index(session: Session, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """`index.json`: when, against which environments, and per read what it verifies and its files."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "environments": {"dataverse": redact_url(httpx.URL(session.dataverse.root)),
                         "finops": redact_url(httpx.URL(session.finops.root))},
        "redacted": "Authorization, cookies, tokens and secrets; personal-data columns; SAS signatures",
        "reads": [{"id": o.read.id, "service": o.read.service, "verifies": o.read.verifies,
                   "status": o.status, "error": o.error, "request": o.request_file,
                   "response": o.response_file} for o in outcomes],
    }


def redact(value: Any, key: str = "") -> Any:
    """`value` (a JSON document) without secrets, tokens or personal data (see the module docstring)."""
    name = key.split("@", 1)[0].lower()
    if key and (name in _SECRET_KEYS or name in PII_COLUMNS or key.lower().lstrip("_") in PII_COLUMNS):
        return MASK if value not in (None, "", [], {}) else value
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    return value


def _redact_text(text: str) -> str:
    text = _SAS.sub(lambda m: m.group(1) + MASK, scrub(text))
    # A JSON document inside a string (GetAzureWriteUrl, GetExecutionErrors, msdyn_mapping): redact it too.
    if text[:1] in "[{":
        try:
            return json.dumps(redact(json.loads(text)))
        except ValueError:
            pass
    return text


def _headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: MASK if k.lower() in _SECRET_HEADERS or "token" in k.lower() else scrub(v)
            for k, v in headers.items()}


def _request(read: Read, body: Any, response: httpx.Response | None, service: ODataService) -> dict[str, Any]:
    if response is not None:
        sent = response.request
        url, headers = redact_url(sent.url), _headers(sent.headers)
    else:
        url, headers = redact_url(httpx.URL(service.url(read.path), params=dict(read.params))), {}
    return {"method": read.method, "url": _redact_text(url), "headers": headers, "body": redact(body)}


def _response(response: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = response.json() if response.content else None
    except ValueError:
        body = response.text[:10_000]
    return {"status": response.status_code, "headers": _headers(response.headers), "body": redact(body)}


def _fill(body: Mapping[str, Any] | None, values: Mapping[str, str]) -> dict[str, Any] | None:
    if body is None:
        return None
    return {k: values.get(v, v) if isinstance(v, str) else v for k, v in body.items()}


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def summary(outcomes: Sequence[Outcome]) -> str:
    """One line per read: its status and what it verifies.

    >>> summary([Outcome(READS[0], 200)])
    '200  dataverse-link: RetrieveFinanceAndOperationsIntegrationDetails: Url/TenantId/Id when linked; \
the HTTP status and code 0x80048d0b when not'
    """
    return "\n".join(f"{o.status or 'none':<4} {o.read.id}: {o.read.verifies}" for o in outcomes)

