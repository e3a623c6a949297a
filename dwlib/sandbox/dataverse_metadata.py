"""Dataverse table definitions (`EntityDefinitions`) derived from `schema`, and the platform tables
that say which messages a table supports (`sdkmessages`, `sdkmessagefilters`).

Definitions follow query-metadata-web-api.md and retrieve-metadata-name-metadataid.md: tables by
`LogicalName` or `MetadataId`; their `Attributes` (each of its derived type, announced by
`@odata.type` where the URL did not cast to it; a cast such as
`/Microsoft.Dynamics.CRM.PicklistAttributeMetadata` keeps that type and opens its properties,
with `$expand=OptionSet`/`GlobalOptionSet`), `Keys`, `ManyToOneRelationships`,
`OneToManyRelationships`; `MetadataId` is always returned and "there is no paging". Each item is a
dict with its complex properties (labels, `RequiredLevel`, option sets); its scalar properties
also live in a private in-memory SQLite database, so `$filter` goes through the same OData code
as table rows. The platform tables live there too and are queried like any table.

Example:
    >>> import json
    >>> md = Metadata("https://h/dataverse/api/data/v9.2/")
    >>> json.loads(md.get("LogicalName='account'", [], {"$select": "EntitySetName"}).body)["EntitySetName"]
    'accounts'
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from starlette.responses import Response

from .. import catalog
from .odata import ODataError, Segment, odata_response, parse_key, split_top
from .odata_sql import filter_sql
from .schema import DATAVERSE, PLATFORM, ColumnType, Entity, Lookup, entity, relationship_name
from .store import column_sql, quote

_NS = uuid.UUID("0f3c1a52-8e0b-4d8e-9a51-6f1d2c9b7e44")  # fixed: MetadataIds are stable
CRM = "Microsoft.Dynamics.CRM"
NOT_FOUND = "0x80040217"
READ_ONLY = frozenset({"createdon", "modifiedon", "versionnumber"})  # set by the platform only
_NAME_COLUMNS = ("name", "fullname", "cdm_name", "msdyn_name", "uniquename", "currencyname")
_STORAGE_TYPES = {"guid": "Uniqueidentifier", "string": "String", "int": "Integer", "decimal": "Decimal",
                  "bool": "Boolean", "datetime": "DateTime", "json": "Memo"}
# AttributeType → the derived AttributeMetadata type the service returns for it.
_DERIVED = {"String": "String", "Memo": "Memo", "Integer": "Integer", "BigInt": "BigInt",
            "Decimal": "Decimal", "Double": "Double", "Money": "Money", "Boolean": "Boolean",
            "DateTime": "DateTime",
            "Uniqueidentifier": "UniqueIdentifier", "Lookup": "Lookup", "Customer": "Lookup",
            "Owner": "Lookup", "Picklist": "Picklist", "State": "State", "Status": "Status"}
_ENUMS = frozenset({"Picklist", "State", "Status"})  # EnumAttributeMetadata: OptionSet, GlobalOptionSet
# Options of the choice columns the emulated tables have (account table reference; State/Status
# are every table's Active/Inactive pair).
_OPTIONS: dict[tuple[str, str], tuple[tuple[int, str], ...]] = {
    ("account", "accountcategorycode"): ((1, "Preferred Customer"), (2, "Standard")),
    ("account", "customertypecode"): ((1, "Competitor"), (2, "Consultant"), (3, "Customer"), (4, "Investor"),
                                      (5, "Partner"), (6, "Influencer"), (7, "Press"), (8, "Prospect"),
                                      (9, "Reseller"), (10, "Supplier"), (11, "Vendor"), (12, "Other")),
    # A map's state: the codes of DWEnums.MapStatus (Dual-write-automations), the labels the
    # dual-write page shows (enable-entity-map.md). Both unverified: `dw doctor` reads the real ones.
    ("msdyn_dualwriteruntimeconfig", "msdyn_status"): ((2, "Initializing"), (3, "Resuming"), (4, "Running"),
                                                       (5, "Paused"), (6, "Not running")),
}
# Address types of accounts and contacts (address1_addresstypecode; the maps write 2 and 3).
_ADDRESS_TYPES = ((1, "Bill To"), (2, "Ship To"), (3, "Primary"), (4, "Other"))
_STATE_OPTIONS = ((0, "Active"), (1, "Inactive"))
_STATUS_OPTIONS = ((1, "Active"), (2, "Inactive"))
# Messages every table has, and the bulk messages of tables with `bulk` (bulk-operations.md).
_MESSAGES = ("Create", "Retrieve", "RetrieveMultiple", "Update", "Delete")
BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
_ENUM_LITERAL = re.compile(r"\bMicrosoft\.Dynamics\.CRM\.\w+'([^']*)'")


# System definitions keep their MetadataId in every environment; these are the documented ones
# (retrieve-metadata-name-metadataid.md), so its sample URLs address the same items here.
_KNOWN_IDS = {"account": "70816501-edb9-4740-a16c-6a5efbc05d84",
              "account/accountcategorycode": "118771ca-6fb9-4f60-8fd4-99b6124b63ad",
              "account/accountcategorycode/optionset": "b994cdd8-5ce9-4ab9-bdd3-8888ebdb0407"}


def _mid(*parts: str) -> str:
    name = "/".join(parts)
    return _KNOWN_IDS.get(name) or str(uuid.uuid5(_NS, name))


def label(text: str, *key: str) -> dict[str, Any]:
    """A `Label` complex value in English (1033), as the service returns one."""
    localized = {"Label": text, "LanguageCode": 1033, "IsManaged": True,
                 "MetadataId": _mid("label", *key), "HasChanged": None}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": dict(localized)}


_NO_LABEL: dict[str, Any] = {"LocalizedLabels": [], "UserLocalizedLabel": None}


def _title(name: str) -> str:
    return name.removeprefix("msdyn_").removeprefix("cdm_").replace("_", " ").title()


# --- the definition types -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaType:
    """One metadata entity type: its scalar properties (filterable) and its complex ones."""

    name: str  # e.g. "AttributeMetadata"
    scalars: dict[str, ColumnType]
    complex: frozenset[str] = frozenset()
    navigations: frozenset[str] = frozenset()

    @property
    def qualified(self) -> str:
        return f"{CRM}.{self.name}"

    @property
    def properties(self) -> frozenset[str]:
        return frozenset({"MetadataId", *self.scalars}) | self.complex

    def entity(self) -> Entity:
        """An `Entity` over the scalar properties, for the shared `$filter` code."""
        return Entity(name=self.name, service="dataverse", logical_name=self.name, key=("MetadataId",),
                      columns={"MetadataId": "guid", **self.scalars})


_ENTITY = MetaType("EntityMetadata", {
    "LogicalName": "string", "SchemaName": "string", "EntitySetName": "string",
    "LogicalCollectionName": "string", "CollectionSchemaName": "string", "PrimaryIdAttribute": "string",
    "PrimaryNameAttribute": "string", "OwnershipType": "string", "ObjectTypeCode": "int",
    "IsCustomEntity": "bool", "IsActivity": "bool", "IsKnowledgeManagementEnabled": "bool"},
    frozenset({"DisplayName", "DisplayCollectionName"}),
    frozenset({"Attributes", "Keys", "ManyToOneRelationships", "OneToManyRelationships"}))
_ATTRIBUTE = MetaType("AttributeMetadata", {
    "LogicalName": "string", "SchemaName": "string", "EntityLogicalName": "string", "AttributeType": "string",
    "AttributeOf": "string", "IsPrimaryId": "bool", "IsPrimaryName": "bool", "IsCustomAttribute": "bool",
    "IsValidForCreate": "bool", "IsValidForRead": "bool", "IsValidForUpdate": "bool", "IsLogical": "bool"},
    frozenset({"AttributeTypeName", "DisplayName", "RequiredLevel"}))
_KEY = MetaType("EntityKeyMetadata", {
    "LogicalName": "string", "SchemaName": "string", "EntityLogicalName": "string",
    "EntityKeyIndexStatus": "string"}, frozenset({"KeyAttributes", "DisplayName"}))
_RELATIONSHIP = MetaType("OneToManyRelationshipMetadata", {
    "SchemaName": "string", "RelationshipType": "string", "IsCustomRelationship": "bool",
    "ReferencedAttribute": "string", "ReferencedEntity": "string", "ReferencingAttribute": "string",
    "ReferencingEntity": "string", "ReferencedEntityNavigationPropertyName": "string",
    "ReferencingEntityNavigationPropertyName": "string", "IsHierarchical": "bool"})
# The derived attribute types a URL may cast to, with the properties each adds.
_ATTRIBUTE_TYPES: dict[str, MetaType] = {
    name: MetaType(f"{name}AttributeMetadata", {**_ATTRIBUTE.scalars, **cast("dict[str, ColumnType]", extra)},
                   _ATTRIBUTE.complex | complex_,
                   frozenset({"OptionSet", "GlobalOptionSet"}) if name in _ENUMS else frozenset())
    for name, extra, complex_ in (
        ("String", {"MaxLength": "int", "Format": "string"}, frozenset()),
        ("Memo", {"MaxLength": "int", "Format": "string"}, frozenset()),
        ("Integer", {"MinValue": "int", "MaxValue": "int", "Format": "string"}, frozenset()),
        ("BigInt", {"MinValue": "int", "MaxValue": "int"}, frozenset()),
        ("Decimal", {"Precision": "int", "MinValue": "decimal", "MaxValue": "decimal"}, frozenset()),
        ("Double", {"Precision": "int", "MinValue": "decimal", "MaxValue": "decimal"}, frozenset()),
        ("Money", {"Precision": "int", "PrecisionSource": "int", "MinValue": "decimal",
                   "MaxValue": "decimal"}, frozenset()),
        ("Boolean", {"DefaultValue": "bool"}, frozenset()),
        ("DateTime", {"Format": "string"}, frozenset({"DateTimeBehavior"})),
        ("UniqueIdentifier", {}, frozenset()),
        ("Lookup", {"Format": "string"}, frozenset({"Targets"})),
        ("Picklist", {"DefaultFormValue": "int"}, frozenset()),
        ("State", {"DefaultFormValue": "int"}, frozenset()),
        ("Status", {"DefaultFormValue": "int"}, frozenset()),
    )
}
_CHILDREN = {"Attributes": _ATTRIBUTE, "Keys": _KEY, "ManyToOneRelationships": _RELATIONSHIP,
             "OneToManyRelationships": _RELATIONSHIP}
_PARENT = {"Attributes": "EntityLogicalName", "Keys": "EntityLogicalName",
           "ManyToOneRelationships": "ReferencingEntity", "OneToManyRelationships": "ReferencedEntity"}
_OPTION_SET = frozenset({"Options", "Description", "DisplayName", "IsCustomOptionSet", "IsGlobal",
                         "IsManaged", "IsCustomizable", "Name", "OptionSetType", "IntroducedVersion",
                         "MetadataId", "HasChanged"})


# --- the definitions of one table --------------------------------------------------------------


def attribute_type(ent: Entity, column: str) -> str:
    """The AttributeType of a (non-lookup) column: Picklist, Money, String, …

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> attribute_type(ENTITIES["accounts"], "creditlimit"), attribute_type(ENTITIES["accounts"], "name")
    ('Money', 'String')
    """
    return ent.kinds.get(column) or _STORAGE_TYPES[ent.columns[column]]


@cache
def _mapped_options() -> dict[tuple[str, str], tuple[tuple[int, str], ...]]:
    """Options of the choice columns the catalogue's value maps write (REF lists each value with the
    F&O enum name it stands for; the label here is that name)."""
    out: dict[tuple[str, str], tuple[tuple[int, str], ...]] = {}
    for m in catalog.table_maps():
        for row in m.mappings:
            if row.values and row.dataverse and all(type(v) is int for _, v in row.values):
                options = dict(out.get((m.dataverse_logical, row.dataverse), ()))
                options.update({v: name[:1].upper() + name[1:] for name, v in row.values})
                out[(m.dataverse_logical, row.dataverse)] = tuple(sorted(options.items()))
    return out


def _choices(logical: str, column: str, kind: str) -> tuple[tuple[int, str], ...]:
    if (logical, column) in _OPTIONS:
        return _OPTIONS[(logical, column)]
    if column.endswith("_addresstypecode"):
        return _ADDRESS_TYPES
    if kind == "Picklist" and (logical, column) in _mapped_options():
        return _mapped_options()[(logical, column)]
    return _STATE_OPTIONS if kind == "State" else _STATUS_OPTIONS


def choice_label(ent: Entity, column: str, value: int) -> str | None:
    """The label of a choice (Picklist, State, Status) column's value, None when it has none.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> accounts = ENTITIES["accounts"]
    >>> choice_label(accounts, "customertypecode", 1), choice_label(accounts, "statecode", 0)
    ('Competitor', 'Active')
    """
    return dict(_choices(ent.logical_name, column, attribute_type(ent, column))).get(value)


def primary_name(ent: Entity) -> str | None:
    """The table's primary name column (`PrimaryNameAttribute`), if it has one.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> primary_name(ENTITIES["contacts"]), primary_name(ENTITIES["transactioncurrencies"])
    ('fullname', 'currencyname')
    """
    return next((c for c in _NAME_COLUMNS if c in ent.columns), None)


def _options(logical: str, column: str, kind: str) -> dict[str, Any]:
    values = _choices(logical, column, kind)
    name = f"{logical}_{column}"
    options: list[dict[str, Any]] = [{
        "Value": value, "Color": None, "IsManaged": True, "ExternalValue": None, "ParentValues": [],
        "Tag": None, "IsHidden": False, "MetadataId": None, "HasChanged": None,
        "Label": label(text, name, str(value)), "Description": dict(_NO_LABEL),
    } for value, text in values]
    return {"Options": options, "Description": dict(_NO_LABEL), "DisplayName": label(_title(column), name),
            "IsCustomOptionSet": False, "IsGlobal": False, "IsManaged": True,
            "IsCustomizable": {"Value": True, "CanBeChanged": False,
                               "ManagedPropertyLogicalName": "iscustomizable"},
            "Name": name, "OptionSetType": kind, "IntroducedVersion": None,
            "MetadataId": _mid(logical, column, "optionset"), "HasChanged": None}


def _attribute(ent: Entity, name: str, kind: str, **extra: Any) -> dict[str, Any]:
    logical = ent.logical_name
    primary = primary_name(ent)
    derived = _DERIVED[kind]
    row: dict[str, Any] = {
        "@odata.type": f"#{CRM}.{derived}AttributeMetadata",
        "MetadataId": _mid(logical, name), "LogicalName": name, "SchemaName": name,
        "EntityLogicalName": logical, "AttributeType": kind, "AttributeTypeName": {"Value": f"{kind}Type"},
        "AttributeOf": None, "IsPrimaryId": name == ent.key[0], "IsPrimaryName": name == primary,
        "IsCustomAttribute": "_" in name and not name.startswith("address"),
        "IsValidForCreate": name != ent.key[0] and name not in READ_ONLY,
        "IsValidForRead": True,
        "IsValidForUpdate": name != ent.key[0] and name not in READ_ONLY,
        "IsLogical": False,
        "RequiredLevel": {"Value": "SystemRequired" if name == ent.key[0] else "None", "CanBeChanged": True,
                          "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings"},
        "DisplayName": label(_title(name), logical, name),
    }
    by_type: dict[str, dict[str, Any]] = {
        "String": {"MaxLength": 100, "Format": "Text"}, "Memo": {"MaxLength": 2000, "Format": "TextArea"},
        "Integer": {"MinValue": -2147483648, "MaxValue": 2147483647, "Format": "None"},
        "BigInt": {"MinValue": -9223372036854775808, "MaxValue": 9223372036854775807},
        "Decimal": {"Precision": 2, "MinValue": -100000000000.0, "MaxValue": 100000000000.0},
        "Double": {"Precision": 5, "MinValue": -180.0, "MaxValue": 180.0},  # latitudes and longitudes
        "Money": {"Precision": 2, "PrecisionSource": 2, "MinValue": -922337203685477.0,
                  "MaxValue": 922337203685477.0},
        "Boolean": {"DefaultValue": False},
        "DateTime": {"Format": "DateAndTime", "DateTimeBehavior": {"Value": "UserLocal"}},
        "Lookup": {"Format": "None"},
        "Picklist": {"DefaultFormValue": -1}, "State": {"DefaultFormValue": -1},
        "Status": {"DefaultFormValue": -1},
    }
    row.update(by_type.get(derived, {}))
    row.update(extra)
    if kind in _ENUMS:
        row["OptionSet"] = row["GlobalOptionSet"] = _options(logical, name, kind)
    return row


def _lookup_attribute(ent: Entity, lk: Lookup) -> dict[str, Any]:
    targets = [_by_set(t).logical_name for t in lk.targets]
    return _attribute(ent, lk.attribute, lk.kind, Targets=targets,
                      IsValidForCreate=True, IsValidForUpdate=True)


def _by_set(name: str) -> Entity:
    found = entity(name, "dataverse")
    assert found is not None, name
    return found


def _relationships(ent: Entity) -> list[dict[str, Any]]:
    """The N:1 relationships of `ent`'s lookups, one per navigation property."""
    out = []
    for lk in ent.lookups:
        for nav, targets in lk.navigations().items():
            # An Owner lookup points at the abstract owner (user or team), not one table.
            referenced = "owner" if lk.kind == "Owner" else _by_set(targets[0]).logical_name
            name = relationship_name(ent, lk, nav)
            out.append({
                "MetadataId": _mid(ent.logical_name, "rel", nav), "SchemaName": name,
                "RelationshipType": "OneToManyRelationship", "IsCustomRelationship": False,
                "ReferencedAttribute": "ownerid" if lk.kind == "Owner" else _by_set(targets[0]).key[0],
                "ReferencedEntity": referenced, "ReferencingAttribute": lk.attribute,
                "ReferencingEntity": ent.logical_name, "ReferencedEntityNavigationPropertyName": name,
                "ReferencingEntityNavigationPropertyName": nav, "IsHierarchical": False,
            })
    return out


