"""System query options → SQL over the store's tables, and keyset paging.

`$select/$filter/$orderby/$top/$skip/$count/$apply` are parsed for one entity (every name checked
against its columns, every literal a parameter; `$filter` through odata-query's grammar and a
subclass of its SQLite visitor), and run as one SELECT whose rows SQLite itself renders as JSON
(`json_object`), so a 5,000-row page costs no Python dictionary per row. Pages continue after the
sort values of the previous page's last row, carried in an opaque `$skiptoken`.

Example:
    >>> from dwlib.sandbox.schema import ENTITIES
    >>> q = parse_query(ENTITIES["accounts"], {"$filter": "name eq 'A'", "$select": "name"})
    >>> q.where, q.params, q.select
    (['"name" = ?'], ['A'], ['name'])
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from odata_query import ast
from odata_query import exceptions as odata_exc
from odata_query.grammar import ODataLexer, ODataParser
from odata_query.sql import AstToSqliteSqlVisitor

from .odata import BAD_QUERY, ODataError, iso_utc, no_property, split_top
from .schema import Entity, entity
from .store import quote, read_sql

_KNOWN_OPTIONS = {"$select", "$filter", "$orderby", "$top", "$skip", "$count", "$apply", "$skiptoken",
                  "$expand"}
# An enumeration literal (`Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'`) compares as its name.
_ENUM_LITERAL = re.compile(r"\b[A-Z]\w*(?:\.\w+)+'([^']*)'")
_ALIAS = re.compile(r"@([A-Za-z_]\w*)")


# --- $filter ------------------------------------------------------------------------------------


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _FilterSql(AstToSqliteSqlVisitor):
    """odata-query's SQLite visitor, bound to one entity: every identifier checked against its
    columns, every literal passed as a parameter, date-times in the store's ISO text."""

    def __init__(self, ent: Entity) -> None:
        super().__init__()
        self.columns = ent.all_columns
        self.ent = ent
        self.params: list[Any] = []

    def _param(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def visit_Identifier(self, node: ast.Identifier) -> str:
        if node.namespace or node.name not in self.columns:
            raise no_property(self.ent, ".".join((*node.namespace, node.name)))
        return quote(node.name)

    def visit_Attribute(self, node: ast.Attribute) -> str:
        # `nav/column`: the column of the row a single-valued navigation property refers to
        # (filter-rows.md, "Filter on values of related records").
        nav = node.owner.name if isinstance(node.owner, ast.Identifier) and not node.owner.namespace else None
        found = self.ent.navigation(nav) if nav else None
        target = entity(found[1][0], self.ent.service) if found else None
        if found is None or target is None or len(found[1]) != 1:
            raise ODataError(400, f"The sandbox filters across a single-valued navigation property of one "
                             f"target table only ('{node.attr}' of '{nav}').", BAD_QUERY)
        if node.attr not in target.all_columns:
            raise no_property(target, node.attr)
        return (f"(SELECT {quote(node.attr)} FROM {quote(target.table)} WHERE {quote(target.key[0])} = "
                f"{quote(self.ent.table)}.{quote(found[0].column)})")

    def visit_String(self, node: ast.String) -> str:
        return self._param(node.val)

    def visit_GUID(self, node: ast.GUID) -> str:
        return self._param(node.val.lower())

    def visit_DateTime(self, node: ast.DateTime) -> str:
        return self._param(iso_utc(node.val))

    def visit_Date(self, node: ast.Date) -> str:
        return self._param(node.val)

    def visit_Compare(self, node: ast.Compare) -> str:
        if self.ent.service == "finops":
            if isinstance(node.comparator, ast.In):
                raise ODataError(400, "Finance and operations OData does not support the 'in' "
                                 "operator: combine 'eq' comparisons with 'or'.")
            # F&O documents '*' inside an eq string as a wildcard (api-surface §3.1).
            if (isinstance(node.right, ast.String) and "*" in node.right.val
                    and isinstance(node.comparator, ast.Eq | ast.NotEq)):
                left = self.visit(node.left)
                neg = "NOT " if isinstance(node.comparator, ast.NotEq) else ""
                pattern = _like_escape(node.right.val).replace("*", "%")
                return f"{left} {neg}LIKE {self._param(pattern)} ESCAPE '\\'"
        return super().visit_Compare(node)

    def _like(self, args: Sequence[ast._Node], prefix: str, suffix: str, func: str) -> str:
        subject = self.visit(args[0])
        if not isinstance(args[1], ast.String):
            raise ODataError(400, f"The second argument of {func}() must be a string literal.", BAD_QUERY)
        return f"{subject} LIKE {self._param(prefix + _like_escape(args[1].val) + suffix)} ESCAPE '\\'"

    def sqlfunc_contains(self, *args: ast._Node) -> str:
        return self._like(args, "%", "%", "contains")

    def sqlfunc_startswith(self, *args: ast._Node) -> str:
        return self._like(args, "", "%", "startswith")

    def sqlfunc_endswith(self, *args: ast._Node) -> str:
        return self._like(args, "%", "", "endswith")

    def generic_visit(self, node: ast._Node) -> Any:
        raise ODataError(400, f"The sandbox does not support '{type(node).__name__}' in $filter.", BAD_QUERY)


def filter_sql(ent: Entity, text: str) -> tuple[str, list[Any]]:
    """`$filter` text as a parameterised SQL condition over `ent`'s table.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> filter_sql(ENTITIES["accounts"], "createdon ge 2024-01-01T00:00:00+01:00 and name eq null")
    ('"createdon" >= ? AND "name" IS NULL', ['2023-12-31T23:00:00Z'])
    """
    if ent.service == "dataverse":
        text = _ENUM_LITERAL.sub(r"'\1'", text)
    try:
        tree = ODataParser().parse(ODataLexer().tokenize(text))
    except odata_exc.ODataException as exc:
        raise ODataError(400, f"Syntax error in $filter '{text}': {exc}.", BAD_QUERY) from None
    visitor = _FilterSql(ent)
    try:
        sql = visitor.visit(tree)
    except odata_exc.ODataException as exc:
        raise ODataError(400, f"Unsupported $filter '{text}': {exc}.", BAD_QUERY) from None
    return sql, visitor.params


# --- $apply -------------------------------------------------------------------------------------

_AGG_SQL = {"sum": "SUM({})", "min": "MIN({})", "max": "MAX({})", "average": "AVG({})",
            "countdistinct": "COUNT(DISTINCT {})"}
_AGG_RE = re.compile(r"^\s*(?:(\$count)|(\w+)\s+with\s+(\w+))\s+as\s+(\w+)\s*$")


@dataclass
class Apply:
    """A parsed `$apply`: row filters, group-by columns and aggregates (alias → SQL, and alias →
    the column and method it aggregates: `("", "count")` for `$count`)."""

    groupby: list[str]
    aggregates: dict[str, str]
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)


