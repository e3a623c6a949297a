"""Data packages of F&O data management (DMF): read an exported package, write one to import.

A package is a zip with `PackageHeader.xml`, `Manifest.xml` and one file per entity (its
`InputFilePath`); with the `CSV-Unicode` format a file is UTF-16 with a byte order mark, CRLF line
ends, `"` as text qualifier and upper-case field names in the header. To import rows into F&O the
migrate step reuses the header and manifest of an export of the same entity — the usual way to
move data between environments — with a new data file.

Numbers and dates in the files are in the Language locale of the entity's source data format
(its `SourceFormat` in the manifest; Data management > Source data formats > Regional settings),
which `format_locale` reads from F&O: nl-NL writes `1234,5` and `31-01-2024`.

Example:
    >>> import tempfile
    >>> entity = ("<DataManagementPackageEntityData><EntityName>Currencies</EntityName>"
    ...           "<InputFilePath>Currencies.csv</InputFilePath></DataManagementPackageEntityData>")
    >>> manifest = (f'<DataManagementPackageManifest xmlns="{_NS["d"]}"><PackageEntityList>{entity}'
    ...             '</PackageEntityList></DataManagementPackageManifest>').encode()
    >>> pkg = Package(b"<h/>", manifest, "Currencies", "Currencies.csv", ["CURRENCYCODE", "NAME"],
    ...               [{"CURRENCYCODE": "USD", "NAME": 'US "Dollar"'}])
    >>> path = pkg.write(Path(tempfile.mkdtemp()) / "p.zip")
    >>> again = read_package(path, "Currencies")
    >>> again.fields, again.rows
    (['CURRENCYCODE', 'NAME'], [{'CURRENCYCODE': 'USD', 'NAME': 'US "Dollar"'}])
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from xml.etree import ElementTree

from dwlib.catalog.locales import LOCALE_DOC, LOCALE_FIX, Locale, LocaleError, locale
from dwlib.clients.errors import ClientError
from dwlib.clients.odata import literal

from ..base import StepError

if TYPE_CHECKING:
    from dwlib.clients.finops import FinOpsClient

SOURCE_FORMATS = "DataManagementSourceDataFormats"  # Data management > Source data formats (UNVERIFIED)
DEFAULT_FORMAT = "CSV-Unicode"

_NS = {"d": "http://schemas.microsoft.com/dynamics/2015/01/DataManagement"}


@dataclass(frozen=True)
class Package:
    """One entity of a package: the package's XML parts, the entity's file, fields and rows."""

    header_xml: bytes
    manifest_xml: bytes
    entity: str  # EntityName in the manifest (the entity's label, e.g. "Customers V3")
    file: str  # its InputFilePath
    fields: list[str]
    rows: list[dict[str, str]]
    source_format: str = DEFAULT_FORMAT  # its SourceFormat: the locale of its numbers and dates

    def with_rows(self, rows: Iterable[Mapping[str, str]]) -> Package:
        """The same package with other rows (fields the rows lack are left empty)."""
        return replace(self, rows=[{f: r.get(f, "") for f in self.fields} for r in rows])

    def write(self, path: Path, rows: Iterable[Mapping[str, str]] | None = None) -> Path:
        """Write the package zip (CSV-Unicode) to `path` with its rows, or with `rows` (streamed into
        the zip as they come: a migration's rows need not be in memory together); returns `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Deflate at level 1: a few percent larger than the default level, several times faster
        # (a migration's package holds every row it imports).
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.writestr("PackageHeader.xml", self.header_xml)
            zf.writestr("Manifest.xml", self.manifest_xml)
            with zf.open(self.file, "w", force_zip64=True) as raw:
                raw.write(b"\xff\xfe")
                with io.TextIOWrapper(raw, encoding="utf-16-le", newline="") as text:
                    out = csv.writer(text, lineterminator="\r\n")
                    out.writerow(self.fields)
                    out.writerows([row.get(f, "") for f in self.fields] for row in
                                  (self.rows if rows is None else rows))
        return path


def read_package(path: Path, entity: str) -> Package:
    """The entity `entity` (its label, case-insensitive) of the package at `path`, its rows read.

    StepError when the file is not a package or does not hold the entity.
    """
    head = package_head(path, entity)
    return replace(head, rows=list(package_rows(path, head)))


def package_head(path: Path, entity: str) -> Package:
    """The entity `entity` of the package at `path` without its rows (`package_rows` streams them).

    StepError when the file is not a package or does not hold the entity.
    """
    try:
        zf = zipfile.ZipFile(path)
        header, manifest = zf.read("PackageHeader.xml"), zf.read("Manifest.xml")
        root = ElementTree.fromstring(manifest)
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as exc:
        raise StepError(f"{path.name} is not a data package (a zip with PackageHeader.xml and Manifest.xml): "
                        f"{exc}. Fix: check the export project in F&O Data management") from None
    entries = {(e.findtext("d:EntityName", "", _NS)).lower(): e
               for e in root.iterfind("d:PackageEntityList/d:DataManagementPackageEntityData", _NS)}
    entry = entries.get(entity.lower())
    if entry is None:
        raise StepError(f"the package {path.name} holds {', '.join(entries) or 'no entity'}, not {entity}. "
                        "Fix: the export project must export that entity (Data management > Export)")
    name = entry.findtext("d:EntityName", "", _NS)
    file = entry.findtext("d:InputFilePath", f"{name}.csv", _NS)
    source_format = entry.findtext("d:SourceFormat", DEFAULT_FORMAT, _NS) or DEFAULT_FORMAT
    with _data_file(zf, file) as reader:
        fields = [h.strip().upper() for h in next(reader, [])]
    return Package(header, manifest, name, file, fields, [], source_format)


def package_rows(path: Path, head: Package) -> Iterator[dict[str, str]]:
    """The rows of the entity file `head` names (from `package_head`), one at a time."""
    with zipfile.ZipFile(path) as zf, _data_file(zf, head.file) as reader:
        next(reader, None)  # the header
        for r in reader:
            if any(c.strip() for c in r):
                yield dict(zip(head.fields, r, strict=False))


@contextmanager
def _data_file(zf: zipfile.ZipFile, file: str) -> Iterator[Iterator[list[str]]]:
    """A CSV reader over an entity file of the package, decoded as it is read (CSV-Unicode is UTF-16
    with a byte order mark; else UTF-8)."""
    with zf.open(file) as raw:
        bom = raw.read(2)
        encoding = "utf-16" if bom in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"  # CSV-Unicode, else CSV
        with io.TextIOWrapper(io.BufferedReader(_Prefixed(bom, raw)), encoding=encoding, newline="") as text:
            yield csv.reader(text)


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes (already read to sniff the encoding) are given back first."""

    def __init__(self, first: bytes, rest: IO[bytes]) -> None:
        self._first, self._rest = first, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._first or self._rest.read(len(buffer))
        self._first = b""
        buffer[:len(data)] = data
        return len(data)


@dataclass(frozen=True)
class FormatLocale:
    """The locale of a source data format's files, and how it is known (read, or assumed)."""

    source_format: str
    locale: Locale
    note: str = ""  # why it is assumed (the read failed, or the format names none); "" when read

    def locale_error(self, problem: LocaleError, where: str) -> StepError:
        """The step's error for a value that is not a number or date in this locale, with the fix."""
        return StepError(
            f"{where}: {problem} — the package's numbers and dates are not in {self.locale.name}, the "
            f"locale of source data format {self.source_format}{f' ({self.note})' if self.note else ''}. "
            f"Fix: {LOCALE_FIX.format(format=self.source_format)} ({LOCALE_DOC}), then run the step again")


def source_formats(finops: FinOpsClient, source_format: str | None = None) -> list[dict[str, Any]]:
    """Data management's source data formats (one, or all) with their type and Language locale;
    ClientError when F&O does not answer the read."""
    where = f"SourceName eq {literal(source_format)}" if source_format else None
    return list(finops.query(SOURCE_FORMATS, select=["SourceName", "Type", "LanguageLocale"], filter=where))


def format_locale(finops: FinOpsClient, source_format: str = DEFAULT_FORMAT) -> FormatLocale:
    """The Language locale of `source_format` as F&O has it; en-us, with a note why, when F&O does
    not answer the read or the format names none (a package in another locale then fails to parse
    with the fix). StepError for a locale this runbook does not know (with the fix)."""
    try:
        rows = source_formats(finops, source_format)
    except ClientError as exc:
        return FormatLocale(source_format, locale("en-us"), f"could not read its Language locale ({exc}): "
                                                            "en-us assumed")
    name = str(rows[0].get("LanguageLocale") or "") if rows else ""
    if not name:
        return FormatLocale(source_format, locale("en-us"), "it names no Language locale: en-us assumed")
    try:
        return FormatLocale(source_format, locale(name))
    except LocaleError as exc:
        raise StepError(f"source data format {source_format}: {exc}. Fix: "
                        f"{LOCALE_FIX.format(format=source_format)} ({LOCALE_DOC})") from None
