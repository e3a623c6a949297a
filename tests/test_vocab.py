"""The shared vocabulary: statuses and map states are `dwlib.vocab` enums, never literals elsewhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dwlib import vocab
from dwlib.record import SCHEMA_FILE
from dwlib.vocab import BatchStatus, MapState, RunStatus, StepStatus, Unfinished

DWLIB = Path(vocab.__file__).parent
# Every value of the vocabulary, and the other names the service gives map states.
WORDS = {str(m) for enum in (StepStatus, RunStatus, BatchStatus, Unfinished, MapState) for m in enum} | set(
    vocab.MAP_STATE_NAMES)
# Also a word for something else: the key of every error message, the parameters form's state.
WORDS -= {"error", "invalid"}


def _ignored(tree: ast.AST) -> set[int]:
    """ids of string constants that are names, not values: dict keys, subscripts, `.get("key")`
    arguments and docstrings."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            out.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            out.add(id(node.slice))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            out.add(id(node.args[0]))
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def literals(path: Path) -> list[str]:
    """`file:line: 'value'` for each status or map-state value written as a string literal."""
    tree = ast.parse(path.read_text(), str(path))
    ignored = _ignored(tree)
    return [f"{path.relative_to(DWLIB.parent)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in WORDS
            and id(node) not in ignored]


def test_no_status_or_map_state_literal_outside_the_vocabulary() -> None:
    """The sandbox keeps the service's wire values; the rest of dwlib says them through the enums."""
    found = [hit for path in sorted(DWLIB.rglob("*.py"))
             if path != DWLIB / "vocab.py" and "sandbox" not in path.relative_to(DWLIB).parts
             for hit in literals(path)]
    assert found == [], "use the dwlib.vocab enums:\n" + "\n".join(found)


def test_the_literal_scan_finds_a_literal(tmp_path: Path) -> None:
    probe = DWLIB / "_probe_for_test.py"  # inside dwlib, so relative paths work
    probe.write_text('"""doc: passed"""\nx = {"failed": 1}\ny = x.get("waiting")\nz = "Paused"\n')
    try:
        assert literals(probe) == ["dwlib/_probe_for_test.py:4: 'Paused'"]
    finally:
        probe.unlink()


def test_the_statuses_are_the_record_schemas() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert set(schema["$defs"]["status"]["enum"]) == {str(s) for s in StepStatus}
    assert set(schema["properties"]["status"]["enum"]) == {str(s) for s in RunStatus}


@pytest.mark.parametrize(("status", "ok", "done"), [
    (StepStatus.PASSED, True, True), (StepStatus.ALREADY_DONE, True, True), (StepStatus.SKIPPED, True, False),
    (StepStatus.WARNING, True, False), (StepStatus.WAITING, False, False), (StepStatus.FAILED, False, False)])
def test_step_status_properties(status: StepStatus, ok: bool, done: bool) -> None:
    assert (status.ok, status.done) == (ok, done)


def test_run_and_batch_status_properties() -> None:
    assert [s for s in RunStatus if s.succeeded] == [RunStatus.PASSED, RunStatus.WARNING]
    assert [s for s in RunStatus if s.active] == [RunStatus.RUNNING, RunStatus.INTERRUPTED]
    assert [s for s in BatchStatus if not s.failed] == [BatchStatus.PENDING, BatchStatus.RUNNING,
                                                         BatchStatus.PASSED]


def test_map_state_names() -> None:
    assert MapState.of("CatchUp") is MapState.RESUMING and MapState.of("Suspended") is None
    assert [s for s in MapState if s.live] == [MapState.RUNNING, MapState.PAUSED, MapState.RESUMING]
    assert json.dumps({"state": MapState.NOT_RUNNING}) == '{"state": "Not running"}'


def test_one_list_of_scenarios() -> None:
    """The scenario ids the parameters accept, the record schema's and the scenarios are the same."""
    from typing import get_args

    import dwlib
    from dwlib.params import ScenarioId
    from dwlib.scenarios import SCENARIOS

    schema = json.loads(SCHEMA_FILE.read_text())
    assert set(get_args(ScenarioId)) == set(SCENARIOS) == set(schema["properties"]["scenario"]["enum"])
    assert dwlib.SCENARIOS is SCENARIOS