def _call(text: str, name: str) -> str | None:
    """The argument text of `name(...)` when `text` is exactly that call."""
    text = text.strip()
    if text.startswith(name + "(") and text.endswith(")"):
        return text[len(name) + 1 : -1]
    return None


def _parse_apply(ent: Entity, text: str, where: list[str], params: list[Any]) -> Apply:
    cols = ent.all_columns
    result = Apply(groupby=[], aggregates={})
    seen_groupby = False
    for step in split_top(text, "/"):
        if (arg := _call(step, "filter")) is not None:
            if seen_groupby:
                raise ODataError(400, "The sandbox supports filter() only before groupby() in $apply.",
                                 BAD_QUERY)
            sql, p = filter_sql(ent, arg)
            where.append(sql)
            params.extend(p)
        elif (arg := _call(step, "groupby")) is not None:
            parts = split_top(arg, ",")
            group = _call("x" + parts[0].strip(), "x")
            if group is None:
                raise ODataError(400, "groupby takes a parenthesised property list: groupby((a,b)).",
                                 BAD_QUERY)
            for name in (g.strip() for g in group.split(",")):
                if name not in cols:
                    raise no_property(ent, name)
                result.groupby.append(name)
            for rest in parts[1:]:
                if (aggs := _call(rest, "aggregate")) is None:
                    raise ODataError(400, f"Unsupported groupby part '{rest.strip()}'.", BAD_QUERY)
                _parse_aggregates(ent, aggs, result)
            seen_groupby = True
        elif (arg := _call(step, "aggregate")) is not None:
            _parse_aggregates(ent, arg, result)
            seen_groupby = True
        else:
            raise ODataError(400, f"Unsupported $apply transformation '{step.strip()}': the sandbox "
                             "supports filter(...), groupby((…),aggregate(…)) and aggregate(…).", BAD_QUERY)
    return result


