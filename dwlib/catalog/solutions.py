"""The dual-write solutions Dataverse needs, with the versions the docs require, and the app users.

Example:
    >>> [s.uniquename for s in required_solutions()][:2]
    ['DualWriteCore', 'Dynamics365Company']
    >>> version_at_least("2.0.2.10", "2.0.133")
    False
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from .maps import table_maps


@dataclass(frozen=True)
class RequiredSolution:
    """A Dataverse solution a dual-write package consists of."""

    uniquename: str
    package: str
    required_version: str | None = None
    alternatives: tuple[str, ...] = ()  # other unique names the docs use for the same solution

    @property
    def names(self) -> tuple[str, ...]:
        return (self.uniquename, *self.alternatives)

    def satisfied_by(self, version: str | None) -> bool:
        """True when an installed `version` (None: not installed) meets the requirement.

        >>> RequiredSolution("Dynamics365Company", "x", "2.0.133").satisfied_by("2.0.133.4")
        True
        """
        if version is None:
            return False
        return self.required_version is None or version_at_least(version, self.required_version)


@dataclass(frozen=True)
class AppUser:
    """An application user dual-write needs (requirements-and-prerequisites.md)."""

    application_id: str
    name: str
    side: str  # "dataverse" | "finops"


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.strip().split("."))
    except ValueError:
        raise ValueError(f"not a solution version: {text!r} (expected numbers separated by dots)") from None


def version_at_least(version: str, required: str) -> bool:
    """Compare dotted versions numerically, part by part (missing parts count as 0)."""
    have, need = _version(version), _version(required)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


@cache
def _data() -> dict[str, Any]:
    text = resources.files("dwlib.catalog").joinpath("solutions.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def _solutions(pkg: dict[str, Any]) -> list[RequiredSolution]:
    return [
        RequiredSolution(
            s["uniquename"], pkg["name"], s.get("required_version"), tuple(s.get("alternatives", ()))
        )
        for s in pkg["solutions"]
    ]


def packages() -> dict[str, list[RequiredSolution]]:
    """Every dual-write package (and Dual Write Core) by name, with its solutions."""
    data = _data()
    out = {data["core"]["name"]: _solutions(data["core"])}
    out.update({p["name"]: _solutions(p) for p in data["packages"]})
    return out


def _with_dependencies(names: Iterable[str]) -> list[str]:
    deps = {p["name"]: p["depends_on"] for p in _data()["packages"]}
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in deps:
            raise KeyError(f"unknown dual-write package {name!r}; known: {', '.join(deps)}")
        for d in deps[name]:
            visit(d)
        if name not in order:
            order.append(name)

    for n in names:
        visit(n)
    return order


def required_solutions(package_names: Iterable[str] | None = None) -> list[RequiredSolution]:
    """Solutions to install: Dual Write Core plus the packages (and what they depend on).

    Without `package_names`, the packages that ship the catalogue's table maps.
    """
    wanted = list(package_names) if package_names is not None else [m.package for m in table_maps()]
    pkgs = packages()
    core = _data()["core"]["name"]
    return [s for name in [core, *_with_dependencies(dict.fromkeys(wanted))] for s in pkgs[name]]


@dataclass(frozen=True)
class Requirements:
    """The other documented prerequisites the preflight checks (see `solutions.yaml`).

    >>> requirements().finops_release, requirements().plugin_assemblies[0]
    ('10.0.9', 'DualWriteRegistration.Plugins')
    """

    finops_build: str
    finops_release: str
    dataverse_version: str
    plugin_assemblies: tuple[str, ...]
    prospect_to_cash: str
    system_administrator: str
    dual_write_roles: tuple[str, ...]
    trial_sku: str


@cache
def requirements() -> Requirements:
    """The documented prerequisites besides the solutions (versions, plug-ins, roles …)."""
    raw = dict(_data()["requirements"])
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else str(v) for k, v in raw.items()}
    return Requirements(**fields)


def app_users() -> list[AppUser]:
    """The application users dual-write needs in Dataverse and in F&O."""
    return [
        AppUser(u["application_id"], u["name"], side)
        for side, users in _data()["app_users"].items()
        for u in users
    ]
