"""Loading parameters: a YAML file (or a mapping) plus overrides into `dwlib.params.model.Params`,
every problem in one `ParamsError` worded for people, with its path and line in the file, and "did
you mean" for a misspelt key. A sandbox the file names fills in what its `connection.yaml` holds.
"""

from __future__ import annotations

import difflib
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dwlib.errors import DwError
from dwlib.scenarios import SCENARIOS

from .model import KeyProblems, Loc, Params, References, dotted

# The package's name: the logger tests capture.
log = logging.getLogger(__package__)


class ParamsError(DwError):
    """Parameters that cannot be used; `problems` lists every `(path, message)` found.

    >>> str(ParamsError([("auth.client_secert", "unknown key; did you mean 'client_secret'?")]))
    "invalid parameters (1 problem):\\n  auth.client_secert: unknown key; did you mean 'client_secret'?"
    """

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid parameters{where} ({count}):\n" + "\n".join(lines))


PARAM_KEYS = tuple(Params.model_fields)  # the top-level keys of a parameters file (papermill -f)


def notebook_parameters(namespace: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """What a notebook's globals say about its parameters: the `params_file` it names (what `dw run`
    sets), and the keys of a parameters file given inline (what papermill's `-f FILE` injects).

    >>> notebook_parameters({"params_file": None, "scenario": "new-new", "options": None, "x": 1})
    (None, {'scenario': 'new-new'})
    """
    source = namespace.get("params_file")
    inline = {k: namespace[k] for k in PARAM_KEYS if namespace.get(k) is not None}
    return (str(source) if source else None), inline


def load_params(
    source: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    base_dir: Path | None = None,
    scenario: str | None = None,
    sandbox_pending: bool = False,
    say: bool = True,
) -> Params:
    """Load and validate parameters from a YAML file (or a mapping) plus `overrides`.

    `overrides` keys may be dotted paths (`{"options.dry_run": True}`). Relative paths in the
    parameters resolve against `base_dir` (default: the current directory). `scenario`: the runbook
    the parameters are for (a file for another one is a problem like any other). Raises
    `ParamsError` with every problem the file has, each with its path (and line).

    A sandbox that is not running yet (no `connection.yaml`) is one problem among the others: what
    it would supply is stood in for, so the rest of the file is checked all the same.
    `sandbox_pending` says the caller starts the sandbox next (`dw run --sandbox`): then its
    absence is no problem, but environments the file names itself are (the sandbox supplies them).
    The parameters returned then hold stand-ins: use them to check, never to connect.

    Warnings are logged once per process (the same warning, at the same place, is said once however
    often the file is loaded: `dw run`, the form, the runbook). `say=False` logs none: the caller
    shows `params.warnings` itself (the form, once; `dw batch`, gathered over its runs).

    >>> load_params({"scenario": "new-new"}, {"options.dry_run": True})
    Traceback (most recent call last):
    ...
    dwlib.params.load.ParamsError: invalid parameters (2 problems):
      environments: required
      auth: required
    """
    lines: dict[Loc, int] = {}
    problems: list[tuple[str, str]] = []
    label = ""
    if isinstance(source, Mapping):
        data: dict[str, Any] = _deep_copy(source)
    else:
        label = str(source)
        data, lines, problems = read_yaml(Path(source))
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)

    def at(loc: Loc) -> str:
        line = lines.get(loc)
        return dotted(loc) + (f" (line {line})" if line else "")

    other = scenario_problem(scenario, data.get("scenario"))
    if other:
        problems.append((at(("scenario",)), other))
    base = (base_dir or Path.cwd()).resolve()
    problems += [(at(loc), msg) for loc, msg in _merge_sandbox(data, base, pending=sandbox_pending)]
    try:
        params = Params.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        found = validation_problems(exc, lines)
        try:
            References.model_validate(data, context={"base_dir": base})
        except ValidationError as refs:
            found += [p for p in validation_problems(refs, lines) if p not in found]
        problems += found
    if problems:
        raise ParamsError(sorted(problems, key=_line_of), label) from None
    if say:
        say_once(params.warnings)
    return params


