"""Traps: the sandbox signals a process at an exact request (the kill tests and `make chaos` use them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from dwlib.errors import SandboxError
from dwlib.sandbox import control

# A client that asks for the sandbox's health forever, printing one line per answer.
CLIENT = """
import ssl, sys, httpx
url, ca = sys.argv[1], sys.argv[2]
with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as http:
    while True:
        http.get(url + "/health", headers={"X-Marker": "trapped"}).raise_for_status()
        print("answered", flush=True)
"""
# The same client started as the child of a parent that only waits for it.
PARENT = """
import subprocess, sys
sys.exit(subprocess.call([sys.executable, "-c", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.fixture
def fresh(start_sandbox: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return start_sandbox("new-new", rows=0, fresh=True)


def _client(connection: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CLIENT, connection["admin_url"], connection["ca_bundle"]],
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("at", ["before", "after"])
def test_a_trap_kills_the_sender_of_the_nth_matching_request(fresh: dict[str, Any], at: str) -> None:
    control.traps(fresh, [{"method": "GET", "path": "/_sandbox/health$", "nth": 3, "at": at}])
    proc = _client(fresh)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert out.splitlines() == ["answered"] * 2  # the third request's answer never arrived
    (trap,) = control.traps(fresh)
    assert trap["seen"] == 3 and trap["fired"]["pid"] == proc.pid and trap["fired"]["error"] is None


@pytest.mark.parametrize("group", [False, True])
def test_a_trap_with_process_signals_the_senders_nearest_matching_ancestor(fresh: dict[str, Any],
                                                                          group: bool) -> None:
    control.traps(fresh, [{"path": "/_sandbox/health$", "signal": "SIGTERM", "process": "subprocess.call",
                           "group": group}])
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CLIENT, fresh["admin_url"], fresh["ca_bundle"]],
                              start_new_session=True)
    try:
        assert parent.wait(timeout=60) == -signal.SIGTERM
        (trap,) = control.traps(fresh)
        assert trap["fired"]["pid"] == parent.pid and trap["fired"]["error"] is None
        # With group, the client the parent started got the signal too; without, it goes on.
        assert (_group_gone(parent.pid) if group else _live_in_group(parent.pid))
    finally:
        if _live_in_group(parent.pid):
            os.killpg(parent.pid, signal.SIGKILL)


def _live_in_group(group: int) -> bool:
    """Whether a live (not zombie) process of the process group remains."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == group and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _group_gone(group: int, timeout_s: float = 10) -> bool:
    """Whether every process of the group is gone within `timeout_s` (a signal takes a moment)."""
    deadline = time.monotonic() + timeout_s
    while _live_in_group(group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_bad_traps_are_refused_with_the_reason(fresh: dict[str, Any]) -> None:
    with pytest.raises(SandboxError, match="unknown signal 'SIGNOPE'"):
        control.traps(fresh, [{"path": "/x", "signal": "SIGNOPE"}])
    with pytest.raises(SandboxError, match="nth"):
        control.traps(fresh, [{"path": "/x", "nth": 0}])
    assert control.traps(fresh) == []
