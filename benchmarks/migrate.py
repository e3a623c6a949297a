"""Migrate benchmark: the migrate step's rows/s beside the bulk path's, and where its time goes.

Run: `python benchmarks/migrate.py [--rows N] [--json] [--save] [--profile FILE]`

Starts a fresh `existing-existing` sandbox (N accounts and N contacts in Dataverse, N customers in
F&O) in a temporary directory, opens the runbook in this process (`Runbook.open` with
`params/sandbox-existing-existing.yaml`, the sandbox consultant answering the gates) and runs its
steps up to `migrate`. Then, in one run:

- **migrate**: the `migrate` step (check → act → verify), its phases timed by wrapping the step's
  own functions: `reconcile before` (check), `export` (the DMF export job and the package's
  download), `parse` (reading the package's rows), `dataverse read` (the Dataverse rows of the
  map), `spill` (both sides into the company's spill file, less those reads), `transform`
  (pairing, comparing and converting rows), `package` (writing the import package),
  `upsert` (UpsertMultiple into Dataverse), `dmf import` (packages into F&O), `reconcile after`
  (verify). Row iterators (`parse`, `dataverse read`) are timed row by row, wherever consumed.
  Exports, reads, writes and imports overlap, so each phase is given twice: `phases_s`, its
  calls' seconds summed over threads (a nested phase's time taken out of its parent's), and
  `wall_s`, the wall seconds during which at least one of its calls ran (with `step check`,
  `step act` and `step verify`, the step's own three parts, which do not overlap); `timeline`
  lists each call's start and end;
- **bulk**: the client's bulk path (`update_multiple`, the same batch size and concurrency)
  updating every account once, on the same sandbox right after the migration: one column per
  row, the issue's reference;
- **bulk, same rows**: the rows the step sent to Dataverse (UpsertMultiple; kept as they were
  sent) sent again through the bulk path as new rows (a new id, the map's key prefixed "R"),
  right after: the bulk path writing what migrate writes, full rows created.

`ratio` = migrate rows/s ÷ bulk rows/s, where migrate rows are the rows the step wrote (both
directions); `ratio_same_rows` = migrate rows/s ÷ the rows/s of the bulk path sending the same
rows; `ratio_bound` = the best `ratio` a migrate could reach that did nothing but write its
Dataverse rows through the bulk path (migrate rows ÷ the seconds the bulk path takes for its
Dataverse rows ÷ bulk rows/s): its F&O imports free, nothing read, compared or verified.
`cpu_s`: the CPU seconds the sandbox process and this one (the client) used during the step:
on 2 cores, the step cannot end before either has done its share; `bulk_cpu_s` the same for the
bulk path, and `sandbox_cpu_ratio` = (migrate rows ÷ the sandbox's CPU seconds in
migrate) ÷ (bulk rows ÷ its CPU seconds in bulk): the ratio the sandbox's work per row allows at
best, much less dependent on what else runs on the machine than `ratio`. `--profile FILE` also
writes a cProfile of the migrate step (this process); with `DW_BENCH_PY_SPY=<py-spy binary>`, py-spy
records the sandbox process during the step (flame graph in `DW_BENCH_PY_SPY_OUT`;
`DW_BENCH_PY_SPY_FORMAT=raw`: collapsed stacks), and this process (the client) into
`DW_BENCH_PY_SPY_CLIENT_OUT`.

Prints one JSON object with `--json` (else a table); `--save` also writes it to
`benchmarks/results/migrate-<N>.json`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dwlib import catalog  # noqa: E402
from dwlib.clients.dataverse import DataverseClient  # noqa: E402
from dwlib.packaged import param_file  # noqa: E402
from dwlib.runbook import Runbook  # noqa: E402
from dwlib.sandbox import control  # noqa: E402
from dwlib.steps import migrate as migrate_mod  # noqa: E402

SCENARIO = "existing-existing"
RESULTS = ROOT / "benchmarks" / "results"


class Phases:
    """Seconds per phase, summed over threads; nested phases are subtracted from their parent."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._local = threading.local()

    def busy(self) -> dict[str, float]:
        """Per phase, the wall seconds during which at least one call of it ran (the union of its
        calls' spans, nested phases included): what overlapping calls took of the clock."""
        out = {}
        for name, spans in self.spans.items():
            total, end = 0.0, float("-inf")
            for a, b in sorted(spans):
                if b > end:
                    total += b - max(a, end)
                    end = b
            out[name] = total
        return out

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            spent = end - start
            stack.pop()
            with self._lock:
                self.seconds[name] += spent
                self.spans[name].append((start, end))
                if stack:
                    self.seconds[stack[-1]] -= spent

    def wrap(self, owner: Any, attr: str, name: str) -> Callable[[], None]:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    def wrap_rows(self, owner: Any, attr: str, name: str) -> Callable[[], None]:
        """Like `wrap`, for a function that returns an iterator of rows: the time spent getting
        each row (whoever asks for it) is the phase's, and is taken from the asking phase."""
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            return self._timed_rows(name, iter(original(*args, **kwargs)))

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, original)

    def _timed_rows(self, name: str, rows: Iterator[Any]) -> Iterator[Any]:
        spent, first, last = 0.0, 0.0, 0.0
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    row = next(rows)
                except StopIteration:
                    return
                finally:
                    last = time.perf_counter()
                    spent += last - t0
                    first = first or t0
                yield row
        finally:
            stack = self._local.__dict__.setdefault("stack", [])
            with self._lock:
                self.seconds[name] += spent
                if first:
                    self.spans[name].append((first, last))
                if stack:
                    self.seconds[stack[-1]] -= spent


