"""`dw batch`: plans validated up front, runs as processes with a manifest, resume, pair exclusion,
cancellation without leaked kernels, and the Dask executor on a LocalCluster (paths and URLs)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from dwlib.batch import load_plan, run_batch
from dwlib.batch.executors import DASK_MISSING, DaskExecutor, Executor
from dwlib.batch.manifest import Manifest, is_done
from dwlib.batch.runner import schedule
from dwlib.batch.storage import Output
from dwlib.batch.worker import RunSpec
from dwlib.errors import DwError
from dwlib.params import ParamsError
from dwlib.record import load_record
from dwlib.review import catalogue, verify
from dwlib.sandbox import control
from dwlib.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
DW = str(Path(sys.executable).with_name("dw"))
SCENARIO = "existing-existing"
# Its Dataverse has rows dual-write will not pick up, which plan and verify report: a run of it
# finishes with warnings (its record's status; dw run exits 0, the batch counts it passed).
FINISHED = "warning"


def dw(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DW, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def params_file(directory: Path, connection: dict[str, Any], name: str) -> Path:
    """The sandbox parameters of the project, pointed at the sandbox of `connection`."""
    data = yaml.safe_load((ROOT / "params" / f"sandbox-{SCENARIO}.yaml").read_text())
    data["sandbox"] = {"dir": connection["state_dir"]}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_plan(path: Path, runs: list[dict[str, Any]], **top: Any) -> Path:
    path.write_text(yaml.safe_dump({**top, "runs": runs}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pairs(start_sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Parameters files of two sandboxes of their own (two environment pairs)."""
    directory = tmp_path_factory.mktemp("batch-params")
    return [params_file(directory, start_sandbox(SCENARIO, rows=50, fresh=True), f"pair{i}") for i in (1, 2)]


