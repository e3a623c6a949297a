"""DMF data packages: the entities DMF knows, and package zips written (export) and read (import).

Packages are zip files with `Manifest.xml`, `PackageHeader.xml` and one `{entity label}.csv` per
entity: CSV-Unicode (UTF-16 LE with BOM, CRLF, `"` qualifier), header row of upper-case field
names, no `DATAAREAID` column (the company is the call's `legalEntityId`). Numbers and dates are
written and read in the locale of the source data format (`package_locale`).

Example:
    >>> DMF_ENTITIES["CustomersV3"].label, DMF_ENTITIES["CustomersV3"].fields[:2]
    ('Customers V3', ['CUSTOMERACCOUNT', 'PARTYTYPE'])
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from ..catalog.locales import Locale, LocaleError, locale
from . import fo_rules
from .schema import ENTITIES, Entity
from .store import Store

CHUNK_ROWS = 2000  # rows per job step; the event loop serves other requests between steps
_NS = "http://schemas.microsoft.com/dynamics/2015/01/DataManagement"


class DmfError(Exception):
    """An action call F&O refuses (bad parameters); `finops.py` renders it as its error body.

    >>> DmfError("The parameter executionId is missing", 400).status
    400
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status



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
    # Level 1: a third of the default level's time for a slightly larger zip (any level reads the same).
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("PackageHeader.xml", header_xml(group))
        zf.writestr("Manifest.xml", manifest_xml(group, [d for d, _ in parts], "Export"))
        for d, rows in parts:
            with zf.open(f"{d.label}.csv", "w") as raw:
                raw.write(b"\xff\xfe")  # CSV-Unicode: UTF-16 LE with a byte order mark
                text = io.TextIOWrapper(raw, encoding="utf-16-le", newline="")
                out = csv.writer(text, lineterminator="\r\n")
                out.writerow(d.fields)
                written = 0
                # Only numbers and dates differ from what csv writes for any value (None → "", str()).
                formatted = [(i, typ) for i, c in enumerate(d.columns)
                             if (typ := d.entity.columns[c]) in ("decimal", "datetime")]
                while chunk := [list(r) for _, r in zip(range(CHUNK_ROWS), rows, strict=False)]:
                    for row in chunk:
                        for i, typ in formatted:
                            row[i] = _cell(row[i], typ, loc)
                    out.writerows(chunk)
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
