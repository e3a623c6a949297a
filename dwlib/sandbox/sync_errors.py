"""Seeded sync errors, as a sandbox for the troubleshoot runbook needs them.

First a write made in Dataverse that live sync refuses, with plug-in tracing on (`refuse_live_write`):
the Dataverse plug-in trace log keeps the dual-write plug-in's failure. Then:

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
from dwlib.errors import SandboxError

from . import control, tracelog
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


def refuse_live_write(root: Path) -> None:
    """Turn plug-in tracing to Exception, as a program does (logging-tracing.md), and save a USMF
    customer account without a customer group in Dataverse: live sync refuses it (F&O requires one),
    the save rolls back, and the trace log keeps the dual-write plug-in's failure."""
    from dwlib.clients.errors import ClientError  # the sandbox's server never needs the clients
    from dwlib.clients.session import connect
    from dwlib.packaged import param_file
    from dwlib.params import load_params

    params = load_params(param_file("sandbox-troubleshoot.yaml"), {"sandbox.dir": str(root)})
    with connect(params) as session:
        dv = session.dataverse
        (org,) = dv.query("organizations", select=["organizationid"], top=1)
        dv.update("organizations", org["organizationid"], {"plugintracelogsetting": tracelog.EXCEPTION})
        (usmf,) = dv.query("cdm_companies", select=["cdm_companyid"], filter="cdm_companycode eq 'USMF'")
        try:
            dv.create("accounts", {"name": "Saved without a customer group", "accountnumber": "TS-0001",
                                   "customertypecode": 3,
                                   "msdyn_company@odata.bind": f"/cdm_companies({usmf['cdm_companyid']})"})
        except ClientError:
            return  # refused by live sync: what the trace log is to show
    raise SandboxError("seeding the troubleshoot sandbox: live sync took an account without a customer group")


def seed(root: Path) -> None:
    """A refused live-sync write in the plug-in trace log (`refuse_live_write`), then the next initial
    sync of Customers V3 (accounts) made to fail for one USMF customer, and run."""
    refuse_live_write(root)
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
