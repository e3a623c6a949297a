"""How F&O data management writes numbers and dates in a package: per language locale.

A source data format's **Language locale** (Data management > Source data formats > Regional
settings) decides how DMF formats and parses numbers and dates in files: en-us writes `1234.5` and
`1/31/2024`, nl-NL `1234,5` and `31-01-2024`. The initial sync needs en-us ("The issue is with the
Language locale value under Source data formats in the Data management module. Change the value of
the Language locale field to en-us", dual-write-troubleshooting-initial-sync); a migration reads and
writes packages in whatever locale the format has. Both the runbooks and the sandbox use these
definitions, so a package the sandbox writes in nl-NL is one the runbook must read in nl-NL.

Parsing is strict: a number must use the locale's decimal separator and, if any, group separators
every three digits (`1.234,5` in nl-NL; `1234.5` is not an nl-NL number), so a package read in the
wrong locale fails instead of moving wrong amounts.

Example:
    >>> nl = locale("nl-NL")
    >>> nl.format_number(1234.5), nl.parse_number("1.234,5"), nl.format_date("2024-01-31T12:00:00Z")
    ('1234,5', Decimal('1234.5'), '31-01-2024')
    >>> locale("en-us").parse_number("1234,5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dwlib.catalog.locales.LocaleError: '1234,5' is not a number in en-us (decimal separator '.', ...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

INITIAL_SYNC_LOCALE = "en-us"  # the Language locale the initial sync needs (troubleshooting page)
LOCALE_DOC = ("https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/dual-write/"
              "dual-write-troubleshooting-initial-sync#float-data-type-that-has-a-zero-value-cant-be-synchronized")
LOCALE_FIX = ("in finance and operations, Data management > Source data formats > {format} > Regional "
              "settings: set Language locale to en-us, as the initial-sync troubleshooting page says")


class LocaleError(ValueError):
    """A value that is not a number or date in the locale, or a locale this catalogue does not know."""


@dataclass(frozen=True)
class Locale:
    """The number and date formats of one language locale (.NET's culture data for it)."""

    name: str
    decimal: str
    group: str
    date_order: str  # "mdy" or "dmy"
    date_separator: str

    def format_number(self, value: Any) -> str:
        """A number as DMF writes it (no group separators).

        >>> locale("nl-nl").format_number(0.92), locale("en-us").format_number(500.0)
        ('0,92', '500')
        """
        text = format(Decimal(str(value)).normalize(), "f")
        return text.replace(".", self.decimal)

    def parse_number(self, text: str) -> Decimal:
        """The number `text` holds in this locale; LocaleError when it is not one."""
        body = text.strip()
        if not self._number.fullmatch(body):
            raise LocaleError(f"{text!r} is not a number in {self.name} (decimal separator "
                              f"{self.decimal!r}, group separator {self.group!r})")
        try:
            return Decimal(body.replace(self.group, "").replace(self.decimal, "."))
        except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
            raise LocaleError(f"{text!r} is not a number in {self.name}") from None

    @cached_property
    def _number(self) -> re.Pattern[str]:
        g, d = re.escape(self.group), re.escape(self.decimal)
        return re.compile(rf"[-+]?(\d+|\d{{1,3}}({g}\d{{3}})+)({d}\d+)?")

    def format_date(self, value: str | date) -> str:
        """A date (an ISO date or date-time, as OData carries it) as DMF writes it in this locale."""
        day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        parts = (day.month, day.day) if self.date_order == "mdy" else (day.day, day.month)
        return self.date_separator.join([f"{parts[0]:02d}", f"{parts[1]:02d}", f"{day.year:04d}"])

    def parse_date(self, text: str) -> date:
        """The date `text` holds in this locale; LocaleError when it is not one.

        >>> locale("nl-nl").parse_date("31-1-2024"), locale("en-us").parse_date("1/31/2024")
        (datetime.date(2024, 1, 31), datetime.date(2024, 1, 31))
        """
        sep = re.escape(self.date_separator)
        m = re.fullmatch(rf"(\d{{1,2}}){sep}(\d{{1,2}}){sep}(\d{{4}})", text.strip())
        try:
            if m is None:
                raise ValueError
            first, second, year = (int(x) for x in m.groups())
            month, day = (first, second) if self.date_order == "mdy" else (second, first)
            return date(year, month, day)
        except ValueError:
            order = "month/day/year" if self.date_order == "mdy" else "day-month-year"
            raise LocaleError(f"{text!r} is not a date in {self.name} ({order})") from None


_LOCALES = {loc.name: loc for loc in (
    Locale("en-us", ".", ",", "mdy", "/"),
    Locale("en-gb", ".", ",", "dmy", "/"),
    Locale("nl-nl", ",", ".", "dmy", "-"),
    Locale("nl-be", ",", ".", "dmy", "/"),
    Locale("de-de", ",", ".", "dmy", "."),
    Locale("fr-fr", ",", "\u202f", "dmy", "/"),
)}


def locale(name: str) -> Locale:
    """The locale `name` (case-insensitive, e.g. nl-NL); LocaleError naming the known ones.

    >>> locale("NL-nl").decimal
    ','
    """
    found = _LOCALES.get(name.strip().lower())
    if found is None:
        raise LocaleError(f"unknown language locale {name!r}: this catalogue knows {', '.join(_LOCALES)}")
    return found


def iso_date(value: date | datetime) -> str:
    """The ISO date F&O OData and Dataverse date-only columns carry.

    >>> iso_date(date(2024, 1, 31))
    '2024-01-31'
    """
    return value.isoformat()[:10]
