"""Helpers of the tests that run whole runbooks against a sandbox (as `dw run` does).

`run` executes a scenario's notebook against the sandbox of a connection; `assert_passed` checks
that every step passed and the verification reconciled; `writes` lists a run's calls that change
something; `descendants` finds the processes below a pid (a `dw run`'s kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dwlib import execute

ROOT = Path(__file__).resolve().parents[1]
# A call that changes something: any write method, and POSTs other than sign-in and DMF reads.
READ_POSTS = ("/oauth2/", "/Microsoft.Dynamics.DataEntities.Get")


def sandbox_dir(connection: dict[str, Any]) -> Path:
    """The state directory of the sandbox of `connection`."""
    return Path(connection["ca_bundle"]).parent


def run(scenario: str, connection: dict[str, Any], out: Path, **overrides: Any) -> execute.Execution:
    """The scenario's notebook against the sandbox of `connection`, as `dw run` executes it."""
    params = ROOT / "params" / f"sandbox-{scenario}.yaml"
    return execute.execute(scenario, params, {"sandbox.dir": str(sandbox_dir(connection)), **overrides}, out)


def assert_passed(execution: execute.Execution) -> dict[str, Any]:
    """Every step passed or was already done, and the reconciliation holds; the record."""
    data = execution.data
    assert data is not None, execution.error
    assert execution.ok, execution.summary()
    verify = next(s for s in data["steps"] if s["id"] == "verify")
    rows = verify["tables"]["reconciliation"]
    assert rows and all(r["status"] == "PASS" for r in rows), rows
    return data


def writes(data: dict[str, Any]) -> list[str]:
    """The calls of a run that change something (see READ_POSTS)."""
    return [f"{c['method']} {c['url']}" for s in data["steps"] for c in s["calls"]
            if c["method"] in ("PATCH", "PUT", "DELETE")
            or (c["method"] == "POST" and not any(r in c["url"] for r in READ_POSTS))]


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
