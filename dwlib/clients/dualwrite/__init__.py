"""Dual-write administration: read and act on the link, legal entities and table maps.

One interface, `DualWriteAdmin` (`base`: the documented reads, the actions, the records they
return), two implementations:

- `PortalAdmin` (`portal`, the default, supported): each action is a *gate*: instructions for the
  consultant go to `notify`, then the result is verified through documented reads.
- `GatewayAdmin` (`gateway`, opt-in, UNSUPPORTED BY MICROSOFT): drives the dual-write management
  gateway that Microsoft's Dual-write-automations uses, with a delegated token for
  `https://IntegratorApp.com`; the portal gates stay for LCS actions.

Example:
    admin = PortalAdmin(session.dataverse, session.finops, notify=print, timeout_s=1800)
    admin.run(["Customers V3 (contacts)"], initial_sync=True, master="dataverse")
    admin.map_states(["Customers V3 (contacts)"])["Customers V3 (contacts)"].state
    >>> MapState("Running") == STATE_OF_STATUS[4] == "Running"
    True
"""

from dwlib.vocab import MapState

from .base import (
    INTEGRATOR_APP,
    STATE_OF_STATUS,
    ConnectionLegalEntities,
    DualWriteAdmin,
    DualWriteAdminError,
    InitialSyncDetails,
    Instruction,
    MapSnapshot,
    SyncError,
)
from .gateway import GatewayAdmin
from .portal import DUAL_WRITE_UI, LCS, PortalAdmin

__all__ = [
    "DUAL_WRITE_UI",
    "INTEGRATOR_APP",
    "LCS",
    "STATE_OF_STATUS",
    "ConnectionLegalEntities",
    "DualWriteAdmin",
    "DualWriteAdminError",
    "GatewayAdmin",
    "InitialSyncDetails",
    "Instruction",
    "MapSnapshot",
    "MapState",
    "PortalAdmin",
    "SyncError",
]
