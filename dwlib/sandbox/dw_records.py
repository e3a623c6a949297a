"""The rows through which dual-write state is visible in both environments.

- Dataverse `cdm_companies`, with the business unit and the "<CODE> DW" owner team the company
  plug-in creates (company-data.md);
- Dataverse `msdyn_dualwriteentitymaps`: one row per table map once the solutions are applied,
  `msdyn_mapping` holding its column rows in the shape Dual-write-automations reads
  (`entityMappingTasks[].legs[].fieldMappings[].valueTransforms[]`);
- F&O `DualWriteProjectConfigurations`: two rows per map once it has a project ("two records
  for every dual-write mapping", here one with `IsDelete` "No" and one with "Yes"); their
  `PartitionMap` holds the legal entities of the connection, comma-separated (the column is
  documented, its content is not: INFERRED from "Unable to get partition map for project DWM-…
  Exceeds the maximum partitions", the error of too many legal entities);
- Dataverse `msdyn_dualwriteruntimeconfigs`: one row per project. Community notes say real
  Dataverse holds rows only for maps where Dataverse is a source; the sandbox keeps one for every
  map so that each map's state (and, through `versionnumber`, each state change) is readable.

The map state is in F&O `Status` as an enum name, as F&O OData returns enum values, and in
Dataverse `msdyn_status` as a choice value; both use the gateway's `MapStatus` (DWEnums.cs):
names NotRunning, InitialSync, CatchUp, Running, Paused and codes 6, 2, 3, 4, 5. That meaning is
the sandbox's choice: the real semantics of these columns are UNVERIFIED (api-surface.md §5.1;
`dw doctor --record` captures them from a real environment).

Example:
    >>> STATUS_CODES["Running"], STATE_OF_CODE[5], FINOPS_STATUS["Initializing"]
    (4, 'Paused', 'InitialSync')
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
FINOPS_STATUS = {"NotRunning": "NotRunning", "Initializing": "InitialSync", "Resuming": "CatchUp",
                 "Running": "Running", "Paused": "Paused"}  # DWEnums.MapStatus names
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


def mapping_json(m: catalog.TableMap, project_id: str | None = None) -> dict[str, Any]:
    """`msdyn_mapping` of a map (as edited, `DualWrite.effective_map`) in the shape Microsoft's
    Dual-write-automations reads field mappings (`DWLibary/Struct/DWFieldMapping.cs`):
    `entityMappingTasks[].legs[].fieldMappings[]`, each column row with its sync direction and its
    `valueTransforms[]` (a Default value transform: `{"transformType": "Default", "defaultValue"}`).

    >>> m = catalog.table_map("Currencies (transactioncurrencies)")
    >>> leg = mapping_json(m)["entityMappingTasks"][0]["legs"][0]
    >>> leg["sourceSchema"], leg["destinationSchema"], sorted(leg["fieldMappings"][0])[:3]
    ('Currencies', 'transactioncurrencies', ['destinationField', 'isSystemGenerated', 'sourceField'])
    """
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
                else [{"transformType": "Default", "defaultValue": r.default}],
            }
        )
    major, minor, build, revision = (int(p) for p in m.version.split("."))
    leg = {
        "id": f"{m.id}-leg-1",
        "sourceEnvironmentType": "AX",
        "sourceSchema": m.finops_entity,
        "sourceFilter": m.source_filter,
        "destinationEnvironmentType": "CRM",
        "destinationSchema": m.dataverse_table,
        "reversedSourceFilter": m.dataverse_filter,
        "fieldMappings": fields,
    }
    return {
        "name": m.name,
        "displayName": m.name,
        "entityMappingTasks": [
            {"name": m.name, "order": 1, "leftEnvironmentType": "AX", "centerEnvironmentType": "CRM",
             "legs": [leg]}
        ],
        "templateIdentifier": {
            "name": m.name,
            "displayName": m.name,
            "version": {"major": major, "minor": minor, "build": build, "revision": revision},
        },
        "isDualWriteProject": True,
        **({"id": project_id} if project_id else {}),
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
                "Status": FINOPS_STATUS["NotRunning"],
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
        f'UPDATE "{_PROJECTS.table}" SET "Status" = ? WHERE "ProjectName" = ?',
        (FINOPS_STATUS[state], project),
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
