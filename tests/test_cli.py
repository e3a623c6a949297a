"""The `dw sandbox` commands: start, status, stop, serve, bad arguments (run and demo: test_cli_run)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from dwlib import cli
from dwlib.sandbox import control, server

DW = str(Path(sys.executable).with_name("dw"))


def dw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DW, *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def test_start_status_stop(tmp_path: Path) -> None:
    root = tmp_path / "sbx"
    try:
        started = dw("sandbox", "start", "--profile", "existing-existing", "--rows", "5", "--dir", str(root),
                     "--port", "0")
        assert started.returncode == 0, started.stderr
        connection = yaml.safe_load((root / "connection.yaml").read_text())
        assert f"running (pid {connection['pid']})" in started.stdout
        assert f"connection: {root / 'connection.yaml'}" in started.stdout
        assert connection["dataverse_url"] in started.stdout

        status = dw("sandbox", "status", "--dir", str(root))
        assert status.returncode == 0, status.stderr
        assert "running" in status.stdout and connection["finops_url"] in status.stdout
        assert any(line.split() == ["accounts", "5"] for line in status.stdout.splitlines())

        again = dw("sandbox", "start", "--profile", "existing-existing", "--dir", str(root))
        assert again.returncode == 0 and "already running" in again.stdout
        assert yaml.safe_load((root / "connection.yaml").read_text()) == connection

        stopped = dw("sandbox", "stop", "--dir", str(root))
        assert (stopped.returncode, stopped.stdout.strip()) == (0, f"stopped the sandbox in {root}")
        assert dw("sandbox", "stop", "--dir", str(root)).stdout.strip() == f"no sandbox running in {root}"
        after = dw("sandbox", "status", "--dir", str(root))
        assert after.returncode == cli.NOT_RUNNING and "not running" in after.stdout
    finally:
        control.stop(root)


def test_default_directory_is_per_profile_under_the_cwd(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert control.resolve_dir("new-new", None) == tmp_path / ".dw" / "sandbox" / "new-new"


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["sandbox", "start", "--profile", "nope"], "use one of new-new"),
        (["sandbox", "start", "--profile", "new-new", "--rows", "-1"], "--rows must be 0 or more"),
        (["sandbox", "start", "--profile", "new-new", "--faults", "5xx=often"], "use latency=20ms"),
        (["sandbox", "start", "--profile", "new-new", "--limits", "speed=3"], "use requests=N"),
        (["sandbox", "start"], "give --profile"),
        (["sandbox", "status", "--dir", "{tmp}/nothing"], "create one with dw sandbox start"),
    ],
)
def test_bad_arguments_get_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], args: list[str],
                                             fix: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main([a.format(tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dw: error: ") and fix in err and err.count("\n") == 1
    assert not (tmp_path / ".dw").exists()  # nothing created for a refused command


def test_port_in_use_from_the_command_line(tmp_path: Path) -> None:
    taken = server.bind(0)
    try:
        port = str(taken.getsockname()[1])
        result = dw("sandbox", "start", "--profile", "new-new", "--rows", "0", "--dir", str(tmp_path),
                    "--port", port)
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr == f"dw: error: port {port} on 127.0.0.1 is in use: choose another --port, or " \
                            "--port 0 for a free one\n"
    assert "Traceback" not in result.stderr + result.stdout


def test_a_restart_keeps_the_port_and_a_taken_one_is_moved_only_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "sbx"
    try:
        first = dw("sandbox", "start", "--profile", "new-new", "--rows", "0", "--dir", str(root))
        assert first.returncode == 0, first.stderr
        port = yaml.safe_load((root / "connection.yaml").read_text())["port"]
        dw("sandbox", "stop", "--dir", str(root))
        taken = server.bind(port)
        try:
            refused = dw("sandbox", "start", "--dir", str(root))
            moved = dw("sandbox", "start", "--dir", str(root), "--move-port")
        finally:
            taken.close()
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"port {port} on 127.0.0.1 is in use, and the sandbox in {root}" in refused.stderr
        assert "--move-port" in refused.stderr and "relink" in refused.stderr
        assert moved.returncode == 0, moved.stderr
        new = yaml.safe_load((root / "connection.yaml").read_text())["port"]
        assert new != port
        assert f"moved from port {port} to {new}: its environments' URLs changed" in moved.stdout
    finally:
        control.stop(root)


def _wait_for_connection(root: Path, proc: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        connection = control.read_connection(root)
        if connection and connection["pid"] == proc.pid:
            return connection
        time.sleep(0.1)
    raise AssertionError("the foreground sandbox never wrote connection.yaml")


def test_serve_in_the_foreground_until_ctrl_c(tmp_path: Path) -> None:
    args = ["sandbox", "serve", "--profile", "new-new", "--rows", "0", "--dir", str(tmp_path), "--port", "0"]
    proc = subprocess.Popen([DW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        connection = _wait_for_connection(tmp_path, proc)
        assert control._healthy(connection)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not (tmp_path / "connection.yaml").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