def _parse_aggregates(ent: Entity, text: str, into: Apply) -> None:
    for item in split_top(text, ","):
        m = _AGG_RE.match(item)
        if m is None:
            raise ODataError(400, f"Unsupported aggregate '{item.strip()}': use '$count as n' or "
                             "'column with sum|min|max|average|countdistinct as alias'.", BAD_QUERY)
        count, col, func, alias = m.groups()
        if count:
            into.aggregates[alias] = "COUNT(*)"
            into.sources[alias] = ("", "count")
            continue
        if col not in ent.all_columns:
            raise no_property(ent, col)
        if func not in _AGG_SQL:
            raise ODataError(400, f"Unsupported aggregation method '{func}'.", BAD_QUERY)
        into.aggregates[alias] = _AGG_SQL[func].format(quote(col))
        into.sources[alias] = (col, func)


# --- query options ------------------------------------------------------------------------------


@dataclass
class Query:
    """Parsed query options for one entity set, ready to run."""

    entity: Entity
    select: list[str] | None = None
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    top: int | None = None
    skip: int = 0
    count: bool = False
    apply: Apply | None = None
    skiptoken: str | None = None
    expand: str | None = None  # the `$expand` text, where the caller serves it

    def restrict(self, sql: str, params: Sequence[Any]) -> None:
        """Add a condition every returned row must meet (e.g. F&O company scoping)."""
        self.where.append(sql)
        self.params.extend(params)

    @property
    def where_sql(self) -> str:
        return " AND ".join(f"({w})" for w in self.where) or "1"


def _int_option(args: Mapping[str, str], name: str) -> int | None:
    raw = args.get(name)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise ODataError(400, f"Invalid value '{raw}' for {name}: use a non-negative integer.", BAD_QUERY)
    return int(raw)


def _aliases(text: str, args: Mapping[str, str]) -> str:
    """`text` with each parameter alias (`@table`) replaced by its value from `args`
    (`&@table='account'`), outside string literals."""
    out, last = [], 0
    quoted = _inside_quotes(text)
    for m in _ALIAS.finditer(text):
        if m.start() in quoted:
            continue
        value = args.get(m.group(0))
        if value is None:
            raise ODataError(400, f"The parameter alias {m.group(0)} in $filter has no value: add "
                             f"&{m.group(0)}=<value> to the query.", BAD_QUERY)
        out += [text[last:m.start()], value]
        last = m.end()
    return "".join(out) + text[last:]


def _inside_quotes(text: str) -> set[int]:
    """The positions of the characters inside quoted literals."""
    inside, quoted = set(), False
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            inside.add(i)
    return inside


def parse_query(ent: Entity, args: Mapping[str, str], *, allow_skip: bool = False,
                allow_expand: bool = False) -> Query:
    """The system query options in `args` (a request's query parameters) for `ent`.

    Unknown `$` options, `$skip` and `$expand` where the service (or the sandbox) refuses them
    are 400s; parameter aliases (`@name`) are substituted into `$filter`; other parameters
    (`cross-company`, `tag`, …) are left to the caller.

    >>> from dwlib.sandbox.schema import ENTITIES
    >>> parse_query(ENTITIES["accounts"], {"$orderby": "name desc"}).order
    [('name', True), ('accountid', False)]
    """
    for name in args:
        if name.startswith("$") and name not in _KNOWN_OPTIONS:
            raise ODataError(400, f"The query parameter {name} is not supported by the sandbox.", BAD_QUERY)
    if "$expand" in args and not allow_expand:
        raise ODataError(400, "The query parameter $expand is not supported by the sandbox here.", BAD_QUERY)
    if "$skip" in args and not allow_skip:
        raise ODataError(400, "The query parameter $skip is not supported: page with "
                         "Prefer: odata.maxpagesize and follow @odata.nextLink.", BAD_QUERY)
    cols = ent.all_columns
    q = Query(entity=ent, skiptoken=args.get("$skiptoken"), expand=args.get("$expand"))
    if (sel := args.get("$select")) is not None:
        q.select = list(dict.fromkeys(s.strip() for s in sel.split(",") if s.strip()))
        for name in q.select:
            if name not in cols:
                raise no_property(ent, name)
    if (flt := args.get("$filter")) is not None:
        sql, params = filter_sql(ent, _aliases(flt, args))
        q.restrict(sql, params)
    if (app := args.get("$apply")) is not None:
        q.apply = _parse_apply(ent, app, q.where, q.params)
    allowed = set(cols) if q.apply is None else {*q.apply.groupby, *q.apply.aggregates}
    for item in filter(None, (o.strip() for o in args.get("$orderby", "").split(","))):
        name, _, direction = item.partition(" ")
        direction = direction.strip().lower()
        if name not in allowed:
            raise no_property(ent, name)
        if direction not in ("", "asc", "desc"):
            raise ODataError(400, f"Bad $orderby direction '{direction}': use asc or desc.", BAD_QUERY)
        q.order.append((name, direction == "desc"))
    if q.apply is None:
        # The primary key ends every ordering, so the keyset of the last row is unique.
        q.order += [(k, False) for k in ent.key if k not in {c for c, _ in q.order}]
    q.top = _int_option(args, "$top")
    q.skip = _int_option(args, "$skip") or 0
    count = args.get("$count", "false").lower()
    if count not in ("true", "false"):
        raise ODataError(400, f"Invalid value '{count}' for $count: use true or false.", BAD_QUERY)
    q.count = count == "true"
    return q