def definitions(ent: Entity) -> dict[str, list[dict[str, Any]]]:
    """Every definition item of one table: itself, its attributes, keys and N:1 relationships."""
    logical, pk = ent.logical_name, ent.key[0]
    table = {
        "MetadataId": _mid(logical), "LogicalName": logical, "SchemaName": logical, "EntitySetName": ent.name,
        "LogicalCollectionName": ent.name, "CollectionSchemaName": ent.name,
        "PrimaryIdAttribute": pk, "PrimaryNameAttribute": primary_name(ent),
        "OwnershipType": "UserOwned" if ent.lookup("ownerid") else "OrganizationOwned",
        "ObjectTypeCode": 10000 + DATAVERSE.index(ent) if ent in DATAVERSE else 4600 + PLATFORM.index(ent),
        "IsCustomEntity": "_" in logical, "IsActivity": False, "IsKnowledgeManagementEnabled": False,
        "DisplayName": label(_title(logical), logical),
        "DisplayCollectionName": label(_title(ent.name), ent.name),
    }
    attributes = [_attribute(ent, col, attribute_type(ent, col)) for col in ent.columns]
    attributes += [_lookup_attribute(ent, lk) for lk in ent.lookups]
    keys = []
    for columns in ent.alternate_keys:
        names = [c[1:-6] if c.startswith("_") and c.endswith("_value") else c for c in columns]
        key_name = f"{logical}_{'_'.join(names)}_key"
        keys.append({"MetadataId": _mid(logical, key_name), "LogicalName": key_name, "SchemaName": key_name,
                     "EntityLogicalName": logical, "KeyAttributes": names, "EntityKeyIndexStatus": "Active",
                     "DisplayName": label(key_name, logical, key_name)})
    return {"EntityDefinitions": [table], "Attributes": attributes, "Keys": keys,
            "ManyToOneRelationships": _relationships(ent)}


