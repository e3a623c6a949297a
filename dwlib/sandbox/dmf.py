"""F&O data management (DMF) package API: OData actions, asynchronous jobs, a SAS-like blob endpoint.

The actions (api-surface §4) are `POST {finops_url}/data/DataManagementDefinitionGroups/
Microsoft.Dynamics.DataEntities.{Action}` with a JSON body; `DmfService.call` implements them and
`finops.py` routes to it. Import: `GetAzureWriteUrl` → `PUT` the package to the blob URL →
`ImportFromPackage` → poll `GetExecutionSummaryStatus` → `GetExecutionErrors`. Export:
`ExportToPackage` → poll → `GetExportedPackageUrl` (empty until done) → `GET` the blob.

Packages are zip files with `Manifest.xml`, `PackageHeader.xml` and one `{entity label}.csv` per
entity: CSV-Unicode (UTF-16 LE with BOM, CRLF, `"` qualifier), header row of upper-case field
names, no `DATAAREAID` column (the company is the call's `legalEntityId`). Jobs run one at a time
(one batch thread), as asyncio tasks that advance in chunks, and persist in the store under
`dmf.job.<executionId>`, so history survives a restart and unfinished jobs resume.

`ImportFromPackage` "must not be called in parallel" (data-management-api.md): a new import is
refused while another import job is NotRun or Executing. `ExportToPackage` and
`GetExportedPackageUrl` answer the nested `{"value": {"value": …}}` of the documented samples.

Blob URLs are `{base}/blob/dmf/{name}?sv=…&sr=b&sp=r|rw&se=<expiry>&sig=<HMAC>`; the key derives
from `identity.key`. Errors are Azure Storage XML bodies (403 `AuthenticationFailed`, 400
`MissingRequiredHeader` for a PUT without `x-ms-blob-type: BlockBlob`, 404 `BlobNotFound`).

Example:
    >>> DMF_ENTITIES["CustomersV3"].label, DMF_ENTITIES["CustomersV3"].fields[:2]
    ('Customers V3', ['CUSTOMERACCOUNT', 'PARTYTYPE'])
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
import logging
import re
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..catalog.locales import Locale, LocaleError, locale
from . import fo_rules
from .context import Sandbox
from .odata import ODataError, WriteEvent, run_write_hooks
from .schema import ENTITIES, Entity
from .store import Store, read_sql, utcnow

ACTION_PREFIX = "Microsoft.Dynamics.DataEntities."
_TERMINAL = {"Succeeded", "PartiallySucceeded", "Failed", "Canceled"}
SAS_TTL_S = 3600
SAS_VERSION = "2021-08-06"
CHUNK_ROWS = 2000  # rows per job step; the event loop serves other requests between steps
_NS = "http://schemas.microsoft.com/dynamics/2015/01/DataManagement"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_GROUPS_KEY = "dmf.definition_groups"
_JOB_PREFIX = "dmf.job."
log = logging.getLogger("dwlib.sandbox.dmf")


_IMPORT_RUNNING = {"NotRun", "Executing"}


class DmfError(Exception):
    """An action call F&O refuses (bad parameters); `finops.py` renders it as its error body.

    >>> DmfError("The parameter executionId is missing", 400).status
    400
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def nested(value: str) -> dict[str, str]:
    """The documented shape of ExportToPackage's and GetExportedPackageUrl's `value`.

    >>> nested("exec-1")
    {'value': 'exec-1'}
    """
    return {"value": value}


# --- entities -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmfEntity:
    """An F&O entity as DMF names it: label (file and manifest name) and target (AOT entity).

    Imports check rows with the F&O table rules of `fo_rules`, like every F&O write.

    >>> DMF_ENTITIES["Currencies"].fields, DMF_ENTITIES["Currencies"].target
    (['CURRENCYCODE', 'NAME', 'SYMBOL'], 'CurrencyEntity')
    """

    entity: Entity
    label: str

    @property
    def target(self) -> str:
        """The AOT entity (`TargetEntity` in manifests)."""
        return fo_rules.table(self.entity)

    @property
    def company_specific(self) -> bool:
        """Whether rows belong to a company (keyed by `dataAreaId`)."""
        return "dataAreaId" in self.entity.key

    @property
    def columns(self) -> list[str]:
        """Schema columns carried in packages (all but `dataAreaId`)."""
        return [c for c in self.entity.columns if c != "dataAreaId"]

    @property
    def fields(self) -> list[str]:
        """The package's field names (CSV header), upper case like DMF's."""
        return [c.upper() for c in self.columns]


DMF_ENTITIES: dict[str, DmfEntity] = {name: DmfEntity(ENTITIES[name], label) for name, label in (
    ("LegalEntities", "Legal entities"), ("Currencies", "Currencies"), ("PaymentTerms", "Terms of payment"),
    ("CustomerGroups", "Customer groups"), ("CustomersV3", "Customers V3"), ("VendorsV2", "Vendors V2"))}
PACKAGE_FORMAT = "CSV-Unicode"  # the source data format of every package here


