"""The dual-write runtime's limits: the documented ones (`dwlib.catalog`) and the sandbox's pace.

Example:
    >>> lim = RuntimeLimits.documented(); lim.live_transaction_ms, lim.row_ms
    (120000, 0)
    >>> elapsed_ms(0.25, rows=10, lim=RuntimeLimits.documented(row_ms=5))
    300.0
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dwlib import catalog


@dataclasses.dataclass(frozen=True)
class RuntimeLimits(catalog.Limits):
    """The documented limits, and `row_ms`: milliseconds the sandbox adds per row to the time of a
    live-sync transaction and of a finance and operations export, as a slower environment would
    take (plug-ins, `postLoad` virtual fields), so tests meet the time limits without waiting."""

    row_ms: int = 0

    @classmethod
    def documented(cls, **overrides: Any) -> RuntimeLimits:
        return cls(**{**dataclasses.asdict(catalog.limits()), **overrides})


def elapsed_ms(measured_s: float, *, rows: int, lim: RuntimeLimits) -> float:
    """The time a transaction or export of `rows` rows counts: measured, plus `row_ms` a row."""
    return measured_s * 1000 + rows * lim.row_ms
