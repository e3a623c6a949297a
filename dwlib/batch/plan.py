"""A batch plan: which runbooks to run, with which parameters file and overrides, all validated first.

The plan is YAML (`params/batch-sandbox.yaml` is an example):

    max_parallel: 2          # optional; `dw batch --max-parallel` wins
    timeout_s: 3600          # optional; a run still going after this is stopped (per run, too)
    runs:
      - name: contoso                       # unique; letters, digits, . _ -
        scenario: existing-existing
        params: sandbox-existing-existing.yaml   # relative to the plan file
        overrides: {options.dry_run: false}      # dotted keys, as `dw run -p`
        each:                                    # optional: one run per entry, named contoso-<key>
          usmf: {verify.company: USMF}
          gbsi: {verify.company: GBSI}

Every problem of the plan and of every run's parameters (`dwlib.execute.check_params`) is reported
in one `ParamsError` before any run starts. A run's environment pair is the (Dataverse URL, F&O URL)
of its validated parameters; a sandbox parameters file takes them from its `connection.yaml`.

Example:
    plan = load_plan(Path("params/batch-sandbox.yaml"))
    [(r.name, r.pair) for r in plan.runs]
    >>> PlanFile.model_validate({"runs": [{"name": "a", "scenario": "new-new", "params": "p.yaml"}]}).version
    1
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from dwlib.params import ParamsError, ScenarioId, read_yaml, validation_problems

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def _override_key(value: str) -> str:
    # `dw run -p KEY=VALUE` splits at the first '=': a key cannot hold one.
    if not value.strip() or "=" in value:
        raise ValueError("an override key is a dotted parameter name, without '='")
    return value.strip()


Name = Annotated[str, AfterValidator(_name)]
Overrides = dict[Annotated[str, AfterValidator(_override_key)], Any]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunEntry(_Model):
    """One entry of `runs:` (one run, or one per `each` key)."""

    name: Name
    scenario: ScenarioId
    params: Path
    overrides: Overrides = Field(default_factory=dict)
    each: dict[Name, Overrides] | None = Field(default=None, min_length=1)
    timeout_s: float | None = Field(default=None, gt=0)


class PlanFile(_Model):
    """The plan file as written (before its runs are expanded and checked)."""

    version: Literal[1] = 1
    max_parallel: int | None = Field(default=None, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    runs: list[RunEntry] = Field(min_length=1)


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan, its parameters checked: what `dw run` gets and which pair it targets."""

    name: str
    scenario: str
    params_file: Path
    overrides: dict[str, Any]
    pair: tuple[str, str]  # (dataverse_url, finops_url)
    timeout_s: float | None = None

    def definition(self) -> dict[str, Any]:
        """What makes two runs the same run (a passed run is only skipped on resume if unchanged)."""
        return {"scenario": self.scenario, "params_file": str(self.params_file), "overrides": self.overrides}


@dataclass(frozen=True)
class Plan:
    """A validated plan: its file, its runs in order, and its own concurrency bound (if any)."""

    path: Path
    runs: list[PlannedRun] = field(default_factory=list)
    max_parallel: int | None = None
    warnings: list[str] = field(default_factory=list)  # of the runs' parameters, each once


def _read(path: Path) -> PlanFile:
    data, lines, problems = read_yaml(path)
    try:
        plan = PlanFile.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(exc, lines, PlanFile)
    if problems:
        raise ParamsError(problems, str(path))
    return plan


def _expand(plan: PlanFile) -> list[tuple[str, RunEntry, str, dict[str, Any]]]:
    """(where in the plan, entry, run name, overrides) of every run, in plan order."""
    out = []
    for i, entry in enumerate(plan.runs):
        for key, extra in (entry.each or {"": {}}).items():
            where = f"runs[{i}]" + (f".each.{key}" if key else "")
            out.append((where, entry, f"{entry.name}-{key}" if key else entry.name,
                        {**entry.overrides, **extra}))
    return out


def load_plan(path: Path) -> Plan:
    """Read the plan and check every run's parameters; `ParamsError` lists every problem found.

    load_plan(Path("params/batch-sandbox.yaml")).runs[0].pair
    """
    from dwlib.execute import check_params  # papermill and the notebooks: only once the plan reads well

    path = path.resolve()
    plan = _read(path)
    problems: list[tuple[str, str]] = []
    runs: list[PlannedRun] = []
    seen: dict[str, str] = {}
    warnings: dict[str, None] = {}
    for where, entry, name, overrides in _expand(plan):
        if name in seen:
            problems.append((where, f"run name {name} is also the name of {seen[name]}: make names unique"))
        seen.setdefault(name, where)
        params_file = (path.parent / entry.params.expanduser()).resolve()
        try:
            # Runs share parameters files: the warnings are gathered, each said once.
            params = check_params(entry.scenario, params_file, overrides, say=False)
        except ParamsError as exc:
            problems += [(f"{where} {name}: {params_file.name}" + (f" {p}" if p else ""), m)
                         for p, m in exc.problems]
            continue
        warnings.update(dict.fromkeys(f"{params_file.name}: {w}" for w in params.warnings))
        runs.append(PlannedRun(name, entry.scenario, params_file, overrides,
                               (params.environments.dataverse_url, params.environments.finops_url),
                               entry.timeout_s or plan.timeout_s))
    if problems:
        raise ParamsError(problems, str(path))
    return Plan(path, runs, plan.max_parallel, list(warnings))

