"""The rows through which dual-write state is visible in both environments.

- Dataverse `cdm_companies`, with the business unit and the "<CODE> DW" owner team the company
  plug-in creates (company-data.md);
- Dataverse `msdyn_dualwriteentitymaps`: one row per table map once the solutions are applied,
  `msdyn_mapping` holding the map's legs and column rows (api-surface.md §2.12);
- F&O `DualWriteProjectConfigurations`: two rows per map once it has a project ("two records
  for every dual-write mapping", here one with `IsDelete` "No" and one with "Yes"); their
  `PartitionMap` holds the legal entities of the connection, comma-separated (the column is
  documented, its content is not: INFERRED from "Unable to get partition map for project DWM-…
  Exceeds the maximum partitions", the error of too many legal entities);
- Dataverse `msdyn_dualwriteruntimeconfigs`: one row per project. Community notes say real
  Dataverse holds rows only for maps where Dataverse is a source; the sandbox keeps one for every
  map so that each map's state (and, through `versionnumber`, each state change) is readable.

`Status` / `msdyn_status` carry the map state as the gateway's `MapStatus` codes (Running 4,
Paused 5, Not running 6, initial sync 2, catch-up 3). That meaning is the sandbox's choice: the
real semantics of these columns are UNVERIFIED (api-surface.md §5.1).

Example:
    >>> STATUS_CODES["Running"], STATE_OF_CODE[5]
    (4, 'Paused')
"""

from __future__ import annotations

import json
from typing import Any

from dwlib import catalog

from . import security
from .dw_mapping import binding
from .schema import ENTITIES
from .store import Store

STATUS_CODES = {"NotRunning": 6, "Initializing": 2, "Resuming": 3, "Running": 4, "Paused": 5}
STATE_OF_CODE = {v: k for k, v in STATUS_CODES.items()}
_SYNC_DIRECTION = {(True, False): "1", (False, True): "2", (True, True): "3"}  # FO→CE, CE→FO, both

_BU, _TEAMS, _COMPANIES = ENTITIES["businessunits"], ENTITIES["teams"], ENTITIES["cdm_companies"]
_PROJECTS, _RUNTIME = ENTITIES["DualWriteProjectConfigurations"], ENTITIES["msdyn_dualwriteruntimeconfigs"]
_ENTITY_MAPS = ENTITIES["msdyn_dualwriteentitymaps"]


def _root_bu(store: Store) -> str:
    (root,) = store.find(_BU, {"_parentbusinessunitid_value": None}, limit=1)
    return root["businessunitid"]


def company_owner(store: Store, company: dict[str, Any]) -> str:
    """What the company plug-in does for a `cdm_companies` row: a business unit named after the
    company, its default team, and the owner team "<CODE> DW" set as Default owning team.

    Existing ones (same names) are reused. Returns the owner team id.
    """
    code = company["cdm_companycode"]
    bus = store.find(_BU, {"name": code}, limit=1)
    bu = (
        bus[0]["businessunitid"]
        if bus
        else store.insert(_BU, {"name": code, "_parentbusinessunitid_value": _root_bu(store)})[
            "businessunitid"
        ]
    )
    if not store.find(_TEAMS, {"_businessunitid_value": bu, "isdefault": True}, limit=1):
        store.insert(_TEAMS, {"name": code, "teamtype": 0, "isdefault": True, "_businessunitid_value": bu})
    teams = store.find(_TEAMS, {"name": f"{code} DW"}, limit=1)
    team = (
        teams[0]["teamid"]
        if teams
        else store.insert(
            _TEAMS, {"name": f"{code} DW", "teamtype": 0, "isdefault": False, "_businessunitid_value": bu}
        )["teamid"]
    )
    security.grant_team(store, team, security.dual_write_roles())
    if company.get("_cdm_defaultowningteam_value") != team:
        store.update(
            _COMPANIES,
            {"cdm_companyid": company["cdm_companyid"]},
            {"_cdm_defaultowningteam_value": team, "_owningbusinessunit_value": bu},
        )
    return team


def mapping_json(m: catalog.TableMap) -> dict[str, Any]:
    """`msdyn_mapping` of a map (as edited, `DualWrite.effective_map`): its leg and column rows, with
    their Default value transforms."""
    fields = []
    for r in m.mappings:
        fields.append(
            {
                "syncDirection": _SYNC_DIRECTION[
                    (r.to_dataverse or r.finops is None, r.to_finops or r.dataverse is None)
                ],
                "sourceField": r.finops,
                "destinationField": r.dataverse,
                "isSystemGenerated": False,
                "valueTransforms": []
                if r.default is None
                else [{"transformType": "Default", "value": r.default}],
            }
        )
    return {
        "name": m.name,
        "leftEnvironmentType": "AX",
        "centerEnvironmentType": "CRM",
        "legs": [
            {
                "sourceSchema": m.finops_entity,
                "sourceEnvironmentType": "AX",
                "destinationSchema": m.dataverse_table,
                "destinationEnvironmentType": "CRM",
                "sourceFilter": m.source_filter,
                "reversedSourceFilter": m.dataverse_filter,
                "integrationKey": list(m.integration_key),
                "fieldMappings": fields,
            }
        ],
    }