def instrument(phases: Phases) -> list[Callable[[], None]]:
    """Wrap the migrate step's functions with phase timers; returns the undo functions."""
    m = migrate_mod
    undo = [
        phases.wrap(m._Mover, "export", "export"),  # started (one after the other)
        phases.wrap(m._Mover, "finish_export", "export"),  # waited for, downloaded
        phases.wrap(m._Mover, "prepare", "spill"),  # both sides into the spill file, less the reads
        phases.wrap_rows(m, "package_rows", "parse"),
        phases.wrap_rows(m._Mover, "_dataverse_rows", "dataverse read"),
        phases.wrap(m._Mover, "finops_side", "transform"),  # pair, compare and convert, into the spill
        phases.wrap(m._Mover, "dataverse_side", "transform"),
        phases.wrap(m._Mover, "package", "package"),  # the import package written
        phases.wrap(m._Mover, "_upsert", "upsert"),
        phases.wrap(m._Mover, "import_rows", "dmf import"),
        phases.wrap(m.Migrate, "check", "step check"),
        phases.wrap(m.Migrate, "act", "step act"),
        phases.wrap(m.Migrate, "verify", "step verify"),
    ]
    reconcile = vars(m)["reconcile"]  # the step's own name for it (not re-exported)
    calls = {"n": 0}

    def timed_reconcile(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        with phases.phase("reconcile before" if calls["n"] == 1 else "reconcile after"):
            return reconcile(*args, **kwargs)

    vars(m)["reconcile"] = timed_reconcile
    undo.append(lambda: setattr(m, "reconcile", reconcile))
    return undo


class Cpu:
    """CPU seconds (user + system) of the sandbox process and of this one, between two marks."""

    def __init__(self, sandbox_pid: int) -> None:
        self.procs = {"sandbox": psutil.Process(sandbox_pid), "client": psutil.Process()}
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        return {k: sum(p.cpu_times()[:2]) for k, p in self.procs.items()}

    def mark(self) -> dict[str, float]:
        """The seconds each used since the last mark."""
        now = self._now()
        spent = {k: round(now[k] - self.last[k], 2) for k in now}
        self.last = now
        return spent


def _spy(pid: int, out_var: str = "DW_BENCH_PY_SPY_OUT",
         default: str = "sandbox-migrate.svg") -> subprocess.Popen[bytes] | None:
    """py-spy recording process `pid` during the step, when `DW_BENCH_PY_SPY` names its binary (the
    flame graph goes to the file named by `out_var`)."""
    binary = os.environ.get("DW_BENCH_PY_SPY")
    if not binary:
        return None
    out = os.environ.get(out_var, default)
    fmt = os.environ.get("DW_BENCH_PY_SPY_FORMAT", "flamegraph")  # or raw: collapsed stacks
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--output", out, "--rate", "100",
                             "--threads", "--format", fmt])