# --- row JSON and paging ------------------------------------------------------------------------


def row_json_sql(
    ent: Entity, columns: Sequence[str], etag_sql: str | None, embedded: frozenset[str] = frozenset()
) -> str:
    """A SQL expression that renders one row as JSON (`@odata.etag` first when given); booleans
    become true/false, `embedded` columns hold JSON to inline rather than strings. F&O fields are
    never null ("A field … always has a type and a value", X++ null values): an empty string or 0."""
    types = ent.all_columns
    args = [] if etag_sql is None else ["'@odata.etag'", etag_sql]
    for c in columns:
        expr = read_sql(ent, c)
        if types[c] == "bool":
            expr = f"json(CASE WHEN {expr} IS NULL THEN NULL WHEN {expr} THEN 'true' ELSE 'false' END)"
        elif c in embedded:
            expr = f"json({expr})"
        args += [f"'{c}'", expr]
    return _json_object(args)


_PAIRS_PER_CALL = 60  # SQLite functions take at most 127 arguments (SQLITE_MAX_FUNCTION_ARG)


def _json_object(args: Sequence[str]) -> str:
    """`json_object(k1, v1, …)` for any number of pairs: wide tables (a hundred mapped columns)
    exceed SQLite's argument limit, so the further pairs are added with `json_insert`, which keeps
    their order and SQL NULL as JSON null.

    >>> import sqlite3
    >>> pairs = [x for i in range(70) for x in (f"'c{i}'", str(i))]
    >>> sqlite3.connect(":memory:").execute(f"SELECT {_json_object(pairs)}").fetchone()[0][-9:]
    '"c69":69}'
    """
    step = 2 * _PAIRS_PER_CALL
    sql = f"json_object({', '.join(args[:step])})"
    for start in range(step, len(args), step):
        chunk = args[start:start + step]
        pairs = zip(chunk[::2], chunk[1::2], strict=True)
        inserts = [f"'$.\"{key[1:-1]}\"', {value}" for key, value in pairs]
        sql = f"json_insert({sql}, {', '.join(inserts)})"
    return sql


@dataclass
class Page:
    """One page of a collection: each row as JSON text, the next page's token, the count."""

    items: list[str]
    next_token: str | None
    count: int | None


