"""Data packages of F&O data management (DMF): read an exported package, write one to import.

A package is a zip with `PackageHeader.xml`, `Manifest.xml` and one file per entity (its
`InputFilePath`); with the `CSV-Unicode` format a file is UTF-16 with a byte order mark, CRLF line
ends, `"` as text qualifier and upper-case field names in the header. To import rows into F&O the
migrate step reuses the header and manifest of an export of the same entity — the usual way to
move data between environments — with a new data file.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree import ElementTree

from .base import StepError

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

    def with_rows(self, rows: Iterable[Mapping[str, str]]) -> Package:
        """The same package with other rows (fields the rows lack are left empty)."""
        return replace(self, rows=[{f: r.get(f, "") for f in self.fields} for r in rows])

    def write(self, path: Path) -> Path:
        """Write the package zip (CSV-Unicode) to `path`; returns `path`."""
        text = io.StringIO(newline="")
        out = csv.writer(text, lineterminator="\r\n")
        out.writerow(self.fields)
        out.writerows([row.get(f, "") for f in self.fields] for row in self.rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("PackageHeader.xml", self.header_xml)
            zf.writestr("Manifest.xml", self.manifest_xml)
            zf.writestr(self.file, b"\xff\xfe" + text.getvalue().encode("utf-16-le"))
        return path


def read_package(path: Path, entity: str) -> Package:
    """The entity `entity` (its label, case-insensitive) of the package at `path`.

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
    raw = zf.read(file)
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"  # CSV-Unicode, else CSV
    reader = csv.reader(io.StringIO(raw.decode(encoding), newline=""))
    fields = [h.strip().upper() for h in next(reader, [])]
    rows = [dict(zip(fields, r, strict=False)) for r in reader if any(c.strip() for c in r)]
    return Package(header, manifest, name, file, fields, rows)