def _platform_rows() -> dict[str, list[dict[str, Any]]]:
    """`sdkmessages` and `sdkmessagefilters`: which message each table supports."""
    names = (*_MESSAGES, *BULK_MESSAGES)
    messages = [{"sdkmessageid": _mid("sdkmessage", n), "name": n} for n in names]
    filters = [
        {"sdkmessagefilterid": _mid("sdkmessagefilter", ent.logical_name, n),
         "primaryobjecttypecode": ent.logical_name, "iscustomprocessingstepallowed": True,
         "_sdkmessageid_value": _mid("sdkmessage", n)}
        for ent in DATAVERSE for n in (*_MESSAGES, *(BULK_MESSAGES if ent.bulk else ()))
    ]
    return {"sdkmessages": messages, "sdkmessagefilters": filters}


# --- serving --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    """What a URL addresses inside `EntityDefinitions`: a collection of one type, maybe one item."""

    collection: str  # EntityDefinitions | Attributes | Keys | ManyToOneRelationships | OneToManyRelationships
    declared: MetaType  # the type the URL gives its items (a cast narrows Attributes)
    where: tuple[str, list[Any]] | None  # the parent's condition on the collection
    context: str  # @odata.context after `$metadata#`


class Metadata:
    """`EntityDefinitions` and its navigation collections, and the platform tables, read-only."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.items: dict[str, dict[str, dict[str, Any]]] = {}  # collection → MetadataId → item
        tables = {"EntityDefinitions": _ENTITY, "Attributes": _all_attribute_scalars(), "Keys": _KEY,
                  "Relationships": _RELATIONSHIP}
        for name, meta in tables.items():
            cols = {"MetadataId": "guid", **meta.scalars}
            self.conn.execute(f"CREATE TABLE {quote(name)} "
                              f"({', '.join(f'{quote(c)} {column_sql(t)}' for c, t in cols.items())})")
        for ent in DATAVERSE:
            for name, rows in definitions(ent).items():
                self._load("Relationships" if name.endswith("Relationships") else name, tables, rows)
        for ent in PLATFORM:
            columns = ", ".join(f"{quote(c)} {column_sql(t)}" for c, t in ent.all_columns.items())
            self.conn.execute(f"CREATE TABLE {quote(ent.table)} ({columns})")
        for set_name, rows in _platform_rows().items():
            ent = _by_set(set_name)
            for row in rows:
                full = {**row, "createdon": "2024-01-01T00:00:00Z", "modifiedon": "2024-01-01T00:00:00Z",
                        "versionnumber": 1, "statecode": 0, "statuscode": 1}
                names = list(full)
                self.conn.execute(f"INSERT INTO {quote(ent.table)} ({', '.join(quote(n) for n in names)}) "
                                  f"VALUES ({', '.join('?' for _ in names)})",
                                  [int(v) if isinstance(v, bool) else v for v in full.values()])

    def _load(self, table: str, tables: Mapping[str, MetaType], rows: list[dict[str, Any]]) -> None:
        cols = ["MetadataId", *tables[table].scalars]
        for row in rows:
            self.items.setdefault(table, {})[row["MetadataId"]] = row
            values = [row.get(c) for c in cols]
            self.conn.execute(f"INSERT INTO {quote(table)} VALUES ({', '.join('?' for _ in cols)})",
                              [int(v) if isinstance(v, bool) else v for v in values])

    # --- addressing ---------------------------------------------------------------------------

    def get(self, key: str | None, rest: Sequence[Segment], args: Mapping[str, str]) -> Response:
        """`EntityDefinitions[(key)][/Attributes[(key)][/cast[/OptionSet]]|/Keys|/…Relationships[(key)]]`."""
        if key is None:
            if rest:
                raise ODataError(400, "Address one table first: EntityDefinitions(LogicalName='account')/…",
                                 "0x0")
            scope = _Scope("EntityDefinitions", _ENTITY, None, "EntityDefinitions")
            return self._respond(scope, None, args)
        table = self._find("EntityDefinitions", _ENTITY, key, None, "entity")
        if not rest:
            scope = _Scope("EntityDefinitions", _ENTITY, None, "EntityDefinitions")
            return self._respond(scope, table, args)
        head, tail = rest[0], list(rest[1:])
        meta = _CHILDREN.get(head.name)
        if meta is None:
            raise ODataError(404, f"Resource not found for the segment '{head.name}'.", "0x8006088a")
        parent = f"EntityDefinitions({table['MetadataId']})/{head.name}"
        where = (f"{quote(_PARENT[head.name])} = ?", [table["LogicalName"]])
        cast = None
        if head.key is None and tail and tail[0].key is None and head.name == "Attributes":
            cast, tail = self._cast(tail[0]), tail[1:]
        scope = _Scope(head.name, cast or meta, where, parent + (f"/{cast.qualified}" if cast else ""))
        if head.key is None:
            if tail:
                raise ODataError(404, f"Resource not found for the segment '{tail[0].name}'.", "0x8006088a")
            return self._respond(scope, None, args)
        item = self._find(head.name, meta, head.key, where, meta.name)
        if head.name == "Attributes" and tail and tail[0].key is None:
            cast = self._cast(tail[0])
            if item["@odata.type"] != f"#{cast.qualified}":
                raise ODataError(404, f"The attribute '{item['LogicalName']}' is not a {cast.name}.",
                                 NOT_FOUND)
            scope = _Scope(head.name, cast, where, f"{parent}/{cast.qualified}")
            tail = tail[1:]
        if tail:
            nav = tail[0].name
            if len(tail) > 1 or tail[0].key is not None or nav not in scope.declared.navigations:
                raise ODataError(404, f"Resource not found for the segment '{nav}'.", "0x8006088a")
            return self._option_set(item[nav], f"{scope.context}/{nav}", args)
        return self._respond(scope, item, args)

    def _cast(self, segment: Segment) -> MetaType:
        found = next((t for t in _ATTRIBUTE_TYPES.values() if t.qualified == segment.name), None)
        if found is None:
            raise ODataError(404, f"Resource not found for the segment '{segment.name}'.", "0x8006088a")
        return found

    def _find(self, collection: str, meta: MetaType, key: str, where: tuple[str, list[Any]] | None,
              what: str) -> dict[str, Any]:
        alt = "SchemaName" if meta is _RELATIONSHIP else "LogicalName"
        keyed = Entity(meta.name, "dataverse", meta.name, ("MetadataId",), meta.entity().columns, ((alt,),))
        parsed = parse_key(keyed, key)
        conds = [f"{quote(k)} = ?" for k in parsed] + ([where[0]] if where else [])
        table = "Relationships" if collection.endswith("Relationships") else collection
        row = self.conn.execute(f"SELECT MetadataId FROM {quote(table)} WHERE {' AND '.join(conds)}",
                                [*parsed.values(), *(where[1] if where else [])]).fetchone()
        if row is None:
            raise ODataError(404, f"Could not find {what} with key {key}.", NOT_FOUND)
        return self.items[table][row[0]]

    # --- answering ----------------------------------------------------------------------------

    def _respond(self, scope: _Scope, item: dict[str, Any] | None, args: Mapping[str, str]) -> Response:
        options = _options_of(args, {"$select", "$filter", "$expand", "$orderby"} if item is None
                              else {"$select", "$expand"})
        select = _select(scope.declared, options.get("$select"))
        expand = _expand(scope, options.get("$expand"))
        context = f"{self.root}$metadata#{scope.context}"
        if item is not None:
            body = {"@odata.context": context + "/$entity", **self._render(scope, item, select, expand)}
            return odata_response(body)
        items = [self._render(scope, i, select, expand)
                 for i in self._query(scope, options.get("$filter"), options.get("$orderby"))]
        return odata_response({"@odata.context": context, "value": items})

    def _query(self, scope: _Scope, filter_text: str | None, orderby: str | None) -> list[dict[str, Any]]:
        table = "Relationships" if scope.collection.endswith("Relationships") else scope.collection
        conds, params = [], []
        if scope.where is not None:
            conds.append(scope.where[0])
            params += scope.where[1]
        if scope.declared.name in {t.name for t in _ATTRIBUTE_TYPES.values()}:  # a cast
            kinds = [k for k, v in _DERIVED.items() if f"{v}AttributeMetadata" == scope.declared.name]
            conds.append(f'"AttributeType" IN ({", ".join("?" for _ in kinds)})')
            params += kinds
        if filter_text:
            sql, p = filter_sql(scope.declared.entity(), _ENUM_LITERAL.sub(r"'\1'", filter_text))
            conds.append(sql)
            params += p
        order = "rowid"
        if orderby:
            parts = []
            for item in split_top(orderby, ","):
                name, _, direction = item.strip().partition(" ")
                if name not in scope.declared.scalars:
                    raise no_property_of(scope.declared, name)
                parts.append(f"{quote(name)} {'DESC' if direction.strip().lower() == 'desc' else 'ASC'}")
            order = ", ".join(parts)
        rows = self.conn.execute(f"SELECT MetadataId FROM {quote(table)} WHERE {' AND '.join(conds) or '1'} "
                                 f"ORDER BY {order}", params).fetchall()
        return [self.items[table][r[0]] for r in rows]

    def _render(self, scope: _Scope, item: dict[str, Any], select: list[str] | None,
                expand: dict[str, dict[str, str]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        actual = item.get("@odata.type")
        if actual and actual != f"#{scope.declared.qualified}":
            out["@odata.type"] = actual
        names = select if select is not None else [k for k in item if k[0] != "@" and k not in _NAVS]
        for name in names:
            out[name] = item.get(name)
        out.setdefault("MetadataId", item["MetadataId"])
        for nav, options in expand.items():
            if nav in ("OptionSet", "GlobalOptionSet"):
                out[nav] = _project_option_set(item[nav], options)
            else:
                where = (f"{quote(_PARENT[nav])} = ?", [item["LogicalName"]])
                child = _Scope(nav, _CHILDREN[nav], where, nav)
                sub = _select(child.declared, options.get("$select"))
                out[nav] = [self._render(child, i, sub, {})
                            for i in self._query(child, options.get("$filter"), None)]
        return out

    def _option_set(self, option_set: dict[str, Any], context: str, args: Mapping[str, str]) -> Response:
        options = _options_of(args, {"$select"})
        body = {"@odata.context": f"{self.root}$metadata#{context}/$entity",
                **_project_option_set(option_set, options)}
        return odata_response(body)


_NAVS = frozenset({"OptionSet", "GlobalOptionSet", "Attributes", "Keys", "ManyToOneRelationships",
                   "OneToManyRelationships"})


def _all_attribute_scalars() -> MetaType:
    scalars: dict[str, ColumnType] = {}
    for t in _ATTRIBUTE_TYPES.values():
        scalars.update(t.scalars)
    return MetaType("AttributeMetadata", scalars)


def no_property_of(meta: MetaType, name: str) -> ODataError:
    """The service's error for a property the addressed metadata type does not have."""
    return ODataError(400, f"Could not find a property named '{name}' on type '{meta.qualified}'.", "0x0")


