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

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from dwlib.clients.session import Session
    from dwlib.params import Params

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
    "open_admin",
]


def open_admin(session: Session, params: Params, *, notify: Callable[[Instruction], None]) -> DualWriteAdmin:
    """The dual-write admin a run's parameters choose (`options.admin`): the portal gates, or the
    unsupported gateway signed in for `https://IntegratorApp.com` on the session's HTTP stack."""
    options = params.options
    dv, fo = session.dataverse, session.finops
    if options.admin == "gateway":
        assert params.environments.gateway_url is not None  # Params checks it
        http = session.http(auth=session.tokens.auth_for(INTEGRATOR_APP))
        return GatewayAdmin(dv, fo, http=http, gateway_url=params.environments.gateway_url, notify=notify,
                            timeout_s=options.gate_timeout_s, poll_s=options.gate_poll_s)
    return PortalAdmin(dv, fo, notify=notify, timeout_s=options.gate_timeout_s, poll_s=options.gate_poll_s)