def package_locale(store: Store, source_format: str = PACKAGE_FORMAT, *,
                   user_locale: str = "en-us") -> Locale:
    """The locale packages of `source_format` are written and read in: the format's Language locale
    (Data management > Source data formats > Regional settings), else the DMF user's own locale
    (INFERRED: the docs say only that the format's setting decides; the sandbox's `dmf_locale`).

    >>> import tempfile, pathlib
    >>> package_locale(Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite"), user_locale="nl-NL").name
    'nl-nl'
    """
    rows = store.find(ENTITIES["DataManagementSourceDataFormats"], {"SourceName": source_format}, limit=1)
    name = (rows[0].get("LanguageLocale") if rows else None) or user_locale
    try:
        return locale(name)
    except LocaleError as exc:
        raise DmfError(f"Source data format {source_format}: {exc}") from None


def find_entity(name: str) -> DmfEntity | None:
    """A DMF entity by label, target or entity-set name, case-insensitively.

    >>> find_entity("customers v3").target, find_entity("Vendors") is None
    ('CustCustomerV3Entity', True)
    """
    key = name.strip().lower()
    for d in DMF_ENTITIES.values():
        if key in (d.label.lower(), d.target.lower(), d.entity.name.lower()):
            return d
    return None


# --- definition groups (data projects) ------------------------------------------------------------


def seed_definition_groups(store: Store) -> int:
    """Create the data projects every F&O has here; returns how many.

    One `{Entity}-Export` and `{Entity}-Import` per DMF entity, plus `CustomerMaster-Export` /
    `-Import` with terms of payment, customer groups and Customers V3 in dependency order.

    >>> import tempfile, pathlib
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> seed_definition_groups(st) == 2 * len(DMF_ENTITIES) + 2
    True
    """
    groups: dict[str, Any] = {}
    for name in DMF_ENTITIES:
        for op in ("Export", "Import"):
            groups[f"{name}-{op}"] = {"operation": op, "entities": [name]}
    for op in ("Export", "Import"):
        groups[f"CustomerMaster-{op}"] = {"operation": op,
                                          "entities": ["PaymentTerms", "CustomerGroups", "CustomersV3"]}
    store.kv_set(_GROUPS_KEY, groups)
    return len(groups)


# --- packages -------------------------------------------------------------------------------------


def manifest_xml(group: str, entities: list[DmfEntity], operation: str) -> str:
    """`Manifest.xml` of a package: the definition group and one entry per entity, with field maps.

    >>> "<EntityName>Currencies</EntityName>" in manifest_xml("G", [DMF_ENTITIES["Currencies"]], "Export")
    True
    """
    parts = []
    for seq, d in enumerate(entities, 1):
        maps = "".join(f"<EntityMap><EntityField>{f}</EntityField><XMLField>{f}</XMLField></EntityMap>"
                       for f in d.fields)
        parts.append(
            "<DataManagementPackageEntityData><DefaultRefreshType>FullPush</DefaultRefreshType>"
            f"<Disable>false</Disable><EntityMapList>{maps}</EntityMapList>"
            f"<EntityName>{escape(d.label)}</EntityName><ExecutionUnit>1</ExecutionUnit>"
            f"<InputFilePath>{escape(d.label)}.csv</InputFilePath><LevelInExecutionUnit>{seq}</LevelInExecutionUnit>"
            f"<SequenceInLevel>1</SequenceInLevel><SourceFormat>CSV-Unicode</SourceFormat>"
            f"<TargetEntity>{d.target}</TargetEntity></DataManagementPackageEntityData>")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n<DataManagementPackageManifest '
        f'xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="{_NS}">'
        f"<DefinitionGroupName>{escape(group)}</DefinitionGroupName><Description>{escape(group)}</Description>"
        f"<OperationType>{operation}</OperationType><PackageEntityList>{''.join(parts)}</PackageEntityList>"
        "</DataManagementPackageManifest>")


def header_xml(group: str) -> str:
    """`PackageHeader.xml` of a package (the fixed DMF boilerplate).

    >>> "<PackageType>DefinitionGroup</PackageType>" in header_xml("G")
    True
    """
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n<DataManagementPackageHeader '
        f'xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="{_NS}">'
        f"<Description>{escape(group)}</Description><ManifestType>Microsoft.Dynamics.AX.Framework.Tools."
        "DataManagement.Serialization.DataManagementPackageManifest</ManifestType>"
        "<PackageType>DefinitionGroup</PackageType><PackageVersion>2</PackageVersion></DataManagementPackageHeader>")


def _cell(value: Any, typ: str, loc: Locale) -> str:
    """A stored value as package text: numbers and ISO dates in the locale, text as it is."""
    if value is None:
        return ""
    if typ == "decimal" and isinstance(value, int | float):
        return loc.format_number(value)
    if typ == "datetime" and re.match(r"\d{4}-\d\d-\d\d", str(value)):
        return loc.format_date(str(value))
    return str(value)


