"""Drift: changes made to one side outside dual-write, as a sandbox for the health check needs them.

Live sync keeps the sides equal only for changes that go through the applications. A database
restored on one side, a fix made in SQL, or an import that skipped business events change one side
alone, and nothing syncs them (dual-write-troubleshooting-live-sync.md: a change made with
`doinsert()`, `doUpdate()`, `recordset()` or `skipBusinessEvents(true)` does not reach Dataverse).
`seed` makes such changes in the sandbox's state database directly, bypassing its emulated live
sync: F&O customers renamed, so their Dataverse accounts differ in value.

`seed(Path(".dw/sandbox/health-check"), rows=3)` renames three customers per company and returns
their number per company ({'USMF': 3}); the renamed ones end with `MARK`:

    >>> MARK
    ' (changed outside dual-write)'
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .schema import ENTITIES
from .state import Paths

MARK = " (changed outside dual-write)"


def seed(root: Path, *, rows: int = 3, company: str = "USMF") -> dict[str, int]:
    """Rename `rows` organization customers of F&O `company` in the sandbox of `root` without live
    sync (idempotent: a customer renamed before counts, none is renamed twice); per company the
    customers now renamed."""
    table = ENTITIES["CustomersV3"].table
    conn = sqlite3.connect(Paths(root).db, timeout=30, isolation_level=None)
    try:
        done = conn.execute(f'SELECT COUNT(*) FROM "{table}" WHERE "dataAreaId" = ? AND "OrganizationName" '
                            "LIKE ?", (company.lower(), f"%{MARK}")).fetchone()[0]
        todo = conn.execute(f'SELECT "CustomerAccount" FROM "{table}" WHERE "dataAreaId" = ? AND '
                            "\"PartyType\" = 'Organization' AND \"OrganizationName\" NOT LIKE ? "
                            'ORDER BY "CustomerAccount" LIMIT ?',
                            (company.lower(), f"%{MARK}", max(rows - done, 0))).fetchall()
        for (account,) in todo:
            conn.execute(f'UPDATE "{table}" SET "OrganizationName" = "OrganizationName" || ? '
                         'WHERE "dataAreaId" = ? AND "CustomerAccount" = ?', (MARK, company.lower(), account))
        return {company: done + len(todo)}
    finally:
        conn.close()
