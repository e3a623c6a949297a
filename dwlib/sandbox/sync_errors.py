"""Seeded sync errors, as a sandbox for the troubleshoot runbook needs them.

The documented failure of an initial sync whose source data format is not in en-us: the export
writes a decimal with the locale's separator and the Dataverse leg cannot read it ("Can't convert
the literal '1500,5' to the expected type 'Edm.Decimal'"; the fix is Language locale en-us,
dual-write-troubleshooting-initial-sync.md). `seed` sets the CSV-Unicode format to nl-NL and one
USMF customer's credit limit to 1500.5 in the state database, then stops Customers V3 (accounts)
and runs it again with its initial sync through the portal endpoints: the map ends Not running.

Example:
    >>> MAP
    'Customers V3 (accounts)'
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dwlib import catalog

from . import control
from .schema import ENTITIES
from .state import Paths

MAP = "Customers V3 (accounts)"


def _portal(root: Path, method: str, path: str, body: dict[str, object] | None = None) -> None:
    connection = control.read_connection(root)
    if connection is None:
        raise RuntimeError(f"no running sandbox in {root}")
    headers = {"X-Sandbox-Admin": Path(connection["admin_key_file"]).read_text().strip()}
    base = str(connection["dataverse_url"]).rsplit("/", 1)[0]
    with control.http_client(dict(connection), timeout=120) as http:
        http.request(method, f"{base}/_portal{path}", headers=headers, json=body).raise_for_status()


def seed(root: Path) -> None:
    """Make the next initial sync of Customers V3 (accounts) fail for one USMF customer, and run it."""
    formats, customers = ENTITIES["DataManagementSourceDataFormats"].table, ENTITIES["CustomersV3"].table
    conn = sqlite3.connect(Paths(root).db, timeout=30, isolation_level=None)
    try:
        conn.execute(f'UPDATE "{formats}" SET "LanguageLocale" = ? WHERE "SourceName" = ?',
                     ("nl-NL", "CSV-Unicode"))
        conn.execute(f'UPDATE "{customers}" SET "CreditLimit" = 1500.5 WHERE rowid = (SELECT rowid FROM '
                     f'"{customers}" WHERE "dataAreaId" = \'usmf\' AND "PartyType" = \'Organization\' '
                     'ORDER BY "CustomerAccount" LIMIT 1)')
    finally:
        conn.close()
    map_id = catalog.table_map(MAP).id
    _portal(root, "POST", f"/dualwrite/maps/{map_id}/stop")
    _portal(root, "POST", f"/dualwrite/maps/{map_id}/run", {"related": [], "initial_sync": True,
                                                            "master": "finops"})