def write_package(
    path: Path, group: str, parts: list[tuple[DmfEntity, Iterator[list[Any]]]], loc: Locale | None = None
) -> Iterator[tuple[DmfEntity, int]]:
    """Write a package zip to `path` step by step; yields after each chunk: (entity, its rows so far).

    `parts` holds each entity with its rows as lists of values in `DmfEntity.columns` order; numbers
    and dates are written in `loc` (the source data format's Language locale, default en-us).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.zip"
    >>> cur = DMF_ENTITIES["Currencies"]
    >>> [n for _, n in write_package(path, "G", [(cur, iter([["USD", "US Dollar", "$"]]))])]
    [1]
    >>> read_package(path.read_bytes())[1][0].rows
    [['USD', 'US Dollar', '$']]
    """
    loc = loc or locale("en-us")
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("PackageHeader.xml", header_xml(group))
        zf.writestr("Manifest.xml", manifest_xml(group, [d for d, _ in parts], "Export"))
        for d, rows in parts:
            with zf.open(f"{d.label}.csv", "w") as raw:
                raw.write(b"\xff\xfe")  # CSV-Unicode: UTF-16 LE with a byte order mark
                text = io.TextIOWrapper(raw, encoding="utf-16-le", newline="")
                out = csv.writer(text, lineterminator="\r\n")
                out.writerow(d.fields)
                written = 0
                types = [d.entity.columns[c] for c in d.columns]
                while chunk := [r for _, r in zip(range(CHUNK_ROWS), rows, strict=False)]:
                    out.writerows([_cell(v, t, loc) for v, t in zip(row, types, strict=True)]
                                  for row in chunk)
                    written += len(chunk)
                    text.flush()
                    yield d, written
                text.flush()
                text.detach()
    tmp.replace(path)


@dataclass
class PackageEntity:
    """One entity of an uploaded package: its DMF entity, CSV column → schema column, the rows.

    >>> PackageEntity(DMF_ENTITIES["Currencies"], {"CURRENCYCODE": "CurrencyCode"}, [["USD"]]).rows
    [['USD']]
    """

    dmf: DmfEntity
    fields: dict[str, str]  # CSV column → schema column
    rows: list[list[str]]


