"""Known dual-write errors: documented error text → meaning, fix and documentation page.

Example:
    >>> e = match_error("Error Exceeds the maximum partitions allowed for mapping DWM-1-2")
    >>> e.id, e.doc_url.endswith("/initial-sync-guidance")
    ('too-many-legal-entities', True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

DOCS_ROOT = "https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/dual-write/"


@dataclass(frozen=True)
class KnownError:
    """One documented error: how to recognise it, what it means, how to fix it, where it is described."""

    id: str
    phase: str  # setup | solutions | initial-sync | live-sync
    pattern: str
    meaning: str
    fix: str
    doc: str
    source: str = "docs"  # "sandbox" where the docs give no wording and the sandbox's text is used

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE | re.DOTALL)

    @property
    def doc_url(self) -> str:
        """The Microsoft Learn page describing the error (`doc` is a dual-write page or a full URL)."""
        return self.doc if self.doc.startswith("https://") else DOCS_ROOT + self.doc

    def remediation(self) -> str:
        """One line for a consultant: meaning, fix and the page to read.

        >>> known_error("too-many-lookups").remediation().startswith("The map has 10 or more")
        True
        """
        return f"{self.meaning} Fix: {self.fix} See {self.doc_url}"


@cache
def known_errors() -> tuple[KnownError, ...]:
    """Every known error of the catalogue, in catalogue order (most specific first)."""
    text = resources.files("dwlib.catalog").joinpath("known_errors.yaml").read_text(encoding="utf-8")
    errors = tuple(KnownError(**raw) for raw in yaml.safe_load(text)["errors"])
    for e in errors:
        e.regex  # noqa: B018 - compile every pattern at load so a typo fails at once
    return errors


def known_error(error_id: str) -> KnownError:
    """The known error with this id (KeyError names the ids when it is unknown)."""
    for e in known_errors():
        if e.id == error_id:
            return e
    raise KeyError(f"unknown error id {error_id!r}; known: {', '.join(e.id for e in known_errors())}")


def match_error(text: str, phase: str | None = None) -> KnownError | None:
    """The first known error whose pattern occurs in `text` (preferring `phase`), or None.

    >>> match_error("Dataverse instance isn't integrated with finance and operations.").id
    'not-integrated'
    >>> match_error("something else") is None
    True
    """
    hits = [e for e in known_errors() if e.regex.search(text)]
    if phase is not None:
        hits.sort(key=lambda e: e.phase != phase)
    return hits[0] if hits else None