def _options_of(args: Mapping[str, str], allowed: set[str]) -> dict[str, str]:
    for name in args:
        if name.startswith("$") and name not in allowed:
            raise ODataError(400, f"The query option {name} is not supported here: metadata queries take "
                             f"{', '.join(sorted(allowed))}.", "0x0")
    return dict(args)


def _select(meta: MetaType, text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    for name in names:
        if name not in meta.properties:
            raise no_property_of(meta, name)
    return names


def _expand(scope: _Scope, text: str | None) -> dict[str, dict[str, str]]:
    """`$expand` items → their options; only documented navigation properties of the type."""
    out: dict[str, dict[str, str]] = {}
    if not text:
        return out
    navs = scope.declared.navigations
    for item in split_top(text, ","):
        name, _, rest = item.strip().partition("(")
        if name not in navs:
            raise no_property_of(scope.declared, name)
        options: dict[str, str] = {}
        for part in split_top(rest[:-1], ";") if rest else []:
            key, _, value = part.strip().partition("=")
            options[key] = value
        out[name] = options
    return out


def _project_option_set(option_set: dict[str, Any], options: Mapping[str, str]) -> dict[str, Any]:
    select = options.get("$select")
    if select is None:
        return dict(option_set)
    names = [s.strip() for s in select.split(",") if s.strip()]
    for name in names:
        if name not in _OPTION_SET:
            raise ODataError(400, f"Could not find a property named '{name}' on type "
                             f"'{CRM}.OptionSetMetadata'.", "0x0")
    return {"MetadataId": option_set["MetadataId"], **{n: option_set[n] for n in names}}