def read_package(data: bytes) -> tuple[str, list[PackageEntity]]:
    """Parse a package zip: definition group name and its entities in execution order.

    Raises DmfError with what is wrong (not a zip, no manifest, unknown entity, not Unicode, …);
    see `write_package` for an example.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        manifest = ElementTree.fromstring(zf.read("Manifest.xml"))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as exc:
        raise DmfError(f"The package is not a data package (a zip with Manifest.xml): {exc}") from None
    ns = {"d": _NS}
    group = manifest.findtext("d:DefinitionGroupName", "", ns)
    entries = []
    for node in manifest.iterfind("d:PackageEntityList/d:DataManagementPackageEntityData", ns):
        name = node.findtext("d:EntityName", "", ns)
        dmf = find_entity(name)
        if dmf is None:
            raise DmfError(f"Entity {name} does not exist in the target environment.")
        fmt = node.findtext("d:SourceFormat", "CSV-Unicode", ns)
        if fmt != "CSV-Unicode":
            raise DmfError(f"Source data format {fmt} of entity {name} is not supported here: use "
                           "CSV-Unicode.")
        path = node.findtext("d:InputFilePath", f"{name}.csv", ns)
        maps = {m.findtext("d:XMLField", "", ns).upper(): m.findtext("d:EntityField", "", ns).upper()
                for m in node.iterfind("d:EntityMapList/d:EntityMap", ns)}
        order = tuple(int(node.findtext(f"d:{k}", "0", ns) or 0)
                      for k in ("ExecutionUnit", "LevelInExecutionUnit", "SequenceInLevel"))
        entries.append((order, dmf, path, maps))
    entries.sort(key=lambda e: e[0])
    out = []
    for _, dmf, path, maps in entries:
        try:
            raw = zf.read(path)
        except KeyError:
            raise DmfError(f"The package has no file {path} for entity {dmf.label}.") from None
        if not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DmfError(f"Selected file is not Unicode: {path} (CSV-Unicode is UTF-16 with a byte "
                           "order mark).")
        reader = csv.reader(io.StringIO(raw.decode("utf-16"), newline=""))
        header = [h.strip().upper() for h in next(reader, [])]
        by_field = {f: c for f, c in zip(dmf.fields, dmf.columns, strict=True)}
        fields = {}
        for h in header:
            target = maps.get(h, h)
            if target not in by_field:
                raise DmfError(f"The mapping is incorrect for entity {dmf.label} and field {h}: "
                               f"use the entity's fields {', '.join(dmf.fields)}.")
            fields[h] = by_field[target]
        out.append(PackageEntity(dmf, fields, [r for r in reader if any(c.strip() for c in r)]))
    return group, out


# --- blobs ----------------------------------------------------------------------------------------


class BlobAuthError(Exception):
    """A blob request Azure Storage would refuse; `code`/`status` as the service sends them.

    >>> BlobAuthError("BlobNotFound", "The specified blob does not exist.", 404).status
    404
    """

    def __init__(self, code: str, message: str, status: int, detail: str = "", header: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.detail, self.header = code, message, status, detail, header


class Blobs:
    """The local "storage account": files under `DIR/blobs/`, URLs signed like a service SAS.

    >>> import tempfile, pathlib
    >>> b = Blobs(pathlib.Path(tempfile.mkdtemp()), b"k" * 32, "https://127.0.0.1:1")
    >>> url = b.url("p.zip", "rw"); b.check("p.zip", urlsplit(url).query, "w") is None
    True
    """

    def __init__(self, root: Path, key: bytes, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        root.mkdir(parents=True, exist_ok=True)
        # A key of its own, derived from the identity key: a SAS never reveals the token key.
        self._key = hmac.new(key, b"dmf-blob-sas", hashlib.sha256).digest()

    def path(self, name: str) -> Path:
        """Where blob `name` is stored; BlobAuthError for a name that is not a plain file name."""
        if not _NAME_RE.match(name) or ".." in name:
            raise BlobAuthError("InvalidResourceName", "The specified resource name contains invalid "
                                "characters.", 400)
        return self.root / name

    def _sign(self, name: str, perms: str, expiry: str) -> str:
        text = f"{perms}\n{expiry}\n/blob/dmf/{name}\n{SAS_VERSION}".encode()
        return base64.b64encode(hmac.new(self._key, text, hashlib.sha256).digest()).decode()

    def url(self, name: str, perms: str = "r", ttl_s: float = SAS_TTL_S) -> str:
        """A signed URL for blob `name`, valid `ttl_s` seconds, with permissions `r` or `rw`."""
        self.path(name)
        expiry = (datetime.now(UTC) + timedelta(seconds=ttl_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = self._sign(name, perms, expiry)
        return (f"{self.base_url}/blob/dmf/{quote(name)}?sv={SAS_VERSION}&sr=b&sp={perms}"
                f"&se={quote(expiry, safe='')}&sig={quote(sig, safe='')}")

    def check(self, name: str, query: str, need: str) -> None:
        """Raise BlobAuthError unless `query` is a valid, unexpired SAS for `name` granting `need`."""
        q = {k: v[0] for k, v in parse_qs(query).items()}
        perms, expiry, sig = q.get("sp", ""), q.get("se", ""), q.get("sig", "")
        if not sig or not hmac.compare_digest(sig, self._sign(name, perms, expiry)):
            raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED, 403,
                                "Signature did not match. String to sign used was " + perms)
        try:
            expires = datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED, 403, "se is malformed") from None
        if expires <= datetime.now(UTC):
            raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED, 403,
                                f"Signed expiry time [{format_datetime(expires, usegmt=True)}] must be after "
                                f"signed start time [{format_datetime(datetime.now(UTC), usegmt=True)}]")
        if need not in perms:
            raise BlobAuthError("AuthorizationPermissionMismatch", "This request is not authorized to "
                                "perform this operation using this permission.", 403)

    def name_of(self, url: str) -> str:
        """The blob name of one of this store's URLs (DmfError for a foreign or unsigned URL)."""
        parts = urlsplit(url)
        prefix = urlsplit(self.base_url)
        if parts.netloc != prefix.netloc or not parts.path.startswith("/blob/dmf/"):
            raise DmfError(f"packageUrl {parts.scheme}://{parts.netloc}{parts.path} is not a blob URL of "
                           "this environment: upload the package to the URL GetAzureWriteUrl returned.")
        name = parts.path.removeprefix("/blob/dmf/")
        try:
            self.check(name, parts.query, "r")
        except BlobAuthError as exc:
            raise DmfError(f"The package could not be downloaded: {exc.message} {exc.detail}") from None
        return name


_AUTH_FAILED = ("Server failed to authenticate the request. Make sure the value of Authorization header is "
                "formed correctly including the signature.")


