"""The sandbox consultant understands the instructions the library's portal gates really show.

The instructions come from `PortalAdmin` itself (captured from `notify`, the gate then times out at
once because nobody acts), so a change in their wording that the consultant no longer follows
fails here rather than as a gate timeout in a notebook run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import Consultant, session_for

from dwlib.clients.dualwrite import DualWriteAdminError, Instruction, PortalAdmin
from dwlib.errors import SandboxError
from dwlib.sandbox import consultant

ACCOUNTS = "Customers V3 (accounts)"


Show = Callable[[Callable[[PortalAdmin], Any]], dict[str, Any]]


@pytest.fixture
def shown(sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Show]:
    """`shown(action)`: the instruction `action(admin)` shows, as the runbook passes it on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    session = session_for(sandbox)
    seen: list[Instruction] = []
    admin = PortalAdmin(session.dataverse, session.finops, notify=seen.append, timeout_s=0, poll_s=0)

    def show(action: Callable[[PortalAdmin], Any]) -> dict[str, Any]:
        seen.clear()
        with contextlib.suppress(DualWriteAdminError):  # nobody acts: most gates time out at once
            action(admin)
        (ins,) = seen
        return {"title": ins.title, "steps": ins.steps, "links": ins.links, "verify": ins.verify}

    yield show
    session.close()


def test_each_gate_becomes_the_portal_calls_a_consultant_would_make(shown: Show) -> None:
    assert consultant.actions(shown(lambda a: a.set_up_power_platform_integration())) == [
        ("POST", "/lcs/power-platform-integration", None)]
    assert consultant.actions(shown(lambda a: a.link(["usmf", "GBSI"]))) == [
        ("POST", "/lcs/dual-write/configure", None),
        ("POST", "/lcs/dual-write/link", {"legal_entities": ["USMF", "GBSI"]})]
    assert consultant.actions(shown(lambda a: a.add_legal_entities(["DEMF"], skip_initial_writes=True))) == [
        ("POST", "/dualwrite/legal-entities", {"add": ["DEMF"], "skip_initial_writes": True})]
    assert consultant.actions(shown(lambda a: a.add_legal_entities(["DEMF", "FRRT"]))) == [
        ("POST", "/dualwrite/legal-entities", {"add": ["DEMF", "FRRT"], "skip_initial_writes": False})]
    assert consultant.actions(shown(lambda a: a.stop([ACCOUNTS]))) == [
        ("POST", "/dualwrite/maps/customers-v3-accounts/stop", None)]
    assert consultant.actions(shown(lambda a: a.resume([ACCOUNTS]))) == [
        ("POST", "/dualwrite/maps/customers-v3-accounts/resume", None)]


def test_an_unknown_instruction_is_refused_not_guessed() -> None:
    with pytest.raises(SandboxError, match="does not know how to do: 'Reticulate splines'"):
        consultant.actions({"title": "Reticulate splines", "steps": []})


def test_performing_a_gate_changes_the_sandbox_and_a_refusal_is_reported(start_sandbox: Any) -> None:
    connection = start_sandbox("existing-new", rows=5, fresh=True)
    root = Path(connection["ca_bundle"]).parent
    gate = {"title": "Set up the Power Platform integration (LCS)", "steps": []}
    assert consultant.play({"instruction": gate, "sandbox_dir": str(root)}) == [
        "POST /_portal/lcs/power-platform-integration"]
    player = Consultant(connection)
    try:
        assert player.dv("GET", "RetrieveFinanceAndOperationsIntegrationDetails").status_code == 200
    finally:
        player.close()
    stop = {"title": f"Stop table maps {ACCOUNTS}", "steps": []}  # not linked yet: the portal refuses
    with pytest.raises(SandboxError, match="the portal refused POST /dualwrite/maps/customers-v3-accounts/"):
        consultant.play({"instruction": stop}, root)
    with pytest.raises(SandboxError, match="no sandbox to act on"):
        consultant.play({"instruction": gate})
