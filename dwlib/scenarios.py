"""The six setup scenarios of "Guidance for dual-write setup", and the operations runbooks after
setup (`health-check`, `troubleshoot`), as ordered step lists (data).

Each scenario lists its steps in the order the guidance gives them, including its
sub-procedures (create the company, add it to the connection, bootstrap with the company code,
initial sync) and the Lifecycle Services / Power Platform integration gate. A step appears by
its registered name (`dwlib.steps.STEPS`); `id` tells two uses of one step apart in a run.

Example:
    >>> [s.id for s in SCENARIOS["new-new"].steps]
    ['preflight', 'power-platform-integration', 'legal-entities', 'plan', 'table-maps', 'verify']
    >>> scenario("existing-existing").dataverse
    'existing'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

GUIDE = "https://learn.microsoft.com/dynamics365/fin-ops-core/dev-itpro/data-entities/dual-write/connection-setup"


@dataclass(frozen=True)
class StepRef:
    """One step of a scenario: its id in the run, the registered step, the step's options."""

    id: str
    step: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Scenario:
    """A setup scenario: which environment is new or existing, and its steps in order."""

    id: str
    title: str
    finops: Literal["new", "new-with-data", "existing"]
    dataverse: Literal["new", "existing"]
    steps: tuple[StepRef, ...]

    @property
    def doc_url(self) -> str:
        return f"{GUIDE}#{self.id}"

    @property
    def kind(self) -> Literal["setup", "operations"]:
        """`setup` for the six scenarios of the guidance, `operations` for the runbooks after setup."""
        return "operations" if self.id in OPERATIONS else "setup"

    def step_ids(self) -> list[str]:
        """The step ids in order (what a notebook must run, one cell each)."""
        return [s.id for s in self.steps]


def _s(*ids: str | tuple[str, str, dict[str, Any]]) -> tuple[StepRef, ...]:
    refs = []
    for item in ids:
        if isinstance(item, str):
            refs.append(StepRef(item, item))
        else:
            ref_id, step, options = item
            refs.append(StepRef(ref_id, step, MappingProxyType(options)))
    return tuple(refs)


# The runbooks after setup (operations), on an existing linked pair; the first two only read.
OPERATIONS = ("health-check", "troubleshoot", "refresh-relink", "maintenance", "add-legal-entity")

# legal-entities runs the Legal entities (cdm_companies) map: linking creates no company in
# Dataverse, that map does, before anything reads or stamps a company.
_LINK = ("preflight", "power-platform-integration", "legal-entities")
# The company data goes in "before you enable dual-write" (bootstrap page): maps over the stamped
# tables that run (the LCS setup starts them for a new F&O) stop first; the plan then says how each
# map's data moves, and the maps go live after it.
_BOOTSTRAP = ("stop-maps", "bootstrap-simulate", "bootstrap-apply")
_NEW_COMPANY = ("create-company", "add-company", *_BOOTSTRAP)

SCENARIOS: dict[str, Scenario] = {
    s.id: s
    for s in (
        Scenario(
            "new-new",
            "New finance and operations environment and new Dataverse environment",
            "new", "new",
            _s(*_LINK, "plan", "table-maps", "verify"),
        ),
        Scenario(
            "new-existing",
            "New finance and operations environment and existing Dataverse environment",
            "new", "existing",
            _s(*_LINK, *_NEW_COMPANY, "plan", "migrate", "table-maps", "initial-sync", "verify"),
        ),
        Scenario(
            "new-data-new",
            "New finance and operations environment with data and new Dataverse environment",
            "new-with-data", "new",
            _s(*_LINK, "plan", "migrate", "table-maps", "initial-sync", "verify"),
        ),
        Scenario(
            "new-data-existing",
            "New finance and operations environment with data and existing Dataverse environment",
            "new-with-data", "existing",
            _s(
                # The F&O data is planned first (its volumes decide before anything is created); the
                # Dataverse data gets its company and is bootstrapped before any map goes live, and
                # the plan is made again with the new company's bootstrapped volume, which meets the
                # same limits before the one initial sync (both ways, per legal entity) of all.
                *_LINK, "plan", *_NEW_COMPANY, ("plan-new-company", "plan", {}),
                "migrate", "table-maps", "initial-sync", "verify",
            ),
        ),
        Scenario(
            "existing-new",
            "Existing finance and operations environment and new Dataverse environment",
            "existing", "new",
            _s(*_LINK, "plan", "migrate", "table-maps", "initial-sync", "verify"),
        ),
        Scenario(
            "existing-existing",
            "Existing finance and operations environment and existing Dataverse environment",
            "existing", "existing",
            _s(*_LINK, *_BOOTSTRAP, "plan", "migrate", "table-maps", "initial-sync", "verify"),
        ),
        # After setup: read-only, for nightly `dw batch`. Microsoft's health check (its codes), the
        # maps' states, then counts and checksums per company per map and the drift since the
        # previous health check of the same pair of environments.
        Scenario(
            "health-check",
            "Dual-write health check (read-only, nightly)",
            "existing", "existing",
            _s("health-configuration", "health-drift"),
        ),
        # Findings matched to the known-error catalogue, debug mode for a bounded time only when asked
        # (and confirmed), then a support bundle.
        Scenario(
            "troubleshoot",
            "Troubleshoot dual-write",
            "existing", "existing",
            _s("troubleshoot-findings", "troubleshoot-debug", "troubleshoot-bundle"),
        ),
        # After setup (operations): an existing, linked pair.
        Scenario(
            "refresh-relink",
            "Relink after a database refresh or copy of finance and operations or Dataverse",
            "existing", "existing",
            # Detect, stop, Reset link (the documented clean-up), then relink as a setup does: the
            # Legal entities map first, the plan's rules for initial sync or not, the maps, verify.
            _s("detect-refresh", "stop-all-maps", "reset-link", "legal-entities", "plan", "migrate",
               "table-maps", "initial-sync", "verify"),
        ),
        Scenario(
            "maintenance",
            "Pause and resume the table maps around a maintenance window",
            "existing", "existing",
            _s("map-states", "pause-maps", "maintenance-over", "resume-maps", "verify"),
        ),
        Scenario(
            "add-legal-entity",
            "Add a legal entity to an existing dual-write connection",
            "existing", "existing",
            # The new company's own steps of new-existing, then the plan decides how its data moves;
            # verify covers the added companies only.
            _s(*_NEW_COMPANY, "plan", "migrate", "table-maps",
               ("verify", "verify", {"companies": "added"})),
        ),
    )
}


def scenario(scenario_id: str) -> Scenario:
    """The scenario `scenario_id`; a clear error names the valid ids.

    >>> scenario("new-new").finops
    'new'
    """
    try:
        return SCENARIOS[scenario_id]
    except KeyError:
        raise KeyError(
            f"unknown scenario {scenario_id!r}: use one of {', '.join(SCENARIOS)}"
        ) from None
