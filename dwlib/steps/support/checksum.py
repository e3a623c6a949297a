"""Checksums of a map's column values on both sides, computed page by page, and the rows that differ.

Verify compares values, not only counts and keys. Each row the map syncs is brought to one form
(`RowMap.finops_view` / `dataverse_view`: the two-way mapped columns, value maps applied, lookups
by the key of the row they refer to, numbers by value, text trimmed), hashed with its key, and the
hashes are summed per key bucket. The sums do not depend on the order rows arrive in, so each side
streams page after page and keeps only `BUCKETS` numbers: equal data gives equal checksums on both
sides, whatever the order and representation.

When the sums of a bucket differ, a second pass reads both sides again and keeps the rows of at
most `SAMPLE_BUCKETS` differing buckets (a small share of the table), compares them row by row and
returns the rows whose values differ, with both sides' values: the sample of the evidence.

Example:
    >>> a, b = Checksums(), Checksums()
    >>> a.add("us-1", ["contoso", "invoice"]); a.add("us-2", ["fabrikam", "no"])
    >>> b.add("us-2", ["fabrikam", "no"]); b.add("us-1", ["contoso", "invoice"])
    >>> a.total == b.total, a.differing(b)
    (True, [])
    >>> b.add("us-3", ["x", "no"]); len(a.differing(b))
    1
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BUCKETS = 256  # key buckets per side: the memory a checksum takes, whatever the table's size
SAMPLE_BUCKETS = 8  # differing buckets re-read for the sample (1/32 of the rows at most)
_MOD = 2 ** 64


def bucket_of(key: str) -> int:
    """The bucket of a (normalised) key.

    >>> bucket_of("us-000001") == bucket_of("us-000001")
    True
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % BUCKETS


def digest(key: str, view: Sequence[str]) -> int:
    """A row's hash: its key and its values in canonical form."""
    text = json.dumps([key, list(view)], ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class Checksums:
    """The sum of row hashes per key bucket of one side (order-independent, O(BUCKETS) memory)."""

    sums: list[int] = field(default_factory=lambda: [0] * BUCKETS)

    def add(self, key: str, view: Sequence[str]) -> None:
        b = bucket_of(key)
        self.sums[b] = (self.sums[b] + digest(key, view)) % _MOD

    @property
    def total(self) -> str:
        """The side's checksum, as hex."""
        return f"{sum(self.sums) % _MOD:016x}"

    def differing(self, other: Checksums) -> list[int]:
        """The buckets whose sums differ between the sides."""
        return [b for b, (x, y) in enumerate(zip(self.sums, other.sums, strict=True)) if x != y]


@dataclass(frozen=True)
class Difference:
    """One row whose values differ: its key and, per differing column, both sides' values."""

    map: str
    company: str
    key: str
    columns: tuple[tuple[str, str, str], ...]  # (column as "F&O field ↔ Dataverse column", F&O, Dataverse)

    def rows(self) -> Iterable[dict[str, str]]:
        """The evidence CSV's rows: one per differing column."""
        for column, finops, dataverse in self.columns:
            yield {"map": self.map, "company": self.company, "key": self.key, "column": column,
                   "finops_value": finops, "dataverse_value": dataverse}


Views = Iterable[tuple[str, str, list[str]]]  # (normalised key, key as stored, canonical values)


def differences(map_name: str, company: str, names: Sequence[str], buckets: Iterable[int],
                finops: Views, dataverse: Views, *, limit: int) -> tuple[list[Difference], int]:
    """The second pass: rows (normalised key, key as stored, canonical values) of both sides,
    streamed again; the rows of `buckets` present on both sides whose values differ — at most
    `limit` of them kept, all of them counted. `names` label the columns of the views.

    >>> fo = [("us-1", "US-1", ["a", "no"])]; dv = [("us-1", "US-1", ["a", "yes"])]
    >>> found, count = differences("m", "USMF", ["Name", "Hold"], [bucket_of("us-1")], fo, dv, limit=5)
    >>> count, found[0].columns
    (1, (('Hold', 'no', 'yes'),))
    """
    wanted = set(buckets)
    kept: dict[str, tuple[str, list[str]]] = {k: (stored, view) for k, stored, view in finops
                                              if bucket_of(k) in wanted}
    found: list[Difference] = []
    count = 0
    for k, _, view in dataverse:
        other = kept.get(k)
        if other is None or other[1] == view:
            continue
        count += 1
        if len(found) < limit:
            cols = tuple((n, a, b) for n, a, b in zip(names, other[1], view, strict=True) if a != b)
            found.append(Difference(map_name, company, other[0], cols))
    return found, count


def labels(rows: Sequence[Any]) -> list[str]:
    """Column labels of compared catalogue rows: `F&O field ↔ Dataverse column`.

    >>> from dwlib.catalog import ColumnMapping
    >>> labels([ColumnMapping("OnHoldStatus", "><", "msdyn_onholdstatus")])
    ['OnHoldStatus ↔ msdyn_onholdstatus']
    """
    return [f"{r.finops} ↔ {r.dataverse}" for r in rows]