def _encode_token(order: Sequence[tuple[str, bool]], values: Sequence[Any], remaining: int | None) -> str:
    raw = json.dumps({"o": [[c, d] for c, d in order], "v": list(values), "r": remaining})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, order: Sequence[tuple[str, bool]]) -> tuple[list[Any], int | None]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if [tuple(o) for o in data["o"]] != [tuple(o) for o in order] or len(data["v"]) != len(order):
            raise ValueError("token of another query")
        return list(data["v"]), data["r"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ODataError(400, "The $skiptoken is not valid for this query: follow the @odata.nextLink "
                         "the service returned, unchanged.", BAD_QUERY) from None


def _after(order: Sequence[tuple[str, bool]], values: Sequence[Any]) -> tuple[str, list[Any]]:
    """The rows that sort strictly after `values` (SQLite: NULLs first ascending, last descending)."""
    if all(not d for _, d in order) and all(v is not None for v in values):
        # Row values let SQLite walk the index of an all-ascending key directly.
        cols = ", ".join(quote(c) for c, _ in order)
        return f"({cols}) > ({', '.join('?' for _ in values)})", list(values)
    ors, params = [], []
    for i, (col, desc) in enumerate(order):
        conds = [f"{quote(c)} IS ?" for c, _ in order[:i]]
        p = list(values[:i])
        v, c = values[i], quote(col)
        if not desc:
            if v is None:
                conds.append(f"{c} IS NOT NULL")
            else:
                conds.append(f"{c} > ?")
                p.append(v)
        else:
            if v is None:
                continue  # nothing sorts after NULL in a descending column
            conds.append(f"({c} < ? OR {c} IS NULL)")
            p.append(v)
        ors.append("(" + " AND ".join(conds) + ")")
        params += p
    return ("(" + " OR ".join(ors) + ")" if ors else "0"), params


def _order_sql(order: Sequence[tuple[str, bool]]) -> str:
    return ", ".join(f"{quote(c)} {'DESC' if d else 'ASC'}" for c, d in order)


def count_rows(conn: sqlite3.Connection, q: Query) -> int:
    """How many rows match the query's conditions."""
    sql = f"SELECT COUNT(*) FROM {quote(q.entity.table)} WHERE {q.where_sql}"
    return int(conn.execute(sql, q.params).fetchone()[0])


def fetch_page(
    conn: sqlite3.Connection,
    q: Query,
    columns: Sequence[str],
    page_size: int,
    etag_sql: str | None,
    embedded: frozenset[str] = frozenset(),
) -> Page:
    """One page of `q` (continuing after `q.skiptoken`) rendered with `columns`.

    Keyset paging: the token carries the sort values of the page's last row, so rows inserted
    or deleted meanwhile never make a later page skip or repeat a row.
    """
    if q.apply is not None:
        return Page(_aggregate(conn, q), None, None)
    where, params = list(q.where), list(q.params)
    remaining = q.top
    offset = q.skip
    if q.skiptoken:
        values, remaining = _decode_token(q.skiptoken, q.order)
        cond, p = _after(q.order, values)
        where.append(cond)
        params += p
        offset = 0
    limit = page_size if remaining is None else min(page_size, remaining)
    order_cols = [c for c, _ in q.order]
    sql = (
        f"SELECT {row_json_sql(q.entity, columns, etag_sql, embedded)}, "
        f"{', '.join(quote(c) for c in order_cols)} FROM {quote(q.entity.table)} "
        f"WHERE {' AND '.join(f'({w})' for w in where) or '1'} "
        f"ORDER BY {_order_sql(q.order)} LIMIT ? OFFSET ?"
    )
    rows = conn.execute(sql, [*params, limit + 1, offset]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    left = None if remaining is None else remaining - len(rows)
    token = None
    if more and rows and (left is None or left > 0):
        token = _encode_token(q.order, rows[-1][1:], left)
    return Page([r[0] for r in rows], token, count_rows(conn, q) if q.count else None)


def _aggregate(conn: sqlite3.Connection, q: Query) -> list[str]:
    assert q.apply is not None
    types = q.entity.all_columns
    args = []
    for g in q.apply.groupby:
        expr = quote(g)
        if types[g] == "bool":
            expr = f"json(CASE WHEN {expr} IS NULL THEN NULL WHEN {expr} THEN 'true' ELSE 'false' END)"
        args += [f"'{g}'", expr]
    for alias, expr in q.apply.aggregates.items():
        args += [f"'{alias}'", expr]
    group = ", ".join(quote(g) for g in q.apply.groupby)
    exprs = {**{g: quote(g) for g in q.apply.groupby}, **q.apply.aggregates}
    order = ", ".join(f"{exprs[c]} {'DESC' if d else 'ASC'}" for c, d in q.order) or group
    sql = f"SELECT json_object({', '.join(args)}) FROM {quote(q.entity.table)} WHERE {q.where_sql}"
    if group:
        sql += f" GROUP BY {group}"
    if order:
        sql += f" ORDER BY {order}"
    if q.top is not None:
        sql += f" LIMIT {int(q.top)}"
    return [r[0] for r in conn.execute(sql, q.params)]


def key_where(key: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A SQL condition (and its parameters) matching the columns of `key`.

    >>> key_where({"a": 1, "b": None})
    ('"a" = ? AND "b" IS NULL', [1])
    """
    where = " AND ".join(f"{quote(k)} IS NULL" if v is None else f"{quote(k)} = ?" for k, v in key.items())
    return where, [v for v in key.values() if v is not None]


def fetch_one(
    conn: sqlite3.Connection,
    ent: Entity,
    key: Mapping[str, Any],
    columns: Sequence[str],
    etag_sql: str | None,
    restrict: tuple[str, Sequence[Any]] | None = None,
    embedded: frozenset[str] = frozenset(),
) -> str | None:
    """The row at `key` (primary or alternate) as JSON text, or None."""
    where, params = key_where(key)
    if restrict is not None:
        where += f" AND ({restrict[0]})"
        params += list(restrict[1])
    sql = (f"SELECT {row_json_sql(ent, columns, etag_sql, embedded)} FROM {quote(ent.table)} "
           f"WHERE {where} ORDER BY {_order_sql([(k, False) for k in ent.key])} LIMIT 1")
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]