class Sent:
    """The rows the migrate step sends to Dataverse (UpsertMultiple), kept to be sent again."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()

    def capture(self) -> Callable[[], None]:
        """Keep a copy of every row given to `DataverseClient.upsert_multiple`; returns the undo."""
        original = DataverseClient.upsert_multiple
        sent = self

        def kept(client: DataverseClient, entity_set: str, rows: Any, **kw: Any) -> Any:
            rows = list(rows)
            with sent._lock:
                sent.rows[(entity_set, kw.get("logical_name"))] += [dict(r) for r in rows]
            return original(client, entity_set, rows, **kw)

        DataverseClient.upsert_multiple = kept  # type: ignore[method-assign,assignment]
        return lambda: setattr(DataverseClient, "upsert_multiple", original)


def bulk_same_rows(rb: Runbook, sent: Sent) -> tuple[int, float, int]:
    """The rows migrate sent to Dataverse, sent again through the bulk path (`upsert_multiple`, the
    same chunks and concurrency) as new rows: a new primary id, and their map's key prefixed with
    "R" (an alternate key: `accountnumber`, `msdyn_contactpersonid`), so each is created as migrate
    created most of them. (rows, seconds, rows the service refused)."""
    assert rb.session is not None
    dv = rb.session.dataverse
    keys = {m.dataverse_table: m.dataverse_key[0] for m in catalog.table_maps()}
    batches = []
    for (entity_set, logical), rows in sent.rows.items():
        pk = dv.table(entity_set).primary_id
        key = keys.get(entity_set)
        batches.append((entity_set, logical, [
            {**r, pk: str(uuid.uuid4()), **({key: "R" + str(r[key])} if key and r.get(key) else {})}
            for r in rows]))
    total = sum(len(rows) for _, _, rows in batches)
    start = time.perf_counter()
    refused = 0
    for entity_set, logical, rows in batches:
        result = dv.upsert_multiple(entity_set, rows, logical_name=logical, errors="collect")
        refused += result.total - result.succeeded
    return total, time.perf_counter() - start, refused


def bulk(rb: Runbook) -> tuple[int, float]:
    """Every account updated once through the client's bulk path; (rows, seconds)."""
    assert rb.session is not None
    dv = rb.session.dataverse
    ids = [r["accountid"] for r in dv.query("accounts", select=["accountid"])]
    start = time.perf_counter()
    dv.update_multiple("accounts", ({"accountid": i, "description": "bench"} for i in ids))
    return len(ids), time.perf_counter() - start


