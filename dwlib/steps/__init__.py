"""The runbook steps: one module per step family, each step registered by name in `STEPS`.

Importing this package imports every step module, so `STEPS` holds all steps the scenarios
(`dwlib.scenarios`) name. The contract every step keeps is in `dwlib.steps.base`.

Example:
    >>> from dwlib.steps import STEPS
    >>> sorted(STEPS)[:3]
    ['add-company', 'bootstrap-apply', 'bootstrap-simulate']
"""

from dwlib.vocab import StepStatus

from . import (
    bootstrap,
    company,
    health,
    initialsync,
    link,
    maintenance,
    mapdefaults,
    migrate,
    plan,
    preflight,
    relink,
    tablemaps,
    troubleshoot,
    verify,
)
from .base import STEPS, Check, Finding, Step, StepContext, StepError, StepResult, register

# The modules whose import registers the steps (a new step family is added here).
MODULES = (bootstrap, company, health, initialsync, link, maintenance, mapdefaults, migrate, plan, preflight,
           relink, tablemaps, troubleshoot, verify)

__all__ = [
    "MODULES",
    "STEPS",
    "Check",
    "Finding",
    "Step",
    "StepContext",
    "StepError",
    "StepResult",
    "StepStatus",
    "register",
]