def write_entity_map(store: Store, m: catalog.TableMap) -> None:
    """Create or refresh the `msdyn_dualwriteentitymaps` row of `m` as edited (Apply Solution, or an
    edit)."""
    values = {
        "msdyn_name": m.name,
        "msdyn_displayname": m.name,
        "msdyn_version": m.version,
        "msdyn_mapping": json.dumps(mapping_json(m)),
        "ismanaged": True,
    }
    rows = store.find(_ENTITY_MAPS, {"msdyn_name": m.name}, limit=1)
    if rows:
        store.update(
            _ENTITY_MAPS, {"msdyn_dualwriteentitymapid": rows[0]["msdyn_dualwriteentitymapid"]}, values
        )
    else:
        store.insert(_ENTITY_MAPS, values)


def partition_map(legal_entities: list[str]) -> str:
    """`PartitionMap` of the project rows: the connection's legal entities.

    >>> partition_map(["USMF", "GBSI"])
    'USMF,GBSI'
    """
    return ",".join(legal_entities)


def set_partitions(store: Store, legal_entities: list[str]) -> None:
    """The connection's legal entities changed: every project's `PartitionMap` follows."""
    store.conn.execute(f'UPDATE "{_PROJECTS.table}" SET "PartitionMap" = ?', (partition_map(legal_entities),))


def create_project(store: Store, m: catalog.TableMap, project: str, pid: str, dataverse_url: str,
                   legal_entities: list[str]) -> None:
    """The F&O project configuration rows (and Dataverse runtime configuration) of a new project."""
    (last,) = store.query(f'SELECT COALESCE(MAX("RecId"), 5637144575) FROM "{_PROJECTS.table}"')[0]
    for offset, is_delete in enumerate(("No", "Yes"), start=1):
        store.insert(
            _PROJECTS,
            {
                "RecId": int(last) + offset,
                "ProjectName": project,
                "ExternalEntityName": m.dataverse_table,
                "InternalEntityName": m.finops_entity,
                "ExternalEnvironmentURL": dataverse_url,
                "Status": STATUS_CODES["NotRunning"],
                "IsDebugMode": "No",
                "IsDelete": is_delete,
                "IntegrationKey": ",".join(m.integration_key),
                "QueryFilterExpression": m.source_filter,
                "PartitionMap": partition_map(legal_entities),
            },
        )
    major, minor, build, revision = (int(p) for p in m.version.split("."))
    store.insert(
        _RUNTIME,
        {
            "msdyn_name": project,
            "msdyn_status": STATUS_CODES["NotRunning"],
            "msdyn_internalentityname": m.finops_entity,
            "msdyn_externalentityname": m.dataverse_table,
            "msdyn_unsecure": json.dumps(
                {
                    "ProjectId": pid,
                    "SourceEntityName": m.dataverse_table,
                    "SourceEnvironmentType": "CRM",
                    "DestinationEntityName": m.finops_entity,
                    "DestinationEnvironmentType": "AX",
                    "EntityMapVersion": {
                        "Major": major,
                        "Minor": minor,
                        "Build": build,
                        "Revision": revision,
                    },
                    "FieldMappings": [
                        {
                            "sourceField": b.dataverse or (b.lookup.text if b.lookup else None),
                            "destinationField": b.finops,
                        }
                        for b in binding(m).bindings
                        if b.to_finops
                    ],
                }
            ),
        },
    )


def set_status(store: Store, project: str, state: str) -> None:
    """Write a map state into its project's F&O and Dataverse configuration rows."""
    code = STATUS_CODES[state]
    store.conn.execute(
        f'UPDATE "{_PROJECTS.table}" SET "Status" = ? WHERE "ProjectName" = ?', (code, project)
    )
    for row in store.find(_RUNTIME, {"msdyn_name": project}):
        store.update(
            _RUNTIME,
            {"msdyn_dualwriteruntimeconfigid": row["msdyn_dualwriteruntimeconfigid"]},
            {"msdyn_status": code},
        )


def clear_configuration(store: Store) -> None:
    """What Reset link removes: project configurations, runtime configurations, applied maps."""
    for ent in (_PROJECTS, _RUNTIME, _ENTITY_MAPS):
        store.conn.execute(f'DELETE FROM "{ent.table}"')
