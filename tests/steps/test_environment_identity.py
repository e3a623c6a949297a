"""An environment keeps its identity: a restarted sandbox keeps its port (its URLs, and the links
naming them, stay valid); a taken port is a clear error saying how to move; a move changes the
URLs like a documented environment move, and the runbook's link check reports the relink needed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dwlib.errors import SandboxError
from dwlib.sandbox import control
from dwlib.steps.base import StepStatus
from dwlib.steps.link import PowerPlatformIntegration
from dwlib.steps.preflight import Preflight

LINK = "Power Platform integration"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sbx"
    yield path
    control.stop(path)


def _start(root: Path, **options: Any) -> control.Started:
    return control.start("new-new", root=root, rows=10, owner_pid=os.getpid(), **options)


def _squat(port: int) -> socket.socket:
    """Listen on `port` as another program would (its old connections may still be in TIME_WAIT)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _linked(root: Path, step_context: Any, portal_player: Any) -> dict[str, Any]:
    """A sandbox whose Power Platform integration and dual-write link are set up, then stopped."""
    first = _start(root).connection
    assert PowerPlatformIntegration().execute(step_context(first, consultant=portal_player(first))).status \
        == StepStatus.PASSED
    control.stop(root)
    return first


def test_a_restarted_sandbox_keeps_its_port_and_the_preflight_still_passes(root: Path, step_context: Any,
                                                                           portal_player: Any) -> None:
    first = _linked(root, step_context, portal_player)
    again = _start(root)
    assert again.moved_from is None
    assert (again.connection["port"], again.connection["finops_url"], again.connection["dataverse_url"]) == (
        first["port"], first["finops_url"], first["dataverse_url"])
    result = Preflight().execute(step_context(again.connection))
    checks = {c.name: c for c in result.checks}
    assert checks[LINK].status == StepStatus.PASSED and first["finops_url"] in checks[LINK].evidence
    assert result.status == StepStatus.PASSED, (
        [c.to_dict() for c in result.checks if c.status != StepStatus.PASSED])


def test_a_taken_port_is_one_clear_error_naming_it_and_how_to_move(root: Path) -> None:
    port = _start(root).connection["port"]
    control.stop(root)
    with _squat(port), pytest.raises(SandboxError) as exc:
        _start(root)
    text = str(exc.value)
    assert f"port {port} on 127.0.0.1 is in use" in text and f"https://127.0.0.1:{port}/" in text
    assert f"dw sandbox start --dir {root.resolve()} --move-port" in text and "--port N" in text
    assert "relink" in text
    assert not control.status(root).running


def test_a_moved_sandbox_needs_a_relink_and_the_link_check_says_so(root: Path, step_context: Any,
                                                                    portal_player: Any) -> None:
    first = _linked(root, step_context, portal_player)
    with _squat(first["port"]):  # someone else took the port meanwhile
        moved = _start(root, move_port=True)
    assert moved.moved_from == first["port"] and moved.connection["port"] != first["port"]
    new_url = moved.connection["finops_url"]
    result = Preflight().execute(step_context(moved.connection))
    link = {c.name: c for c in result.checks}[LINK]
    assert result.status == StepStatus.FAILED and link.status == StepStatus.FAILED
    assert link.evidence.startswith(f"Dataverse is integrated with {first['finops_url']}, not {new_url}")
    assert "moved (its URL changed)" in link.fix and "relink" in link.fix
    assert link.doc.endswith("relink-environments")
    # The move is kept: the next start stays on the new port.
    control.stop(root)
    assert _start(root).connection["port"] == moved.connection["port"]


def test_port_and_move_port_are_one_or_the_other(root: Path) -> None:
    with pytest.raises(SandboxError, match="give --port N or --move-port, not both"):
        _start(root, port=0, move_port=True)