def scenario_problem(expected: str | None, given: Any) -> str:
    """Why parameters for scenario `given` do not fit the runbook of `expected` ("" when they do, or
    when `given` is no scenario at all: validation says so).

    >>> scenario_problem("new-new", "existing-new")[:49]
    'the parameters are for existing-new, not new-new:'
    """
    if expected is None or given not in SCENARIOS or given == expected:
        return ""
    return (f"the parameters are for {given}, not {expected}: run the {given} runbook (dw run {given}, "
            f"notebooks/{given}.ipynb), or fix scenario:")


_said: set[str] = set()  # the warnings said in this process


def say_once(warnings: Iterable[str]) -> None:
    """Log each warning not said before in this process; a warning names its place, so one said
    again is the same thing at the same place (e.g. a file loaded by the form, then by the runbook).

    >>> say_once(["x: said once"]); say_once(["x: said once"])
    """
    for warning in warnings:
        if warning not in _said:
            _said.add(warning)
            log.warning("%s", warning)


def said(warnings: Iterable[str]) -> None:
    """Note warnings as said, by whoever showed them (the form shows its own, then they are news to
    nobody).

    >>> said(["y: shown by the form"])
    """
    _said.update(warnings)


def _line_of(problem: tuple[str, str]) -> int:
    found = re.search(r"\(line (\d+)\)", problem[0])
    return int(found.group(1)) if found else 0


def read_text(path: Path) -> str:
    r"""A parameters (or plan) file as text: UTF-8, with or without a byte order mark; `ParamsError`
    saying where when it cannot be read or is not UTF-8.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "p.yaml"; _ = f.write_bytes(b"a: 1\nb: caf\xe9\n")
    >>> read_text(f)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dwlib.params.load.ParamsError: invalid parameters in ... (1 problem):
      (line 2): the file is not UTF-8 text: byte 0xe9 in column 7; save it as UTF-8 ...
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ParamsError([("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ParamsError([(f"(line {line})", f"the file is not UTF-8 text: byte 0x{raw[exc.start]:02x} in "
                                              f"column {column}; save it as UTF-8 (e.g. in an editor's Save "
                                              "with Encoding, or iconv -f latin1 -t utf-8)")],
                          str(path)) from None


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Loc, int], list[tuple[str, str]]]:
    """A YAML mapping file: its data, the line of every key (by path) and duplicate-key problems;
    `ParamsError` when it cannot be read or is not a mapping. Shared with other YAML inputs that
    report problems the same way (e.g. `dwlib.batch` plans).

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "p.yaml"; _ = f.write_text("a: {b: 1}")
    >>> read_yaml(f)[:2]
    ({'a': {'b': 1}}, {(): 1, ('a',): 1, ('a', 'b'): 1})
    """
    text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError([("", f"not valid YAML: {exc}")], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError([("", "the file must be a mapping of keys (scenario:, environments:, …)")],
                          str(path))
    lines: dict[Loc, int] = {}
    problems: list[tuple[str, str]] = []
    if node is not None:
        _index(node, (), lines, problems)
    return data, lines, problems


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: list[tuple[str, str]]) -> None:
    """Record the line of every key, and report duplicate keys (YAML would keep the last silently)."""
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append((f"{dotted((*loc, key))} (line {key_node.start_mark.line + 1})",
                                 "duplicate key; keep one"))
            seen.add(key)
            _index(value_node, (*loc, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines, problems)


def validation_problems(exc: ValidationError, lines: dict[Loc, int],
                        root: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """Pydantic's errors as `(path (line N), message)` problems, worded for people, with "did you
    mean" for unknown keys of `root` (default `Params`) and its nested models."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        if loc[-1:] == ("[key]",):  # pydantic's marker for a problem with a mapping's key itself
            loc = loc[:-1]
        cause = (err.get("ctx") or {}).get("error")
        items = cause.items if isinstance(cause, KeyProblems) else [((), _message(err, loc, root or Params))]
        for sub, msg in items:
            full = (*loc, *sub)
            # The key's own line, else its list item's (a shorthand item: `- Customers V3`); a key
            # the file lacks (required, or set by an override) has none.
            item = next((full[:n] for n in range(len(full), 0, -1) if isinstance(full[n - 1], int)), None)
            line = lines.get(full) or (lines.get(item) if item else None)
            out.append((dotted(full) + (f" (line {line})" if line else ""), msg))
    return out


