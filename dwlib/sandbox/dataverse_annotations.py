"""The annotations Dataverse adds to rows when a client asks for them (`Prefer:
odata.include-annotations`), as select-columns.md documents them.

- `OData.Community.Display.V1.FormattedValue` — formatted values: the label of a choice, status
  and status reason, and yes/no value; the primary name of a lookup's row; a currency value with
  its currency's symbol; a date in the user's time zone (the sandbox's users are in UTC, en-US).
- `Microsoft.Dynamics.CRM.associatednavigationproperty` and `…lookuplogicalname` — of a lookup:
  the single-valued navigation property that reaches its row and that row's table.

Each annotation comes before its property, `<property>@<annotation>`, as the documented responses
show; the preference names them (`"*"` for all, `Microsoft.Dynamics.CRM.*` for a namespace, a
leading `-` to leave one out). Other columns (text, whole numbers, keys) carry none, as on the page;
`$apply` aggregates carry theirs (a count as a number, a sum of money as money, a date as a date:
aggregate-data.md).

Example:
    >>> requested('OData.Community.Display.V1.FormattedValue') == {FORMATTED}
    True
    >>> sorted(requested("*")) == sorted(ANNOTATIONS)
    True
    >>> money(20000, "USD"), when("2023-04-07T21:59:01Z")
    ('$20,000.00', '4/7/2023 9:59 PM')
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from .dataverse_metadata import attribute_type, choice_label, primary_name
from .schema import ENTITIES, Entity, Lookup, entity
from .store import quote

FORMATTED = "OData.Community.Display.V1.FormattedValue"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"
LOOKUP_TABLE = "Microsoft.Dynamics.CRM.lookuplogicalname"
ANNOTATIONS = (FORMATTED, NAVIGATION, LOOKUP_TABLE)
PREFERENCE = "odata.include-annotations"
_CHOICES = frozenset({"Picklist", "State", "Status"})
# Currency symbols of the ISO codes the sandbox seeds (Dataverse keeps a symbol per currency row).
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "CHF": "CHF "}


def requested(preference: str | None) -> frozenset[str]:
    """The annotations of `ANNOTATIONS` a preference's value asks for.

    >>> sorted(requested("Microsoft.Dynamics.CRM.*,-Microsoft.Dynamics.CRM.lookuplogicalname"))
    ['Microsoft.Dynamics.CRM.associatednavigationproperty']
    """
    if not preference:
        return frozenset()
    items = [i.strip() for i in preference.strip('"').split(",") if i.strip()]
    wanted = {a for a in ANNOTATIONS if any(_matches(i, a) for i in items if not i.startswith("-"))}
    return frozenset(a for a in wanted if not any(_matches(i[1:], a) for i in items if i.startswith("-")))


def _matches(pattern: str, annotation: str) -> bool:
    if pattern in ("*", annotation):
        return True
    return pattern.endswith(".*") and annotation.startswith(pattern[:-1])


def money(value: float, iso_code: str | None) -> str:
    """A currency value as en-US shows it, with its currency's symbol.

    >>> money(-5, "EUR"), money(1.5, None)
    ('-€5.00', '1.50')
    """
    symbol = _SYMBOLS.get(iso_code or "", f"{iso_code} " if iso_code else "")
    return f"{'-' if value < 0 else ''}{symbol}{abs(value):,.2f}"


def when(value: str) -> str:
    """A date and time as en-US shows it (M/D/YYYY h:mm AM), in the user's time zone (UTC here).

    >>> when("2024-01-05T00:07:00Z")
    '1/5/2024 12:07 AM'
    """
    d = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return f"{d.month}/{d.day}/{d.year} {d.hour % 12 or 12}:{d.minute:02d} {'AM' if d.hour < 12 else 'PM'}"


class Annotator:
    """Adds the requested annotations to the rows of one table."""

    def __init__(self, conn: sqlite3.Connection, ent: Entity, names: Iterable[str],
                 aggregates: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.conn = conn
        self.ent = ent
        self.names = frozenset(names)
        self.aggregates = dict(aggregates or {})  # `$apply` alias → (column, method)
        self._lookups = {lk.column: lk for lk in ent.lookups}

    def text(self, row_json: str) -> str:
        """A row's JSON text with its annotations."""
        return json.dumps(self.row(json.loads(row_json)), separators=(",", ":"), ensure_ascii=False)

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row with its annotations, each just before its property."""
        out: dict[str, Any] = {}
        for name, value in row.items():
            if value is not None and "@" not in name:
                out.update({f"{name}@{a}": v for a, v in self._annotations(row, name, value).items()})
            out[name] = value
        return out

    def _annotations(self, row: dict[str, Any], name: str, value: Any) -> dict[str, str]:
        lookup = self._lookups.get(name)
        if lookup is not None:
            return self._lookup(lookup, str(value))
        if FORMATTED not in self.names:
            return {}
        if name in self.aggregates:
            return {FORMATTED: self._aggregate(name, value)}
        if name not in self.ent.columns:
            return {}
        kind = attribute_type(self.ent, name)
        if kind in _CHOICES:
            text = choice_label(self.ent, name, value)
        elif kind == "Boolean":
            text = "Yes" if value else "No"
        elif kind == "Money":
            text = money(value, self._currency(row))
        elif kind == "DateTime":
            text = when(value)
        else:
            return {}
        return {FORMATTED: text} if text is not None else {}

    def _aggregate(self, alias: str, value: Any) -> str:
        """An aggregate formatted as its column is (a count as a number): aggregate-data.md."""
        column, method = self.aggregates[alias]
        kind = attribute_type(self.ent, column) if column in self.ent.columns else ""
        if method in ("count", "countdistinct") or kind not in ("Money", "DateTime"):
            return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
        return money(value, self._currency({})) if kind == "Money" else when(value)

    def _lookup(self, lookup: Lookup, row_id: str) -> dict[str, str]:
        for nav, targets in lookup.navigations().items():
            for target in targets:
                ent = entity(target, "dataverse")
                if ent is None:
                    continue
                name_column = primary_name(ent)
                found = self.conn.execute(
                    f"SELECT {quote(name_column) if name_column else 'NULL'} FROM {quote(ent.table)} "
                    f"WHERE {quote(ent.key[0])} = ?", [row_id]).fetchone()
                if found is None:
                    continue
                out = {NAVIGATION: nav, LOOKUP_TABLE: ent.logical_name}
                if found[0] is not None:
                    out[FORMATTED] = found[0]
                return {a: v for a, v in out.items() if a in self.names}
        return {}

    def _currency(self, row: dict[str, Any]) -> str | None:
        """The ISO code of the row's currency (a selected money column brings its
        `_transactioncurrencyid_value`), else of the organization's base currency."""
        currency = row.get("_transactioncurrencyid_value")
        if currency is None:
            found = self.conn.execute(f"SELECT basecurrencyid FROM {quote(ENTITIES['organizations'].table)} "
                                      "LIMIT 1").fetchone()
            currency = found[0] if found else None
        currencies = ENTITIES["transactioncurrencies"]
        code = self.conn.execute(f"SELECT isocurrencycode FROM {quote(currencies.table)} "
                                 f"WHERE {quote(currencies.key[0])} = ?", [currency]).fetchone()
        return code[0] if code else None