def run(rows: int, profile: Path | None) -> dict[str, Any]:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        root = Path(tmp) / "sandbox"
        start = time.perf_counter()
        started = control.start(SCENARIO, root=root, rows=rows, port=0, owner_pid=os.getpid())
        cpu = Cpu(started.connection["pid"])
        sandbox_s = time.perf_counter() - start
        try:
            rb = Runbook.open(param_file(f"sandbox-{SCENARIO}.yaml"), {"sandbox.dir": str(root)},
                              record_path=Path(tmp) / "runs" / "run.json", interactive=False)
            before: dict[str, float] = {}
            with rb:
                for step in rb.step_ids:
                    if step == "migrate":
                        break
                    before[step] = rb.run(step).duration_s
                phases = Phases()
                sent = Sent()
                undo = [*instrument(phases), sent.capture()]
                profiler = cProfile.Profile() if profile else None
                spies = [s for s in (_spy(started.connection["pid"]),
                                     _spy(os.getpid(), "DW_BENCH_PY_SPY_CLIENT_OUT", "client-migrate.svg"))
                         if s is not None]
                start = time.perf_counter()
                cpu.mark()
                if profiler:
                    profiler.enable()
                try:
                    result = rb.run("migrate")
                finally:
                    if profiler and profile:
                        profiler.disable()
                        profiler.dump_stats(profile)
                    for u in undo:
                        u()
                    for spy in spies:
                        spy.send_signal(signal.SIGINT)
                        spy.wait()
                migrate_s = time.perf_counter() - start
                migrate_cpu = cpu.mark()
                cpu.mark()
                bulk_rows, bulk_s = bulk(rb)
                bulk_cpu = cpu.mark()
                same_rows, same_s, same_refused = bulk_same_rows(rb, sent)
                same_cpu = cpu.mark()
        finally:
            control.stop(root)
    counts = result.counts
    moved = sum(v for k, v in counts.items() if "→" in k)
    migrate_rate = moved / migrate_s
    bulk_rate = bulk_rows / bulk_s
    return {
        "rows": rows,
        "status": result.status.value if hasattr(result.status, "value") else str(result.status),
        "sandbox_start_s": round(sandbox_s, 2),
        "steps_before_s": {k: round(v, 2) for k, v in before.items()},
        "migrate_s": round(migrate_s, 2),
        "migrate_rows": moved,
        "migrate_counts": counts,
        "migrate_rows_per_s": round(migrate_rate, 1),
        "cpu_s": migrate_cpu,
        "phases_s": {k: round(v, 2) for k, v in sorted(phases.seconds.items(), key=lambda kv: -kv[1])
                     if not k.startswith("step ")},
        "wall_s": {k: round(v, 2) for k, v in sorted(phases.busy().items(), key=lambda kv: -kv[1])},
        # Each call of a phase as [start, end], seconds from the step's start: the critical path.
        "timeline": {k: [[round(a - start, 2), round(b - start, 2)] for a, b in sorted(v)]
                     for k, v in sorted(phases.spans.items())},
        "bulk_rows": bulk_rows,
        "bulk_s": round(bulk_s, 2),
        "bulk_rows_per_s": round(bulk_rate, 1),
        "ratio": round(migrate_rate / bulk_rate, 3),
        "bulk_cpu_s": bulk_cpu,
        # Rows per second of sandbox CPU, migrate ÷ bulk: the ratio the sandbox's work per row
        # allows at best, whatever else runs on the machine (None: too little CPU to measure, as
        # at a few hundred rows).
        "sandbox_cpu_ratio": (round(moved * bulk_cpu["sandbox"] / (migrate_cpu["sandbox"] * bulk_rows), 3)
                              if migrate_cpu["sandbox"] and bulk_cpu["sandbox"] else None),
        # The same measure against the bulk path sending the very rows migrate sent to Dataverse
        # (full rows, created), not a one-column update: like for like.
        "bulk_same_rows": same_rows,
        "bulk_same_rows_s": round(same_s, 2),
        "bulk_same_rows_per_s": round(same_rows / same_s, 1),
        "bulk_same_rows_refused": same_refused,
        "bulk_same_rows_cpu_s": same_cpu,
        "ratio_same_rows": round(migrate_rate / (same_rows / same_s), 3),
        # The best `ratio` any migrate could reach here: one that did nothing but write its
        # Dataverse rows at the bulk path's full-row rate (no export, no read, no compare, no
        # verify, its F&O imports free and beside it).
        "ratio_bound": round(moved / same_s / bulk_rate, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/migrate-<N>.json")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the migrate step to this file")
    parser.add_argument("--label", default="", help="a note saved with the result (e.g. before/after)")
    args = parser.parse_args()
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="dw-bench-cache-"))
    # The steps say what they do (gates, the sandbox consultant) on stdout: to stderr, so that
    # stdout holds the one JSON object.
    with redirect_stdout(sys.stderr):
        measured = run(args.rows, args.profile)
    result = {
        "benchmark": "migrate",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label": args.label,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "scenario": SCENARIO,
        **measured,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        r = measured
        print(f"migrate at {r['rows']:,} rows per table: {r['status']}, {r['migrate_rows']:,} rows in "
              f"{r['migrate_s']:.1f} s = {r['migrate_rows_per_s']:,.0f} rows/s")
        print(f"bulk path: {r['bulk_rows']:,} rows in {r['bulk_s']:.1f} s = "
              f"{r['bulk_rows_per_s']:,.0f} rows/s")
        print(f"bulk path, the same rows: {r['bulk_same_rows']:,} rows in {r['bulk_same_rows_s']:.1f} s "
              f"= {r['bulk_same_rows_per_s']:,.0f} rows/s")
        print(f"ratio {r['ratio']} (at best {r['ratio_bound']}), to the same rows {r['ratio_same_rows']}")
        print(f"  {'phase':18} {'summed':>9} {'of the clock':>13}")
        for name, seconds in r["wall_s"].items():
            print(f"  {name:18} {r['phases_s'].get(name, seconds):8.2f} s {seconds:11.2f} s")
    if args.save:
        (RESULTS / f"migrate-{args.rows}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
