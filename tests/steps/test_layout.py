"""The layout of `dwlib.steps`: a module directly in the package registers steps; its helpers live in
`dwlib.steps.support` and register none. Both read from the registry (`STEPS`), not the source."""

import importlib
import pkgutil
from types import ModuleType

from dwlib import steps
from dwlib.steps import MODULES, STEPS, support

# Not step families: the package itself and the contract every step keeps.
NOT_STEPS = {"base", "support"}


def _modules(package: ModuleType) -> set[str]:
    """Every module directly in `package`, imported so that whatever it would register is in STEPS."""
    names = {m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")}
    for name in names:
        importlib.import_module(name)
    return names


def test_every_step_module_registers_a_step_and_is_imported_by_the_package() -> None:
    step_modules = {n for n in _modules(steps) if n.rsplit(".", 1)[1] not in NOT_STEPS}
    registering = {cls.__module__ for cls in STEPS.values()}
    assert sorted(step_modules - registering) == [], "modules in dwlib.steps that register no step: " \
        "move them to dwlib.steps.support"
    # A step module the package does not import would register its steps only when imported by chance.
    assert {m.__name__ for m in MODULES} == step_modules


def test_no_support_module_registers_a_step() -> None:
    support_modules = _modules(support)
    assert support_modules, "dwlib.steps.support holds the steps' helpers"
    registered_in_support = sorted(f"{name} ({cls.__module__})" for name, cls in STEPS.items()
                                   if cls.__module__ in support_modules)
    assert registered_in_support == []