def records(out: Path) -> set[Path]:
    return {p for p in out.glob("*/*.json")}


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_six_runs_on_two_pairs_then_resume_reruns_only_the_failed_one(tmp_path: Path,
                                                                      pairs: list[Path]) -> None:
    runs = [{"name": f"p{p + 1}-{i}", "scenario": SCENARIO, "params": str(pairs[p])}
            for i in range(3) for p in range(2)]
    # A valid code, but no legal entity of this F&O: only the environment can say so (preflight fails).
    runs[3]["overrides"] = {"legal_entities": ["USMF", "GBSI", "DEMF", "FRRT", "ZZZ"]}
    plan, out = write_plan(tmp_path / "plan.yaml", runs), tmp_path / "out"
    first = dw("batch", str(plan), "--max-parallel", "2", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((out / "batch.json").read_text())
    status = {r["name"]: r["status"] for r in manifest["runs"]}
    assert status == {**{r["name"]: "passed" for r in runs}, "p2-1": "failed"}
    assert manifest["status"] == "failed" and "p2-1: failed" in first.stdout
    for entry in manifest["runs"]:
        record = load_record(entry["record"])  # each run: its own directory, record, notebook and log
        assert Path(entry["record"]).parent == out / entry["name"] and Path(entry["notebook"]).is_file()
        assert "running existing-existing headless" in Path(entry["log"]).read_text()
        assert entry["environments"]["dataverse_url"] == record["environments"]["dataverse_url"]
        assert record["status"] == ("failed" if entry["name"] == "p2-1" else FINISHED)
        if record["status"] == FINISHED:
            assert {s["id"] for s in record["steps"]} == set(record["steps_planned"])
    # One pair's runs never overlap (and go in plan order); the two pairs did run side by side.
    spans = {p: sorted((when(r["started"]), when(r["ended"]), r["name"]) for r in manifest["runs"]
                       if r["name"].startswith(p)) for p in ("p1", "p2")}
    for p, intervals in spans.items():
        assert [n for _, _, n in intervals] == [f"{p}-{i}" for i in range(3)]
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals)), intervals
    assert any(a[0] < b[1] and b[0] < a[1] for a in spans["p1"] for b in spans["p2"])

    runs[3].pop("overrides")  # fixed: the company is removed from the plan, then --resume
    write_plan(plan, runs)
    before = records(out)
    second = dw("batch", str(plan), "--resume", "--out", str(out), cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = json.loads((out / "batch.json").read_text())
    assert resumed["batch_id"] == manifest["batch_id"] and resumed["status"] == "passed"
    again = {r["name"]: r for r in resumed["runs"]}
    assert [p.parent.name for p in records(out) - before] == ["p2-1"]  # one new record
    assert again["p2-1"]["attempt"] == 2 and again["p2-1"]["previous"][0]["status"] == "failed"
    assert load_record(again["p2-1"]["record"])["status"] == FINISHED
    for old in manifest["runs"]:
        if old["name"] != "p2-1":
            assert again[old["name"]] == old  # untouched: not rerun
    assert "resuming: 5 run(s) already passed, 1 to run" in second.stdout
    # The summary is the review catalogue of the current attempts; `dw review OUT` lists them all.
    listed = {row["record"] for row in catalogue(out)}
    assert {r["record"] for r in resumed["runs"]} <= listed and len(listed) == 7
    assert "6 runs: 6 passed" in second.stdout
    # No client secret of either sandbox in any byte the batch wrote: records, notebooks, logs …
    for params in pairs:
        state = Path(yaml.safe_load(params.read_text())["sandbox"]["dir"])
        connection = yaml.safe_load((state / "connection.yaml").read_text())
        secret = Path(connection["client_secret_file"]).read_text().strip().encode()
        assert len(secret) > 8
        for path in (p for p in out.rglob("*") if p.is_file()):
            assert secret not in path.read_bytes(), path
        assert secret.decode() not in first.stdout + first.stderr + second.stdout + second.stderr


def test_a_bad_plan_exits_2_with_every_problem_before_any_run(tmp_path: Path, pairs: list[Path]) -> None:
    plan = write_plan(tmp_path / "plan.yaml", [
        {"name": "ok", "scenario": SCENARIO, "params": str(pairs[0])},
        {"name": "ok", "scenario": SCENARIO, "params": str(pairs[1])},
        {"name": "big", "scenario": SCENARIO, "params": str(pairs[0]),
         "overrides": {"options.batch_size": 5000}},
        {"name": "wrong", "scenario": "new-new", "params": str(pairs[0])},
        {"name": "gone", "scenario": SCENARIO, "params": "missing.yaml"},
    ], max_paralel=2)
    out = tmp_path / "out"
    result = dw("batch", str(plan), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "max_paralel (line 1): unknown key; did you mean 'max_parallel'?" in result.stderr
    assert not out.exists()
    (tmp_path / "plan.yaml").write_text(plan.read_text().replace("max_paralel", "max_parallel"))
    result = dw("batch", str(plan), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"dw: error: invalid parameters in {plan}")
    for text in (r"runs\[1\]: run name ok is also the name of runs\[0\]",
                 r"runs\[2\] big: pair1.yaml options.batch_size: must be less than or equal to 1000",
                 r"runs\[3\] wrong: pair1.yaml scenario \(line \d+\): the parameters are for "
                 r"existing-existing, not new-new",
                 r"runs\[4\] gone: missing.yaml: cannot read"):
        assert re.search(text, result.stderr), result.stderr
    assert not out.exists() and result.stdout == ""


def test_plan_names_and_override_keys_are_checked_with_the_parameters_wording(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("runs:\n  - name: bad name!\n    scenario: new-new\n    params: p.yaml\n"
                    "    overrides: {'options.dry_run=true': 1}\n    timout_s: 5\n")
    with pytest.raises(ParamsError) as exc:
        load_plan(plan)
    assert exc.value.problems == [
        ("runs[0].name (line 2)",
         "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        ('runs[0].overrides["options.dry_run=true"] (line 5)',
         "an override key is a dotted parameter name, without '='"),
        ("runs[0].timout_s (line 6)", "unknown key; did you mean 'timeout_s'?"),
    ]


def test_a_plan_gathers_the_warnings_of_shared_parameters_once_and_logs_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from dwlib.params import load as params_load

    monkeypatch.setattr(params_load, "_said", set())
    monkeypatch.setenv("DW_TEST_SECRET", "x")
    params = {"scenario": "existing-existing", "legal_entities": ["USMF"],
              "environments": {"tenant_id": "contoso.onmicrosoft.com",
                               "dataverse_url": "https://contoso.crm.dynamics.com/",
                               "finops_url": "https://contoso.operations.dynamics.com"},
              "auth": {"client_id": "11111111-2222-3333-4444-555555555555",
                       "client_secret": "env:DW_TEST_SECRET"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"runs": [{"name": n, "scenario": "existing-existing", "params": "p.yaml"}
                                             for n in ("a", "b")]}))
    with caplog.at_level(logging.WARNING, logger="dwlib.params"):
        loaded = load_plan(plan)
    assert len(loaded.warnings) == 1 and "USMF has 4 characters" in loaded.warnings[0]
    assert caplog.records == []


class FakeExecutor(Executor):
    """Runs nothing: notes which runs overlap; each run lasts until another runs beside it (or 0.3 s)."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self.slots, self.pairs = 2, pairs
        self.active: set[str] = set()
        self.most = 0
        self.started: list[str] = []
        self.overlap_of_a_pair: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def run(self, spec: RunSpec, on_start: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        assert on_start is not None
        on_start({"pid": 1000 + int(spec.name[1:]), "host": "fake"})
        with self.cond:
            pair = self.pairs[spec.name]
            self.overlap_of_a_pair += [(spec.name, o) for o in self.active if self.pairs[o] == pair]
            self.active.add(spec.name)
            self.started.append(spec.name)
            self.most = max(self.most, len(self.active))
            self.cond.notify_all()
            self.cond.wait_for(lambda: len(self.active) > 1, timeout=0.3)
            self.active.discard(spec.name)
        return {"status": "passed", "exit_code": 0, "started": "2025-01-01T00:00:00.000Z",
                "ended": "2025-01-01T00:00:01.000Z"}

    def cancel(self) -> None:
        raise AssertionError("not cancelled")


def test_the_scheduler_bounds_runs_and_keeps_each_pair_to_one_run_in_plan_order(tmp_path: Path) -> None:
    names = [f"r{i}" for i in range(9)]
    pairs = {n: "abc"[i % 3] for i, n in enumerate(names)}
    manifest = Manifest.new(Output(tmp_path), plan="p.yaml", executor="fake", max_parallel=2)
    manifest.data["runs"] = [{"name": n, "attempt": 1, "duration_s": None, "error": None} for n in names]
    specs = {n: RunSpec(n, SCENARIO, "p.yaml", {}, str(tmp_path / n), "a.log", str(tmp_path)) for n in names}
    fake = FakeExecutor(pairs)
    lines: list[str] = []
    assert schedule(fake, manifest, specs, pairs, 2, lines.append) is False
    assert fake.most == 2 and fake.overlap_of_a_pair == []
    for pair in "abc":
        assert [n for n in fake.started if pairs[n] == pair] == [n for n in names if pairs[n] == pair]
    saved = json.loads((tmp_path / "batch.json").read_text())
    assert [r["status"] for r in saved["runs"]] == ["passed"] * 9
    assert [r["pid"] for r in saved["runs"]] == [1000 + i for i in range(9)]  # noted as each started


def dask_plan(tmp_path: Path, pairs: list[Path]) -> Path:
    return write_plan(tmp_path / "plan.yaml", [{"name": f"d{i}", "scenario": SCENARIO, "params": str(p)}
                                               for i, p in enumerate(pairs)])


def test_dask_executor_on_a_local_cluster(tmp_path: Path, pairs: list[Path]) -> None:
    out = tmp_path / "out"
    result = dw("batch", str(dask_plan(tmp_path, pairs)), "--executor", "dask", "--max-parallel", "2",
                "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((out / "batch.json").read_text())
    assert manifest["executor"] == "dask" and manifest["status"] == "passed"
    for entry in manifest["runs"]:
        assert load_record(entry["record"])["status"] == FINISHED and Path(entry["log"]).is_file()


class DirHandler:
    """A papermill I/O handler for `testfs://NAME` URLs, kept in a local directory."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def _path(self, url: str) -> Path:
        return self.root / url.removeprefix("testfs://")

    def read(self, url: str) -> str:
        return self._path(url).read_text()

    def write(self, buf: str | bytes, url: str) -> None:
        self._path(url).parent.mkdir(parents=True, exist_ok=True)
        self._path(url).write_bytes(buf if isinstance(buf, bytes) else buf.encode())

    def listdir(self, url: str) -> list[str]:
        return [f"{url}/{p.name}" for p in self._path(url).iterdir()]

    def pretty_path(self, url: str) -> str:
        return url


def register_testfs(root: str) -> None:
    from papermill.iorw import papermill_io

    papermill_io.register("testfs://", DirHandler(root))


def test_dask_outputs_to_a_url_go_through_papermill_io(tmp_path: Path, pairs: list[Path]) -> None:
    distributed = pytest.importorskip("distributed")
    store = tmp_path / "bucket"
    register_testfs(str(store))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(register_testfs, str(store))  # the workers' papermill knows the scheme too
        plan = dask_plan(tmp_path, pairs[:1])
        result = run_batch(plan, "testfs://nightly", executor="dask", client=client, echo=lambda line: None)
        assert result.exit_code == 0
        (entry,) = result.manifest.data["runs"]
        assert entry["record"].startswith("testfs://nightly/d0/") and entry["log"] == "testfs://nightly/d0/attempt-1.log"
        record = json.loads((store / entry["record"].removeprefix("testfs://")).read_text())
        assert record["status"] == FINISHED
        assert (store / entry["notebook"].removeprefix("testfs://")).is_file()
        uploaded = store / "nightly" / "d0"
        assert [v.problems for v in verify(uploaded)] == [[]]  # every file arrived byte for byte
        saved = json.loads((store / "nightly" / "batch.json").read_text())
        assert saved["runs"][0]["status"] == "passed"
        again = run_batch(plan, "testfs://nightly", resume=True, executor="dask", client=client,
                          echo=lambda line: None)  # read back through the handler: nothing to rerun
        assert again.exit_code == 0 and again.manifest.data["runs"][0]["attempt"] == 1


def test_a_url_output_keeps_binary_files_byte_for_byte(tmp_path: Path) -> None:
    register_testfs(str(tmp_path / "bucket"))
    data = bytes(range(256)) * 4  # not UTF-8: a zip of exported DMF data is like this
    Output("testfs://nightly").write_bytes("run/evidence/export.zip", data)
    assert (tmp_path / "bucket" / "nightly" / "run" / "evidence" / "export.zip").read_bytes() == data


def test_dask_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(DwError) as caught:
        DaskExecutor()
    assert str(caught.value) == DASK_MISSING and "pip install 'dwlib[dask]'" in DASK_MISSING


UPDATE_ACCOUNTS = r"/accounts/Microsoft\.Dynamics\.CRM\.UpdateMultiple$"  # bootstrap-apply's first write


def _batch(plan: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([DW, "batch", str(plan), "--out", str(out), *args], cwd=plan.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # its lines as they are said


def test_cancelling_a_batch_stops_its_runs_and_their_kernels(tmp_path: Path, start_sandbox: Any) -> None:
    sandbox = start_sandbox(SCENARIO, rows=50, fresh=True)
    plan = write_plan(tmp_path / "plan.yaml", [{"name": "one", "scenario": SCENARIO,
                                                "params": str(params_file(tmp_path, sandbox, "one"))}])
    out = tmp_path / "out"
    batch = _batch(plan, out)
    me = psutil.Process(batch.pid)
    tree: dict[psutil.Process, str] = {}  # what the batch started, with its command line
    # SIGTERM reaches dw batch (not its run) as the run's bootstrap sends its first write.
    control.traps(sandbox, [{"path": UPDATE_ACCOUNTS, "at": "before", "signal": "SIGTERM", "pid": batch.pid}])
    while batch.poll() is None and not control.traps(sandbox)[0]["fired"]:
        for proc in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                tree.setdefault(proc, " ".join(proc.cmdline()))
        time.sleep(0.1)
    output, _ = batch.communicate(timeout=120)
    assert batch.returncode == 130, output
    assert any("ipykernel" in command for command in tree.values())
    _, alive = psutil.wait_procs(list(tree), timeout=10)
    assert alive == [], [p.cmdline() for p in alive]  # dw run, its kernel and gate commands: all stopped
    manifest = Manifest.load(Output(out))
    assert manifest is not None and manifest.data["status"] == "cancelled"
    (entry,) = manifest.data["runs"]
    assert entry["status"] == "cancelled" and entry["error"] == "stopped: the batch was cancelled"
    # The batch passed the signal on: the run stopped cleanly, its record says where.
    record = load_record(entry["record"])
    # The run went on a moment after the batch's signal: it stopped in some step, or (a loaded
    # machine, a short step) between two steps; the record says which.
    step = record["current_step"]
    assert record["status"] == "interrupted"
    if step is None:
        assert record["error"] == "interrupted by SIGINT between steps"
    else:
        assert step in SCENARIOS[SCENARIO].step_ids()
        assert record["error"] == f"interrupted by SIGINT while step {step} was running"
    assert not is_done(entry, load_plan(plan).runs[0])  # --resume runs it again


def _fired(sandbox: dict[str, Any], sig: str, deadline_s: float = 300) -> dict[str, Any]:
    """What the sandbox's trap of signal `sig` did, once it fired."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        fired = next(t for t in control.traps(sandbox) if t["signal"] == sig)["fired"]
        if fired is not None:
            return dict(fired)
        time.sleep(0.1)
    raise AssertionError(f"the {sig} trap did not fire within {deadline_s} s")


def test_a_batch_killed_mid_plan_resumes_without_doubling_a_run(tmp_path: Path, start_sandbox: Any) -> None:
    sandbox = start_sandbox(SCENARIO, rows=50, fresh=True)
    params = str(params_file(tmp_path, sandbox, "pair"))
    # Three runs of one environment pair: they run one after the other, in plan order.
    plan = write_plan(tmp_path / "plan.yaml", [{"name": n, "scenario": SCENARIO, "params": params}
                                               for n in ("setup", "recheck", "again")])
    out = tmp_path / "out"
    batch = _batch(plan, out)
    # SIGKILL: no handler runs. The first run's dw run goes on alone (its own session), until its
    # kernel is held (SIGSTOP) at its next step, so that it is still going when the batch resumes.
    control.traps(sandbox, [
        {"path": UPDATE_ACCOUNTS, "at": "before", "signal": "SIGKILL", "pid": batch.pid},
        {"path": "ExportToPackage$", "at": "before", "signal": "SIGSTOP", "process": "ipykernel"}])
    output, _ = batch.communicate(timeout=300)
    assert batch.returncode == -signal.SIGKILL, output
    killed = json.loads((out / "batch.json").read_text())  # valid, as last written
    assert [r["status"] for r in killed["runs"]] == ["running", "pending", "pending"]
    assert psutil.pid_exists(killed["runs"][0]["pid"])  # the first run is still going

    held = _fired(sandbox, "SIGSTOP")
    resumed = _batch(plan, out, "--resume")
    assert resumed.stdout is not None
    try:
        lines = []
        for line in resumed.stdout:  # the resumed batch waits for the run left running ...
            lines.append(line)
            if "setup: still running from the batch that was stopped" in line:
                break
    finally:
        os.kill(held["pid"], signal.SIGCONT)  # ... which then finishes
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, "".join(lines) + output
    manifest = json.loads((out / "batch.json").read_text())
    assert manifest["status"] == "passed" and manifest["batch_id"] == killed["batch_id"]
    entries = {r["name"]: r for r in manifest["runs"]}
    assert {n: (r["status"], r["attempt"]) for n, r in entries.items()} == {
        "setup": ("passed", 1), "recheck": ("passed", 1), "again": ("passed", 1)}
    found = sorted(records(out))
    assert len(found) == 3 and {Path(r["record"]) for r in entries.values()} == set(found)  # none twice
    spans = sorted((when(d["started"]), when(d["ended"])) for d in map(load_record, found))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # one pair: never two at once
