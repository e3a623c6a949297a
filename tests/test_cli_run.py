"""`dw run`, `dw demo` and `dw sandbox consultant` from the command line.

Bad parameters must stop `dw run` with one clear error and exit 2 before any connection is made;
a valid run writes the executed notebook and its record side by side and prints the step summary.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from run_helpers import assert_finished_with_eligibility_warnings

from dwlib.record import load_record
from dwlib.sandbox import control
from dwlib.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
DW = str(Path(sys.executable).with_name("dw"))


def dw(*args: str, cwd: Path | None = None, stdin: str | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DW, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, input=stdin)


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


class Listener:
    """A TCP port that counts the connections made to it (nothing should connect)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def params_for(tmp_path: Path, port: int, extra: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        "scenario: existing-existing\n"
        "environments:\n"
        f"  tenant_id: contoso.onmicrosoft.com\n  authority: https://127.0.0.1:{port}/contoso\n"
        f"  dataverse_url: https://127.0.0.1:{port}/dataverse\n  finops_url: https://127.0.0.1:{port}/finops\n"
        "auth: {client_id: app, client_secret: 'env:DW_TEST_SECRET'}\n" + extra)
    return path


def test_bad_parameters_exit_2_with_one_message_and_no_connection(tmp_path: Path, listener: Listener) -> None:
    path = params_for(tmp_path, listener.port, "legal_entities: [USMF]\noptions: {concurency: 2}\n")
    result = dw("run", "existing-existing", "-f", str(path), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("dw: error: invalid parameters in ")
    assert result.stderr.endswith(
        "(1 problem):\n  options.concurency (line 9): unknown key; did you mean 'concurrency'?\n")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert listener.connections == 0 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "options.dry_run"], "-p takes KEY=VALUE"),
    (["-p", "options.dry_run=[unclosed"], "options.dry_run: the value is not valid YAML"),
    (["-p", "options.batch_size=5000"], "options.batch_size: must be less than or equal to 1000"),
    # papermill's form
    (["-p", "options.batch_size", "5000"], "options.batch_size: must be less than or equal to 1000"),
])
def test_bad_overrides_exit_2(tmp_path: Path, listener: Listener, args: list[str], message: str) -> None:
    path = params_for(tmp_path, listener.port, "")
    result = dw("run", "existing-existing", "-f", str(path), *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert listener.connections == 0


def test_parameters_of_another_scenario_exit_2(tmp_path: Path, listener: Listener) -> None:
    path = params_for(tmp_path, listener.port, "")
    result = dw("run", "new-new", "-f", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "scenario (line 1): the parameters are for existing-existing, not new-new" in result.stderr
    assert listener.connections == 0


def test_sandbox_runs_check_the_file_before_starting_a_sandbox(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params" / "sandbox-new-new.yaml").read_text() + "bootstrap: {tabels: []}\n")
    result = dw("run", "new-new", "-f", str(path), "--sandbox", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "bootstrap.tabels" in result.stderr and "did you mean 'tables'" in result.stderr
    assert "sandbox.dir" not in result.stderr and "sandbox new-new started" not in result.stdout


def test_with_sandbox_every_problem_of_the_file_is_found_before_a_sandbox_starts(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params" / "sandbox-new-new.yaml").read_text()
                    + "bootstrap: {mapping: {Contoso UK: GBSI}}\nenvironments: {finops_url: https://fo.example}\n")
    result = dw("run", "existing-new", "-f", str(path), "--sandbox", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for where in ("scenario (line", 'bootstrap.mapping["Contoso UK"] (line', "environments.finops_url (line"):
        assert where in result.stderr, result.stderr
    assert "(3 problems)" in result.stderr and "started" not in result.stdout


def test_a_sandbox_that_is_not_running_is_reported_with_every_other_problem(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("scenario: existing-new\nsandbox: {dir: .dw/sandbox/existing-new}\n"
                    "legal_entities: [USMF]\ntable_maps: [Contacts V2]\nverify: {company: GBSI}\n")
    result = dw("run", "existing-new", "-f", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "(3 problems)" in result.stderr, result.stderr
    for where in ("sandbox.dir (line 2): ", "table_maps[0].name (line 4): ", "verify.company (line 5): "):
        assert where in result.stderr


def test_a_parameters_file_that_is_not_utf8_exits_2_saying_where(tmp_path: Path, listener: Listener) -> None:
    path = params_for(tmp_path, listener.port, "legal_entities: [USMF]\n")
    path.write_bytes(path.read_bytes() + "bootstrap: {mapping: {Société: USMF}}\n".encode("cp1252"))
    result = dw("run", "existing-existing", "-f", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "(line 9): the file is not UTF-8 text: byte 0xe9 in column 27" in result.stderr
    assert listener.connections == 0


def test_the_consultant_refuses_what_it_cannot_do(start_sandbox: Any) -> None:
    connection = start_sandbox("new-new", rows=5)
    root = str(Path(connection["ca_bundle"]).parent)
    unknown = json.dumps({"instruction": {"title": "Reticulate splines", "steps": []}, "sandbox_dir": root})
    result = dw("sandbox", "consultant", stdin=unknown, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == ("dw: error: the sandbox consultant does not know how to do: "
                                     "'Reticulate splines'")
    result = dw("sandbox", "consultant", stdin="not json", timeout=60)
    assert result.returncode == 1
    assert "expected the runbook's gate instruction as JSON on stdin" in result.stderr


def test_run_with_sandbox_writes_notebook_and_record_and_exits_0(tmp_path: Path) -> None:
    scenario = "existing-new"
    result = dw("run", scenario, "-f", str(ROOT / "params" / f"sandbox-{scenario}.yaml"), "--sandbox",
                "--rows", "200", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = list((tmp_path / "runs").glob(f"*-{scenario}-*.json"))
    assert len(records) == 1
    data = load_record(records[0])
    notebook = records[0].with_suffix(".ipynb")
    assert notebook.is_file() and records[0].name.endswith(f"-{scenario}-{data['run_id'][:8]}.json")
    assert data["status"] == "passed"
    for step in SCENARIOS[scenario].step_ids():  # the summary: one line per step, as recorded
        assert any(line.split()[:2] == [step, "passed"] or line.split()[:2] == [step, "already_done"]
                   for line in result.stdout.splitlines()), step
    assert f"notebook: {notebook.resolve()}" in result.stdout
    assert f"record:   {records[0].resolve()}" in result.stdout
    sandbox_dir = Path(data["environments"]["sandbox_dir"])
    assert not sandbox_dir.exists()  # the temporary sandbox was stopped and removed


def test_demo_runs_the_existing_existing_runbook_headless(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    result = dw("demo", "--dir", str(root), "--rows", "300", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = (tmp_path / "runs").glob("*-existing-existing-*.json")
    data = load_record(record)
    assert data["environments"]["sandbox_dir"] == str(root.resolve())
    # The demo's Dataverse has rows dual-write will not pick up (prospects, contacts that are not
    # customers, rows no company takes): plan and verify say so, the run is done with warnings.
    assert_finished_with_eligibility_warnings(data)
    assert f"record:   {record.resolve()}" in result.stdout
    assert not control.status(root).running  # stopped; its data kept for a look afterwards
    # kept: the 300 seeded accounts, plus the F&O customers the runbook migrated into Dataverse
    assert control.table_rows(root)["accounts"] > 300


def test_runs_use_this_python_as_kernel_whatever_the_user_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    from dwlib.execute import KERNEL, this_python_kernel

    other = tmp_path / "share" / "kernels" / KERNEL  # a python3 of another interpreter, found first
    other.mkdir(parents=True)
    (other / "kernel.json").write_text(json.dumps({"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher",
                                                            "-f", "{connection_file}"],
                                                   "display_name": "other", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == "/usr/bin/python3"
    with this_python_kernel():
        assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable
    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == "/usr/bin/python3"


@pytest.mark.parametrize(("statuses", "ok"), [
    (["passed", "already_done"], True),
    (["passed", "warning"], True),  # finished, its warnings said (the exit status of dw run)
    (["warning", "failed"], False),
    (["skipped", "passed"], False),  # a dry run did not set anything up
    (["passed"], False),  # a step that never ran
])
def test_a_run_is_ok_only_when_every_planned_step_passed_or_was_done(statuses: list[str], ok: bool) -> None:
    from dwlib.execute import Execution

    steps = [{"id": i, "step": i, "status": s, "summary": f"{i} {s}"}
             for i, s in zip("ab", statuses, strict=False)]
    data = {"run_id": "r", "status": "x", "steps_planned": ["a", "b"], "steps": steps}
    run = Execution(Path("n.ipynb"), Path("n.json"), data)
    assert run.ok is ok
    table = run.summary().splitlines()
    assert table[0].split() == ["step", "status", "seconds", "summary"]
    assert table[2].split()[:2] == ["b", statuses[1] if len(statuses) > 1 else "not"]