def _message(err: Any, loc: Loc, root: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _fields_at(loc[:-1], root)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(valid)}"
        return f"unknown key; {hint}"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        # Literal fields hold names, never secrets, so the input may be quoted back.
        options = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        close = difflib.get_close_matches(str(err["input"]), options, n=1, cutoff=0.6)
        return f"must be one of {err['ctx']['expected']}" + (f"; did you mean '{close[0]}'?" if close else "")
    msg: str = err["msg"]
    return msg.removeprefix("Value error, ").replace("Input should be", "must be")


def _fields_at(loc: Loc, root: type[BaseModel]) -> list[str]:
    """The keys the model accepts at `loc` (for "did you mean" hints)."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap(annotation, part)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _unwrap(annotation: Any, part: str | int) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):  # Optional[X] / X | None
        if _is_model(arg) and isinstance(part, str):
            return arg.model_fields[part].annotation if part in arg.model_fields else None
        origin = typing.get_origin(arg)
        if origin is list and isinstance(part, int):
            return typing.get_args(arg)[0]
        if origin is dict and isinstance(part, str):
            return typing.get_args(arg)[1]
        if origin in (typing.Union, types.UnionType):
            found = _unwrap(arg, part)
            if found is not None:
                return found
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = _deep_copy(value)


# connection.yaml key → where it goes in the parameters (only when the file leaves it unset).
_FROM_CONNECTION = {
    "tenant_id": ("environments", "tenant_id"),
    "authority": ("environments", "authority"),
    "ca_bundle": ("environments", "ca_bundle"),
    "dataverse_url": ("environments", "dataverse_url"),
    "finops_url": ("environments", "finops_url"),
    "gateway_url": ("environments", "gateway_url"),
    "lcs_api_url": ("environments", "lcs_api_url"),
    "lcs_project_id": ("environments", "lcs_project_id"),
    "lcs_environment_id": ("environments", "lcs_environment_id"),
    "power_platform_api_url": ("environments", "power_platform_api_url"),
    "client_id": ("auth", "client_id"),
}
# Stand-ins for what a sandbox's connection.yaml supplies while there is none (not started yet):
# the rest of the file is checked against them. Such a load fails, or only checks (see load_params).
_STAND_IN = {
    "tenant_id": "sandbox", "dataverse_url": "https://sandbox.invalid/dataverse",
    "finops_url": "https://sandbox.invalid/finops", "gateway_url": "https://sandbox.invalid/gateway",
    "client_id": "sandbox", "client_secret_file": "sandbox-client-secret",
    "client_certificate_file": __file__,  # any file that exists: only checked, never read
    "client_private_key_file": "sandbox-client-key",
}


def _merge_sandbox(data: dict[str, Any], base: Path, *, pending: bool) -> list[tuple[Loc, str]]:
    """Fill what the file leaves unset from its sandbox's connection.yaml (or stand-ins, see
    `load_params`); the problems: the sandbox not started, or, `pending`, environments the file sets."""
    sandbox = data.get("sandbox")
    if not isinstance(sandbox, dict) or not isinstance(sandbox.get("dir"), str | Path):
        return []
    problems: list[tuple[Loc, str]] = []
    path = (base / Path(sandbox["dir"]).expanduser()).resolve() / "connection.yaml"
    if pending:
        conn: dict[str, Any] = _STAND_IN
        own = data.get("environments")
        own = own if isinstance(own, dict) else {}
        problems += [(("environments", field), "dw run --sandbox runs against a fresh sandbox, whose "
                      "connection.yaml supplies it: remove it, or run without --sandbox")
                     for key, (section, field) in _FROM_CONNECTION.items()
                     if section == "environments" and own.get(field) is not None]
    else:
        try:
            conn = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError, yaml.YAMLError):
            conn = _STAND_IN
            problems.append((("sandbox", "dir"), f"{path} not found: start the sandbox first "
                                                 f"(`dw sandbox start --dir {sandbox['dir']}`)"))
    for key, (section, field) in _FROM_CONNECTION.items():
        target = data.setdefault(section, {})
        if isinstance(target, dict) and key in conn:
            target.setdefault(field, conn[key])
    auth = data["auth"] if isinstance(data.get("auth"), dict) else {}
    method = auth.setdefault("method", "client_secret")
    if method == "client_secret":
        auth.setdefault("client_secret", f"file:{conn.get('client_secret_file', '')}")
    elif method == "certificate":
        auth.setdefault("certificate", {"path": conn.get("client_certificate_file"),
                                        "private_key": f"file:{conn.get('client_private_key_file', '')}"})
    return problems