def _storage_error(exc: BlobAuthError) -> Response:
    request_id = str(uuid.uuid4())
    extra = f"<AuthenticationErrorDetail>{escape(exc.detail)}</AuthenticationErrorDetail>" * bool(exc.detail)
    extra += f"<HeaderName>{exc.header}</HeaderName>" * bool(exc.header)
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{exc.code}</Code>'
            f"<Message>{escape(exc.message)}\nRequestId:{request_id}\nTime:{datetime.now(UTC).isoformat()}</Message>{extra}</Error>")
    return Response(body, status_code=exc.status, media_type="application/xml",
                    headers={"x-ms-error-code": exc.code, "x-ms-request-id": request_id,
                             "x-ms-version": SAS_VERSION})


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """The blob endpoint `/blob/dmf/{name}` (PUT BlockBlob, GET); also creates `sbx.extras["dmf"]`.

    server.py: Starlette(routes=[*dmf.routes(sbx), ...])
    """
    service = service_of(sbx)

    async def blob(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            path = service.blobs.path(name)
            service.blobs.check(name, request.url.query, "w" if request.method == "PUT" else "r")
            if request.method == "PUT":
                kind = request.headers.get("x-ms-blob-type")
                if kind is None:
                    raise BlobAuthError("MissingRequiredHeader", "An HTTP header that's mandatory for this "
                                        "request is not specified.", 400, header="x-ms-blob-type")
                if kind != "BlockBlob":
                    raise BlobAuthError("InvalidHeaderValue", "The value for one of the HTTP headers is not "
                                        "in the correct format.", 400, header="x-ms-blob-type")
                data = await request.body()
                tmp = path.with_name(f".{name}.{uuid.uuid4().hex}")
                tmp.write_bytes(data)
                tmp.replace(path)
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                return Response(status_code=201, headers={**_blob_headers(path), "Content-MD5": md5,
                                                          "x-ms-request-server-encrypted": "true"})
            if not path.is_file():
                raise BlobAuthError("BlobNotFound", "The specified blob does not exist.", 404)
            return Response(path.read_bytes(), media_type="application/octet-stream",
                            headers={**_blob_headers(path), "x-ms-blob-type": "BlockBlob"})
        except BlobAuthError as exc:
            return _storage_error(exc)

    return [Route("/blob/dmf/{name}", blob, methods=["GET", "PUT"])]


def _blob_headers(path: Path) -> dict[str, str]:
    st = path.stat()
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return {"ETag": f'"0x{st.st_mtime_ns:X}{st.st_size:X}"',
            "Last-Modified": format_datetime(modified, usegmt=True), "x-ms-version": SAS_VERSION,
            "x-ms-request-id": str(uuid.uuid4())}


# --- jobs -----------------------------------------------------------------------------------------


def service_of(sbx: Sandbox) -> DmfService:
    """The sandbox's one DmfService (created on first use, kept in `sbx.extras["dmf"]`).

    service_of(sbx).call("Microsoft.Dynamics.DataEntities.GetExecutionSummaryStatus",
                         {"executionId": "x"})["value"]  → 'Unknown'
    """
    if "dmf" not in sbx.extras:
        sbx.extras["dmf"] = DmfService(sbx)
    svc: DmfService = sbx.extras["dmf"]
    return svc


def _blob_stem(execution_id: str) -> str:
    # Execution ids are free text; blob names are not.
    return hashlib.sha256(execution_id.encode()).hexdigest()[:20]


class DmfService:
    """The DMF actions and the job queue of one sandbox.

    Jobs run one after another (`NotRun` while queued), each in chunks of `CHUNK_ROWS` rows with
    `step_delay_s` between chunks, so clients see `Executing` and the server stays responsive.

    svc = service_of(sbx); svc.call(ACTION_PREFIX + "ExportToPackage", {...})
    """

    step_delay_s = 0.02
    max_errors = 10_000  # errors kept per job for GetExecutionErrors (all are counted)

    def __init__(self, sbx: Sandbox) -> None:
        self.sbx = sbx
        self.store = sbx.store
        self.blobs = Blobs(sbx.paths.blobs, sbx.paths.identity_key.read_bytes(), sbx.base_url)
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resumed = False
        self.actions: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {  # name → (type, handler)
            "GetAzureWriteUrl": ("Edm.String", self._get_azure_write_url),
            "ImportFromPackage": ("Edm.String", self._import_from_package),
            "ExportToPackage": ("Edm.String", self._export_to_package),
            "GetExportedPackageUrl": ("Edm.String", self._get_exported_package_url),
            "GetExecutionSummaryStatus": ("Microsoft.Dynamics.DataEntities.DMFExecutionSummaryStatus",
                                          self._get_execution_summary_status),
            "GetExecutionErrors": ("Edm.String", self._get_execution_errors),
            "GetImportStagingErrorFileUrl": ("Edm.String", self._get_import_staging_error_file_url),
        }

    # --- entry point ------------------------------------------------------------------------------

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run `action` (`Microsoft.Dynamics.DataEntities.<name>`) with JSON `body`; the response body.

        Raises DmfError (→ an F&O error response) for an unknown action or bad parameters.
        """
        self._resume()
        name = action.removeprefix(ACTION_PREFIX)
        entry = self.actions.get(name) if action.startswith(ACTION_PREFIX) else None
        if entry is None:
            raise DmfError(f"No action {action} on DataManagementDefinitionGroups: call "
                           f"{ACTION_PREFIX}<action> with one of {', '.join(self.actions)}.", 404)
        kind, handler = entry
        return {"@odata.context": f"{self.sbx.finops_url}/data/$metadata#{kind}", "value": handler(body)}

    # --- actions ----------------------------------------------------------------------------------

    def _get_azure_write_url(self, body: dict[str, Any]) -> str:
        name = _param(body, "uniqueFileName")
        try:
            url = self.blobs.url(name, "rw")
        except BlobAuthError:
            raise DmfError(f"uniqueFileName {name!r} is not a valid blob name: use letters, digits, '.', '-' "
                           "and '_'.") from None
        # Double-encoded, as the real action returns it: the value is a JSON document as a string.
        return json.dumps({"BlobId": "{" + str(uuid.uuid4()).upper() + "}", "BlobUrl": url})

    def _import_from_package(self, body: dict[str, Any]) -> str:
        name = self.blobs.name_of(_param(body, "packageUrl"))
        group = _param(body, "definitionGroupId")
        if body.get("execute", True) is not True:
            raise DmfError("execute=false (staging only) is not emulated by the sandbox: send execute true.")
        company = self._company(body)
        execution_id, fresh = self._execution_id(body, "Import", group, company, reexecute=False)
        if fresh:
            self._refuse_parallel_import()
            self._start(self._new_job(execution_id, "Import", group, company, package=name))
        return execution_id

    def _refuse_parallel_import(self) -> None:
        """ImportFromPackage runs in a batch and "must not be called in parallel": refuse a new
        import while another one is queued or running (the wording is the sandbox's)."""
        for key in self.store.kv_keys(_JOB_PREFIX):
            job = self.store.kv_get(key)
            if job["operation"] == "Import" and job["status"] in _IMPORT_RUNNING:
                raise DmfError(
                    f"Another import is in progress: job {job['executionId']} of data project "
                    f"{job['definitionGroupId']} is {job['status']}. ImportFromPackage must not be called "
                    "in parallel; call it again when that job has finished.")

    def _export_to_package(self, body: dict[str, Any]) -> dict[str, str]:
        group = _param(body, "definitionGroupId")
        project = self.groups().get(group)
        if project is None or project["operation"] != "Export":
            known = sorted(g for g, p in self.groups().items() if p["operation"] == "Export")
            raise DmfError(f"Export data project {group} does not exist: create it in Data management, or "
                           f"use one of {', '.join(known)}.")
        package_name = _param(body, "packageName")
        company = self._company(body)
        execution_id, fresh = self._execution_id(body, "Export", group, company,
                                                 reexecute=bool(body.get("reExecute", False)))
        if fresh:
            self._start(self._new_job(execution_id, "Export", group, company,
                                      package=f"export-{_blob_stem(execution_id)}.zip",
                                      package_name=package_name))
        return nested(execution_id)

    def _get_exported_package_url(self, body: dict[str, Any]) -> dict[str, str]:
        job = self.job(_param(body, "executionId"))
        if job is None or job["operation"] != "Export" or job["status"] != "Succeeded":
            return nested("")
        return nested(self.blobs.url(job["package"], "r"))

    def _get_execution_summary_status(self, body: dict[str, Any]) -> str:
        job = self.job(_param(body, "executionId"))
        return "Unknown" if job is None else str(job["status"])

    def _get_execution_errors(self, body: dict[str, Any]) -> str:
        job = self.job(_param(body, "executionId"))
        return json.dumps([] if job is None else job["errors"])

    def _get_import_staging_error_file_url(self, body: dict[str, Any]) -> str:
        job = self.job(_param(body, "executionId"))
        dmf = find_entity(_param(body, "entityName"))
        if job is None or dmf is None:
            return ""
        name = _error_file(job["executionId"], dmf)
        return self.blobs.url(name, "r") if self.blobs.path(name).is_file() else ""

    # --- projects, jobs -----------------------------------------------------------------------------

    def groups(self) -> dict[str, Any]:
        """The data projects: name → {"operation": "Export"|"Import", "entities": [entity sets]}."""
        groups: dict[str, Any] = self.store.kv_get(_GROUPS_KEY, {})
        return groups

    def job(self, execution_id: str) -> dict[str, Any] | None:
        """The persisted state of a job (see docs/sandbox.md), or None."""
        job: dict[str, Any] | None = self.store.kv_get(_JOB_PREFIX + execution_id)
        return job

    def _save(self, job: dict[str, Any]) -> None:
        self.store.kv_set(_JOB_PREFIX + job["executionId"], job)

    def _company(self, body: dict[str, Any]) -> str:
        code = str(body.get("legalEntityId") or "DAT").upper()
        if not self.store.find(ENTITIES["LegalEntities"], {"LegalEntityId": code}, limit=1):
            raise DmfError(f"Legal entity {code} does not exist: use a LegalEntityId of /data/LegalEntities.")
        return code

    def _execution_id(self, body: dict[str, Any], operation: str, group: str, company: str,
                      reexecute: bool) -> tuple[str, bool]:
        """The job's id, and whether a job starts: a repeated start of a job that exists (same
        operation, project and company — a client repeating a start whose answer it lost) returns
        its id without a second job; re-executing a finished job runs it again under the same id."""
        execution_id = str(body.get("executionId") or "")
        if not execution_id:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
            return f"{group}-{stamp}-{str(uuid.uuid4()).upper()}", True
        old = self.job(execution_id)
        if old is None:
            return execution_id, True
        if (old["operation"], old["definitionGroupId"], old["legalEntityId"]) != (operation, group, company):
            raise DmfError(f"Execution {execution_id} already exists for {old['operation']} of "
                           f"{old['definitionGroupId']} in {old['legalEntityId']}: pass a new executionId "
                           "(or none to get one).")
        return execution_id, reexecute and old["status"] in _TERMINAL

    def _new_job(
        self, execution_id: str, operation: str, group: str, company: str, **extra: Any
    ) -> dict[str, Any]:
        job = {"executionId": execution_id, "operation": operation, "definitionGroupId": group,
               "legalEntityId": company, "status": "NotRun", "createdOn": utcnow(), "startedOn": None,
               "finishedOn": None, "entities": {}, "errorCount": 0, "errors": [], **extra}
        self._save(job)
        return job

    def _resume(self) -> None:
        """After a restart: queue again the jobs that had not finished (needs the running loop)."""
        if self._resumed:
            return
        self._resumed = True
        for key in self.store.kv_keys(_JOB_PREFIX):
            job = self.store.kv_get(key)
            if job["status"] not in _TERMINAL:
                job.update(status="NotRun", entities={}, errors=[], errorCount=0, startedOn=None)
                self._save(job)
                self._start(job)

    def _start(self, job: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job["executionId"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, execution_id: str) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        await asyncio.sleep(self.step_delay_s)
        async with self._lock:
            job = self.job(execution_id)
            if job is None:
                return
            job.update(status="Executing", startedOn=utcnow())
            self._save(job)
            try:
                steps = self._import(job) if job["operation"] == "Import" else self._export(job)
                for _ in steps:
                    self._save(job)
                    await asyncio.sleep(self.step_delay_s)
                done = sum(s.get("created", 0) + s.get("updated", 0) + s.get("exported", 0)
                           for s in job["entities"].values())
                job["status"] = outcome(job["errorCount"], done)
            except DmfError as exc:
                self._error(job, "", 0, "", exc.message)
                job["status"] = "Failed"
            except Exception as exc:  # a bug must not leave the job Executing for ever
                log.exception("DMF job %s failed", execution_id)
                self._error(job, "", 0, "", f"The job stopped on an unexpected error: {exc!r}")
                job["status"] = "Failed"
            job["finishedOn"] = utcnow()
            self._save(job)

    def _locale(self) -> Locale:
        return package_locale(self.store, user_locale=self.sbx.settings.dmf_locale)

    def _error(self, job: dict[str, Any], entity: str, line: int, key: str, message: str) -> None:
        job["errorCount"] += 1
        if len(job["errors"]) < self.max_errors:
            job["errors"].append({"EntityName": entity, "LineNumber": line, "RecordKey": key,
                                  "ErrorMessage": message})

    # --- export ---------------------------------------------------------------------------------------

    def _export(self, job: dict[str, Any]) -> Iterator[None]:
        group = job["definitionGroupId"]
        project = self.groups().get(group)
        if project is None:
            raise DmfError(f"Export data project {group} was deleted while the job waited.")
        parts = [(DMF_ENTITIES[name], self._rows(DMF_ENTITIES[name], job["legalEntityId"]))
                 for name in project["entities"]]
        job["entities"] = {d.label: {"status": "Executing", "exported": 0} for d, _ in parts}
        loc = self._locale()
        for d, written in write_package(self.blobs.path(job["package"]), group, parts, loc):
            job["entities"][d.label]["exported"] = written
            yield
        for stats in job["entities"].values():
            stats["status"] = "Succeeded"

    def _rows(self, d: DmfEntity, company: str) -> Iterator[list[Any]]:
        """Rows of `d` for `company` in key order, read by key ranges (no cursor held across steps)."""
        (key,) = [k for k in d.entity.key if k != "dataAreaId"]
        cols = ", ".join(f"{read_sql(d.entity, c)} AS {_q(c)}" for c in d.columns)
        where, params = ("", [])
        if d.company_specific:
            where, params = f"{_q('dataAreaId')} = ? AND ", [company.lower()]
        last = ""
        while rows := self.store.query(
            f"SELECT {cols} FROM {_q(d.entity.table)} WHERE {where}{_q(key)} > ? ORDER BY {_q(key)} "
            f"LIMIT {CHUNK_ROWS}", [*params, last]):
            yield from (list(r) for r in rows)
            last = rows[-1][key]

    # --- import ---------------------------------------------------------------------------------------

    def _import(self, job: dict[str, Any]) -> Iterator[None]:
        path = self.blobs.path(job["package"])
        if not path.is_file():
            raise DmfError(f"The package {job['package']} was not found: PUT it to the URL GetAzureWriteUrl "
                           "returned before calling ImportFromPackage.")
        _, entities = read_package(path.read_bytes())
        groups = self.groups()
        if job["definitionGroupId"] not in groups:
            # As F&O does, an import creates its data project from the package.
            groups[job["definitionGroupId"]] = {"operation": "Import",
                                                "entities": [p.dmf.entity.name for p in entities]}
            self.store.kv_set(_GROUPS_KEY, groups)
        for pe in entities:
            stats: dict[str, Any] = {"status": "Executing", "staged": len(pe.rows), "created": 0,
                                     "updated": 0, "errors": 0}
            job["entities"][pe.dmf.label] = stats
            failed: list[tuple[int, list[str], str]] = []
            importer = _Importer(self.sbx, pe, job["legalEntityId"].lower(), self._locale())
            for start in range(0, len(pe.rows), CHUNK_ROWS):
                for line, row, message, key in importer.chunk(start, CHUNK_ROWS, stats):
                    self._error(job, pe.dmf.label, line, key, message)
                    failed.append((line, row, message))
                yield
            if failed:
                self._write_error_file(job["executionId"], pe, failed)
            stats["status"] = outcome(stats["errors"], stats["created"] + stats["updated"])

    def _write_error_file(
        self, execution_id: str, pe: PackageEntity, failed: list[tuple[int, list[str], str]]
    ) -> None:
        """The staging error file: the rows that failed, as uploaded, with line and message."""
        buf = io.StringIO(newline="")
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow([*pe.fields, "LINENUMBER", "ERRORMESSAGE"])
        out.writerows([*row, line, message] for line, row, message in failed)
        data = b"\xff\xfe" + buf.getvalue().encode("utf-16-le")  # CSV-Unicode, as uploaded
        self.blobs.path(_error_file(execution_id, pe.dmf)).write_bytes(data)


def _error_file(execution_id: str, dmf: DmfEntity) -> str:
    return f"errors-{_blob_stem(execution_id)}-{dmf.target}.csv"


def outcome(errors: int, done: int) -> str:
    """The summary status of a finished job (or entity) from its error and success counts.

    >>> outcome(0, 5), outcome(2, 5), outcome(2, 0)
    ('Succeeded', 'PartiallySucceeded', 'Failed')
    """
    if not errors:
        return "Succeeded"
    return "PartiallySucceeded" if done else "Failed"


def _param(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise DmfError(f"The parameter {name} is missing or empty: send it as a string in the JSON body.")
    return value


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Importer:
    """Validates and upserts the rows of one package entity into its F&O table.

    Rows are checked with F&O's table rules (`fo_rules`) and written like OData writes are:
    through the store and the write hooks (`sbx.extras["write_hooks"]`, e.g. dual-write live
    sync), so a running map mirrors an import and a row the hook refuses is a row error, rolled
    back alone.
    """

    def __init__(self, sbx: Sandbox, pe: PackageEntity, company: str, loc: Locale) -> None:
        self.sbx, self.store, self.pe, self.company, self.loc = sbx, sbx.store, pe, company, loc
        self.ent = pe.dmf.entity
        self._references = fo_rules.References(sbx.store, cache=True)

    def chunk(
        self, start: int, size: int, stats: dict[str, Any]
    ) -> Iterator[tuple[int, list[str], str, str]]:
        """Import rows `start`…`start+size`; yields (line, row, message, key) of each failed row."""
        with self.store.transaction():
            for offset, row in enumerate(self.pe.rows[start:start + size]):
                line = start + offset + 2  # line 1 is the header
                values, problems = self._convert(row)
                key = {k: values.get(k) for k in self.ent.key}
                record = ",".join(str(v) for k, v in key.items() if k != "dataAreaId" and v is not None)
                existing = self.store.get(self.ent, key) if all(key.values()) else None
                after = values if existing is None else {**existing, **values}
                problems += [p.message for p in fo_rules.problems(
                    self.store, self.ent, after, exists=self._references)]
                if not problems:
                    try:
                        stats[self._write(key, values, existing is None)] += 1
                        continue
                    except ODataError as exc:
                        problems.append(exc.message)
                stats["errors"] += 1
                yield line, row, " ".join(problems), record

    def _write(self, key: dict[str, Any], values: dict[str, Any], creating: bool) -> str:
        """Upsert one row with its hooks in a savepoint; "created" or "updated"."""
        with self.store.transaction():
            if creating:
                counter, op = "created", "create"
                self.store.insert_rows(self.ent, [values])
            else:
                counter, op = "updated", "update"
                self.store.update_rows(self.ent, [(key, {k: v for k, v in values.items() if k not in key})])
            run_write_hooks(self.sbx.extras,
                            lambda: WriteEvent(self.ent, op, [self.store.get(self.ent, key) or values]))
        return counter

    def _convert(self, row: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The row's values by schema column, and the fields that are not valid numbers or dates in
        the source data format's locale."""
        values: dict[str, Any] = {"dataAreaId": self.company} if self.pe.dmf.company_specific else {}
        problems = []
        for raw, (header, col) in zip(row, self.pe.fields.items(), strict=False):
            text = raw.strip()
            typ = self.ent.columns[col]
            try:
                values[col] = None if not text else self._parse(text, typ)
            except ValueError:
                kind = "date" if typ == "datetime" else "number"
                problems.append(f"The value '{text}' of field '{header}' is not a valid {kind} "
                                f"({self.loc.name}).")
        return values, problems

    def _parse(self, text: str, typ: str) -> Any:
        if typ == "int":
            return int(self.loc.parse_number(text))
        if typ == "decimal":
            return float(self.loc.parse_number(text))
        if typ == "datetime":  # date fields: F&O OData carries them at 12:00 UTC
            return f"{self.loc.parse_date(text).isoformat()}T12:00:00Z"
        return text
