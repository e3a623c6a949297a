"""`$expand` on Dataverse record queries (join-tables.md).

Single-valued navigation properties (lookups) expand to the related row, or null: its selected
columns and primary key, without an ETag, with nested `$select`/`$expand`. Collection-valued ones
(the rows of another table whose lookup refers to this row, named by the relationship, e.g.
`contact_customer_accounts`) expand to a list of rows with `@odata.etag`, the selected columns,
the referencing lookup column and the primary key, under `$select`, `$filter`, `$orderby` and
`$top`, followed by `<name>@odata.nextLink`, the URL of that filtered collection. `$top` and
`$orderby` are refused where the service refuses them (many-to-one, or with a nested `$expand`).

Example:
    >>> from dwlib.sandbox.schema import ENTITIES
    >>> [e.name for e in parse_expand(ENTITIES["accounts"], "primarycontactid($select=fullname)")]
    ['primarycontactid']
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .odata import BAD_QUERY, ODataError, no_property, query_string, split_top
from .odata_sql import fetch_one, fetch_page, parse_query
from .schema import Entity, Lookup, collection, entity
from .store import quote

_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$expand")
_SINGLE_ONLY = ("Only $select and $filter clause can be provided while doing $expand on many-to-one "
                "relationship or nested one-to-many relationship.")


@dataclass
class Expand:
    """One `$expand` item, resolved against the schema."""

    name: str
    target: Entity  # the table of the related rows
    options: dict[str, str]  # its nested $select/$filter/$orderby/$top
    nested: list[Expand] = field(default_factory=list)
    single: tuple[Lookup, tuple[str, ...]] | None = None  # lookup and the entity sets it may refer to
    many: Lookup | None = None  # the target's lookup that refers back to the expanded row

    @property
    def select(self) -> list[str] | None:
        text = self.options.get("$select")
        return None if text is None else [s.strip() for s in text.split(",") if s.strip()]

    def shape(self) -> str:
        """This item as `@odata.context` shows it: `name(col,…,nested(…))`."""
        inner = [*(self.select or []), *(n.shape() for n in self.nested)]
        return f"{self.name}({','.join(inner)})" if inner else self.name


def parse_expand(ent: Entity, text: str) -> list[Expand]:
    """The `$expand` option of a query of `ent`, each navigation property checked."""
    items = []
    for raw in split_top(text, ","):
        name, paren, rest = raw.strip().partition("(")
        if paren and not rest.endswith(")"):
            raise ODataError(400, f"Bad $expand item '{raw.strip()}': options go in parentheses, separated "
                             "by ';'.", BAD_QUERY)
        options: dict[str, str] = {}
        for part in split_top(rest[:-1], ";") if paren else []:
            key, _, value = part.strip().partition("=")
            if key not in _OPTIONS:
                raise ODataError(400, f"The option {key} is not supported inside $expand: use "
                                 f"{', '.join(_OPTIONS)}.", BAD_QUERY)
            options[key] = value
        single = ent.navigation(name)
        many = collection(ent, name) if single is None else None
        if single is None and many is None:
            raise no_property(ent, name)
        target = _entity(single[1][0]) if single is not None else many[0]  # type: ignore[index]
        nested = parse_expand(target, options.pop("$expand")) if "$expand" in options else []
        if (single is not None or nested) and ("$top" in options or "$orderby" in options):
            raise ODataError(400, _SINGLE_ONLY, BAD_QUERY)
        if many is not None and nested:
            raise ODataError(400, "The sandbox does not emulate a nested $expand inside a collection-valued "
                             "$expand (it pages the expanded rows there); expand one level.", BAD_QUERY)
        parse_query(target, {k: v for k, v in options.items() if k != "$expand"})  # checks every name
        items.append(Expand(name, target, options, nested, single, many[1] if many else None))
    return items


def _entity(name: str) -> Entity:
    found = entity(name, "dataverse")
    assert found is not None, name
    return found


def lookup_columns(expands: list[Expand]) -> list[str]:
    """The lookup columns a row must carry for its single-valued expansions."""
    return [e.single[0].column for e in expands if e.single is not None]


def apply(conn: sqlite3.Connection, root: str, ent: Entity, row: dict[str, Any], expands: list[Expand],
          etag_sql: str) -> dict[str, Any]:
    """`row` (of `ent`) with each expansion added."""
    for e in expands:
        if e.single is not None:
            lk, targets = e.single
            fk = row.get(lk.column)
            row[e.name] = _related(conn, root, targets, fk, e, etag_sql) if fk else None
            continue
        assert e.many is not None
        pk = row[ent.key[0]]
        args = {k: v for k, v in e.options.items()}
        q = parse_query(e.target, args)
        q.restrict(f"{quote(e.many.column)} = ?", [pk])
        columns = list(dict.fromkeys([*(q.select or e.target.all_columns), e.many.column,
                                      *e.target.key]))
        page = fetch_page(conn, q, columns, 5000, etag_sql)
        row[e.name] = [json.loads(text) for text in page.items]
        suffix = f"?{query_string(list(args.items()))}" if args else ""
        row[f"{e.name}@odata.nextLink"] = f"{root}{ent.name}({pk})/{e.name}{suffix}"
    return row


def _related(conn: sqlite3.Connection, root: str, targets: tuple[str, ...], fk: str, e: Expand,
             etag_sql: str) -> dict[str, Any] | None:
    for name in targets:  # a multi-table lookup's id names a row of exactly one of its targets
        target = _entity(name)
        select = e.select
        shown = list(dict.fromkeys([*(select or target.all_columns), *target.key]))
        hidden = [c for c in lookup_columns(e.nested) if c not in shown]
        text = fetch_one(conn, target, {target.key[0]: fk}, shown + hidden, None)
        if text is not None:
            found = apply(conn, root, target, json.loads(text), e.nested, etag_sql)
            for column in hidden:
                found.pop(column, None)
            return found
    return None
