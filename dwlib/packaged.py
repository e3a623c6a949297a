"""The files the package ships: runbook notebooks, parameter files (read with `importlib.resources`).

One source: the top-level `notebooks/` and `params/` of the project are what a checkout runs and
what the wheel ships, mapped to `dwlib/_data/notebooks` and `dwlib/_data/params` at build time
(pyproject.toml, `force-include`). An editable install or a checkout has no `_data`: the
top-level directories are read instead. An engagement folder made by `dw init` has its own copy
of the notebooks; `notebook()` prefers a `notebooks/` in the working directory to the packaged
ones, so `dw run` in that folder runs its pinned copy.

Example:
    >>> notebook("existing-new.ipynb").name
    'existing-new.ipynb'
    >>> param_file("template.yaml").is_file()
    True
"""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path

from dwlib.errors import DwError

VERSION_FILE = ".dwlib-version"  # in an engagement's notebooks/: the dwlib version they came from


def version() -> str:
    """The installed dwlib's version ("unknown" when run from a checkout that is not installed)."""
    try:
        return metadata.version("dwlib")
    except metadata.PackageNotFoundError:
        return "unknown"


def _root(name: str) -> Path:
    shipped = resources.files("dwlib") / "_data" / name
    if shipped.is_dir():
        # pip unpacks a wheel into site-packages, so the resource is a real directory papermill
        # can read from.
        return Path(str(shipped))
    return Path(__file__).resolve().parents[1] / name  # a checkout or an editable install


def notebooks_dir() -> Path:
    """The packaged runbook notebooks (`<scenario>.ipynb`, `review.ipynb`)."""
    return _root("notebooks")


def params_dir() -> Path:
    """The packaged parameter files (`template.yaml`, `sandbox-<scenario>.yaml`, the batch plan)."""
    return _root("params")


def notebook(name: str, cwd: Path | None = None) -> Path:
    """The notebook `name` (e.g. "existing-new.ipynb") a run executes: the working directory's
    `notebooks/` (an engagement folder's pinned copy) when it has it, else the packaged one."""
    local = (cwd or Path.cwd()) / "notebooks" / name
    if local.is_file():
        return local
    shipped = notebooks_dir() / name
    if not shipped.is_file():
        raise DwError(f"no notebook {name} in {local.parent} or in the installed dwlib ({shipped.parent}): "
                      "reinstall dwlib, or copy it with dw init")
    return shipped


def pinned_note(notebook: Path) -> str:
    """A note when `notebook` is an engagement's copy made by another dwlib version ("" otherwise)."""
    # a language's notebooks are in notebooks/<language>/, the version file in notebooks/
    found = [p for p in (notebook.parent, notebook.parent.parent) if (p / VERSION_FILE).is_file()]
    if not found:
        return ""
    pinned = found[0] / VERSION_FILE
    made, now = pinned.read_text(encoding="utf-8").strip(), version()
    if made == now:
        return ""
    return (f"note: {notebook} was copied from dwlib {made}, dwlib {now} is installed; "
            "dw init --force . refreshes the engagement's notebooks")


def param_file(name: str) -> Path:
    """A packaged parameter file, e.g. "sandbox-existing-existing.yaml"."""
    path = params_dir() / name
    if not path.is_file():
        raise DwError(f"no parameter file {name} in the installed dwlib ({path.parent}): reinstall dwlib")
    return path
