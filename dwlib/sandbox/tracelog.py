"""Dataverse's plug-in trace log, as dual-write's plug-in leaves it when a live-sync write fails.

The organization's `plugintracelogsetting` decides what is written to the `plugintracelogs` table: 0
Off (nothing), 1 Exception (a row for each plug-in run that threw), 2 All (logging-tracing.md,
"Enable trace logging"). The table is the service's own: the Web API reads (GET) and deletes
(DELETE) its rows and creates none (webapi/reference/plugintracelog). A trace row outlives the
rollback of the write that failed, which is why the log helps at all: `store.keep` writes it
outside the write's transaction. The dual-write runtime's plug-in is named as
dual-write-troubleshooting.md spells it ("...Plugins.PreCommmitPlugin", three m).

Example:
    >>> sorted(SERVICE_WRITTEN), OFF, EXCEPTION
    (['plugintracelogs'], 0, 1)
"""

from __future__ import annotations

import uuid

from .odata import ODataError, WriteEvent
from .schema import ENTITIES
from .store import Store

OFF, EXCEPTION, ALL = 0, 1, 2
SERVICE_WRITTEN = frozenset({"plugintracelogs"})
DUAL_WRITE_PLUGIN = "Microsoft.Dynamics.Integrator.DualWriteRuntime.Plugins.PreCommmitPlugin"
SYNCHRONOUS, PLUGIN = 0, 1  # plugintracelog.mode and .operationtype


def setting(store: Store) -> int:
    """The organization's plug-in trace log setting (Off when there is no organization row)."""
    row = store.conn.execute('SELECT "plugintracelogsetting" FROM "dv_organizations" LIMIT 1').fetchone()
    return int(row[0] or OFF) if row else OFF


def trace_failure(store: Store, event: WriteEvent, error: ODataError) -> None:
    """Log the dual-write plug-in's failure on a Dataverse write when the setting asks for it."""
    if setting(store) < EXCEPTION:
        return
    row = {"plugintracelogid": str(uuid.uuid4()), "typename": DUAL_WRITE_PLUGIN,
           "messagename": event.op.capitalize(), "primaryentity": event.entity.logical_name,
           "exceptiondetails": f"{error.code}: {error.message}", "messageblock": "",
           "correlationid": str(uuid.uuid4()), "mode": SYNCHRONOUS, "operationtype": PLUGIN, "depth": 1}
    store.keep(lambda: store.insert(ENTITIES["plugintracelogs"], row))
