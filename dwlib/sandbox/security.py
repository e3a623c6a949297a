"""Dataverse security roles as the sandbox seeds them, and their assignment to users and teams
(`roles`, `systemuserrolescollection`, `teamrolescollection`), plus the dual-write plug-in
registration (`pluginassemblies`, `plugintypes`, `sdkmessageprocessingsteps`).

Provisioning creates the standard roles in the root business unit and gives the sandbox's app
registration and the consultant System Administrator. The dual-write setup adds the two dual-write
roles, gives the dual-write application users System Administrator (what the live-sync
troubleshooting asks of them), the root business unit's default team the dual-write runtime user
role (it needs read permission on the dual-write tables: INFERRED role), and registers the two
plug-in assemblies with enabled steps. Each company's "<CODE> DW" owner team gets the two
dual-write roles (security-roles.md).

Example:
    >>> import tempfile, pathlib
    >>> from dwlib.sandbox.store import Store
    >>> st = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> _ = st.insert(ENTITIES["businessunits"], {"name": "Contoso", "_parentbusinessunitid_value": None})
    >>> ensure_role(st, "System Administrator") == ensure_role(st, "System Administrator")
    True
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from dwlib import catalog

from .schema import ENTITIES
from .store import Store

STANDARD_ROLES = ("System Administrator", "System Customizer", "Basic User")
_ROLES, _USER_ROLES, _TEAM_ROLES = (ENTITIES[n] for n in ("roles", "systemuserrolescollection",
                                                          "teamrolescollection"))
# The plug-in types of the two dual-write assemblies (names of the live-sync trace log).
_NS = "Microsoft.Dynamics.Integrator"
PLUGIN_TYPES = {
    "DualWriteRegistration.Plugins": (f"{_NS}.DualWriteRegistration.Plugins.RegistrationPlugin",),
    "DualWriteRuntime.Plugins": (f"{_NS}.DualWriteRuntime.Plugins.PreCommitPlugin",
                                 f"{_NS}.DualWriteRuntime.Plugins.PostCommitPlugin"),
}


def ensure_role(store: Store, name: str) -> str:
    """The id of role `name` (created in the root business unit when missing)."""
    found = store.find(_ROLES, {"name": name}, limit=1)
    if found:
        return str(found[0]["roleid"])
    (root,) = store.find(ENTITIES["businessunits"], {"_parentbusinessunitid_value": None}, limit=1)
    row = store.insert(_ROLES, {"roleid": _id(root["businessunitid"], name), "name": name,
                                "_businessunitid_value": root["businessunitid"]})
    return str(row["roleid"])


def _id(*parts: str) -> str:
    """A row id that is the same for the same parts (seeding stays deterministic)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "dw-sandbox-security:" + "|".join(parts)))


def grant_user(store: Store, user_id: str, roles: Iterable[str]) -> None:
    """Give a system user the roles (by name) it lacks."""
    for name in roles:
        role = ensure_role(store, name)
        if not store.find(_USER_ROLES, {"systemuserid": user_id, "roleid": role}, limit=1):
            store.insert(_USER_ROLES, {"systemuserroleid": _id(user_id, role), "systemuserid": user_id,
                                       "roleid": role})


def grant_team(store: Store, team_id: str, roles: Iterable[str]) -> None:
    """Give a team the roles (by name) it lacks."""
    for name in roles:
        role = ensure_role(store, name)
        if not store.find(_TEAM_ROLES, {"teamid": team_id, "roleid": role}, limit=1):
            store.insert(_TEAM_ROLES, {"teamroleid": _id(team_id, role), "teamid": team_id, "roleid": role})


def dual_write_roles() -> tuple[str, ...]:
    """The two dual-write roles (security-roles.md)."""
    return catalog.requirements().dual_write_roles


def register_plugins(store: Store) -> int:
    """The dual-write plug-in assemblies, types and enabled steps (idempotent); rows added."""
    added = 0
    assemblies, types, steps = (ENTITIES[n] for n in ("pluginassemblies", "plugintypes",
                                                      "sdkmessageprocessingsteps"))
    for assembly in catalog.requirements().plugin_assemblies:
        if store.find(assemblies, {"name": assembly}, limit=1):
            continue
        aid = store.insert(assemblies, {"name": assembly, "version": "1.0.0.0"})["pluginassemblyid"]
        for typename in PLUGIN_TYPES[assembly]:
            tid = store.insert(types, {"typename": typename, "name": typename,
                                       "_pluginassemblyid_value": aid})["plugintypeid"]
            for message in ("Create", "Update", "Delete"):
                store.insert(steps, {"name": f"{typename.rsplit('.', 1)[1]}: {message}", "statecode": 0,
                                     "statuscode": 1, "_plugintypeid_value": tid})
                added += 1
    return added
