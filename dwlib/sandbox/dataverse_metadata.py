"""Dataverse `EntityDefinitions` derived from `schema`: entities, attributes, keys, N:1 relationships.

The metadata lives in a private in-memory SQLite database, one table per metadata collection, so
`$select`, `$filter` and keys go through the same OData code as table rows ("There is no
paging" for metadata, api-surface §2.5).

Example:
    >>> md = Metadata("https://h/dataverse/api/data/v9.2/")
    >>> json.loads(md.get("LogicalName='account'", [], {"$select": "EntitySetName"}).body)["EntitySetName"]
    'accounts'
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response

from .odata import (
    ODataError,
    Segment,
    collection_json,
    odata_response,
    parse_key,
    with_annotations,
)
from .odata_sql import (
    fetch_one,
    fetch_page,
    parse_query,
)
from .schema import DATAVERSE, ColumnType, Entity
from .store import column_sql, quote

_NS = uuid.UUID("0f3c1a52-8e0b-4d8e-9a51-6f1d2c9b7e44")  # fixed: MetadataIds are stable
_NOT_FOUND = "0x80040217"
_NAME_COLUMNS = ("name", "fullname", "cdm_name", "msdyn_name", "uniquename", "currencyname")
_ATTRIBUTE_TYPES = {"guid": "Uniqueidentifier", "string": "String", "int": "Integer", "decimal": "Decimal",
                    "bool": "Boolean", "datetime": "DateTime", "json": "Memo"}
READ_ONLY = frozenset({"createdon", "modifiedon", "versionnumber"})  # set by the platform only
_SPECIAL_TYPES = {"statecode": "State", "statuscode": "Status", "versionnumber": "BigInt"}


def _meta(name: str, logical: str, columns: dict[str, ColumnType], alt: str) -> Entity:
    return Entity(name=name, service="dataverse", logical_name=logical, key=("MetadataId",),
                  columns={"MetadataId": "guid", **columns}, alternate_keys=((alt,),))


ENTITY_DEFINITIONS = _meta("EntityDefinitions", "EntityMetadata", {
    "LogicalName": "string", "SchemaName": "string", "EntitySetName": "string",
    "PrimaryIdAttribute": "string", "PrimaryNameAttribute": "string", "OwnershipType": "string",
    "IsCustomEntity": "bool"}, "LogicalName")
ATTRIBUTES = _meta("Attributes", "AttributeMetadata", {
    "LogicalName": "string", "SchemaName": "string", "EntityLogicalName": "string",
    "AttributeType": "string", "IsPrimaryId": "bool", "IsValidForUpdate": "bool", "Targets": "json"},
    "LogicalName")
KEYS = _meta("Keys", "EntityKeyMetadata", {
    "LogicalName": "string", "SchemaName": "string", "EntityLogicalName": "string",
    "KeyAttributes": "json", "EntityKeyIndexStatus": "string"}, "LogicalName")
RELATIONSHIPS = _meta("ManyToOneRelationships", "OneToManyRelationshipMetadata", {
    "SchemaName": "string", "ReferencedEntity": "string", "ReferencedAttribute": "string",
    "ReferencingEntity": "string", "ReferencingAttribute": "string",
    "ReferencingEntityNavigationPropertyName": "string"}, "SchemaName")
_CHILDREN = {e.name: e for e in (ATTRIBUTES, KEYS, RELATIONSHIPS)}
_PARENT_COLUMN = {"Attributes": "EntityLogicalName", "Keys": "EntityLogicalName",
                  "ManyToOneRelationships": "ReferencingEntity"}
_EMBEDDED = frozenset({"Targets", "KeyAttributes"})


def _mid(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "/".join(parts)))


def _attribute_name(column: str) -> str:
    """The attribute a column belongs to (`_msdyn_company_value` → `msdyn_company`)."""
    if column.startswith("_") and column.endswith("_value"):
        return column[1:-6]
    return column


def _rows(ent: Entity) -> dict[str, list[dict[str, Any]]]:
    logical, pk = ent.logical_name, ent.key[0]
    by_target = {e.name: e for e in DATAVERSE}
    entity_row = {
        "MetadataId": _mid(logical), "LogicalName": logical, "SchemaName": logical,
        "EntitySetName": ent.name, "PrimaryIdAttribute": pk,
        "PrimaryNameAttribute": next((c for c in _NAME_COLUMNS if c in ent.columns), None),
        "OwnershipType": "UserOwned" if ent.lookup_by_nav("ownerid") else "OrganizationOwned",
        "IsCustomEntity": "_" in logical,
    }
    attributes = [
        {"MetadataId": _mid(logical, col), "LogicalName": col, "SchemaName": col,
         "EntityLogicalName": logical, "AttributeType": _SPECIAL_TYPES.get(col, _ATTRIBUTE_TYPES[typ]),
         "IsPrimaryId": col == pk,
         "IsValidForUpdate": col != pk and col not in READ_ONLY, "Targets": None}
        for col, typ in ent.columns.items()
    ]
    attributes += [
        {"MetadataId": _mid(logical, lk.nav), "LogicalName": lk.nav.lower(), "SchemaName": lk.nav,
         "EntityLogicalName": logical, "AttributeType": "Owner" if lk.nav == "ownerid" else "Lookup",
         "IsPrimaryId": False, "IsValidForUpdate": True,
         "Targets": json.dumps([by_target[lk.target].logical_name])}
        for lk in ent.lookups
    ]
    keys = []
    for columns in ent.alternate_keys:
        names = [_attribute_name(c) for c in columns]
        key_name = f"{logical}_{'_'.join(names)}_key"
        keys.append({"MetadataId": _mid(logical, key_name), "LogicalName": key_name, "SchemaName": key_name,
                     "EntityLogicalName": logical, "KeyAttributes": json.dumps(names),
                     "EntityKeyIndexStatus": "Active"})
    relationships = [
        {"MetadataId": _mid(logical, "rel", lk.nav), "SchemaName": f"{logical}_{lk.nav}",
         "ReferencedEntity": by_target[lk.target].logical_name,
         "ReferencedAttribute": by_target[lk.target].key[0], "ReferencingEntity": logical,
         "ReferencingAttribute": lk.nav.lower(), "ReferencingEntityNavigationPropertyName": lk.nav}
        for lk in ent.lookups
    ]
    return {"EntityDefinitions": [entity_row], "Attributes": attributes, "Keys": keys,
            "ManyToOneRelationships": relationships}


class Metadata:
    """The `EntityDefinitions` collection and its navigation collections, read-only."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        for meta in (ENTITY_DEFINITIONS, *_CHILDREN.values()):
            cols = ", ".join(f"{quote(c)} {column_sql(t)}" for c, t in meta.columns.items())
            self.conn.execute(f"CREATE TABLE {quote(meta.table)} ({cols})")
        for ent in DATAVERSE:
            for name, rows in _rows(ent).items():
                meta = ENTITY_DEFINITIONS if name == "EntityDefinitions" else _CHILDREN[name]
                names = list(meta.columns)
                self.conn.executemany(
                    f"INSERT INTO {quote(meta.table)} VALUES ({', '.join('?' for _ in names)})",
                    [[r[n] for n in names] for r in rows])

    def get(self, key: str | None, rest: Sequence[Segment], args: Mapping[str, str]) -> Response:
        """`EntityDefinitions[(key)][/Attributes|/Keys|/ManyToOneRelationships[(key)]]`."""
        if key is None:
            if rest:
                raise ODataError(400, "Address one entity first: EntityDefinitions(LogicalName='account')/…")
            return self._collection(ENTITY_DEFINITIONS, args, None, "EntityDefinitions")
        parent = self._one(ENTITY_DEFINITIONS, key, None, "entity")
        logical = parent["LogicalName"]
        if not rest:
            return self._single(ENTITY_DEFINITIONS, key, args, None, "EntityDefinitions/$entity")
        child = _CHILDREN.get(rest[0].name)
        if child is None or len(rest) > 1:
            raise ODataError(404, f"Resource not found for the segment '{rest[-1].name}'.")
        scope = (f"{quote(_PARENT_COLUMN[child.name])} = ?", [logical])
        context = f"EntityDefinitions({parent['MetadataId']})/{child.name}"
        if rest[0].key is None:
            return self._collection(child, args, scope, context)
        self._one(child, rest[0].key, scope, child.logical_name)
        return self._single(child, rest[0].key, args, scope, context + "/$entity")

    def _one(self, meta: Entity, key: str, scope: tuple[str, list[Any]] | None, what: str) -> dict[str, Any]:
        text = fetch_one(self.conn, meta, parse_key(meta, key), list(meta.columns), None, scope,
                         embedded=_EMBEDDED)
        if text is None:
            raise ODataError(404, f"Could not find {what} with key {key}.", _NOT_FOUND)
        return json.loads(text)

    def _single(self, meta: Entity, key: str, args: Mapping[str, str],
                scope: tuple[str, list[Any]] | None, context: str) -> Response:
        q = parse_query(meta, args)  # validates every option; only $select applies
        columns = _with_key(q.select, meta)
        text = fetch_one(self.conn, meta, parse_key(meta, key), columns, None, scope, embedded=_EMBEDDED)
        assert text is not None
        return odata_response(with_annotations({"@odata.context": f"{self.root}$metadata#{context}"}, text))

    def _collection(self, meta: Entity, args: Mapping[str, str],
                    scope: tuple[str, list[Any]] | None, context: str) -> Response:
        q = parse_query(meta, args)
        if scope is not None:
            q.restrict(*scope)
        columns = _with_key(q.select, meta)
        page = fetch_page(self.conn, q, columns, 1_000_000, None, _EMBEDDED)
        head = {"@odata.context": f"{self.root}$metadata#{context}"}
        return odata_response(collection_json(head, page.items, {}))


def _with_key(select: list[str] | None, meta: Entity) -> list[str]:
    """Selected columns; MetadataId "is always returned" (api-surface §2.5)."""
    if select is None:
        return list(meta.columns)
    return select + [c for c in meta.key if c not in select]
