"""Runbook benchmark: the whole existing-existing runbook headless, beside bare papermill.

Run: `python benchmarks/runbook.py [--rows 10000 100000] [--json] [--save]`

For each `--rows` N it starts a fresh sandbox of profile `existing-existing` (N accounts and N
contacts in Dataverse, N customers in F&O) in a temporary directory and runs
`notebooks/existing-existing.ipynb` headless exactly as `dw run` does (`dwlib.execute`: papermill,
the sandbox parameters file, a kernel of this Python). It reports:

- **wall time** of the run (kernel start to last cell, then the HTML report and the seal) and of
  each step, from the run record;
- **report and seal**: what writing the HTML report (nbconvert) and sealing the record cost,
  measured by doing it once more after the run as `dw review seal` (a fresh interpreter: an upper
  bound, as `dw run` has most modules imported already);
- **bare papermill**: the wall time of papermill executing a one-cell notebook (`pass`) with the
  same kernel setup, the fixed cost every headless run pays (median of `--repeats`);
- **bootstrap rows/s**: rows the `bootstrap-apply` step stamped ÷ its duration, beside the
  client's raw bulk rate measured by `benchmarks/bulk_update.py` (`results/bulk_update-*.json`,
  `bulk_rows_per_s`): the step reads the rows to stamp, writes its evidence CSVs and updates
  through the same `update_multiple`, so the ratio is what the step adds around the bulk path.

Prints a table (or one JSON object with `--json`); `--save` writes `benchmarks/results/runbook.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dwlib import execute  # noqa: E402
from dwlib.packaged import param_file  # noqa: E402
from dwlib.sandbox import control  # noqa: E402

SCENARIO = "existing-existing"
RESULTS = ROOT / "benchmarks" / "results"


def bare_papermill(repeats: int) -> float:
    """Median wall time of papermill on a one-cell notebook (kernel start, one cell, shutdown)."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        source, out = Path(tmp) / "empty.ipynb", Path(tmp) / "out.ipynb"
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass", id="empty")],
                                      metadata={"kernelspec": {"name": execute.KERNEL, "language": "python",
                                                               "display_name": "Python 3"}})
        nbformat.write(nb, source)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with execute.this_python_kernel():
                papermill.execute_notebook(str(source), str(out), kernel_name=execute.KERNEL,
                                           progress_bar=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bulk_reference() -> dict[str, float]:
    """`bulk_rows_per_s` of each committed unthrottled bulk_update result, by file name (the
    runbook runs under the documented limits, so the throttled measurement is no reference)."""
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("bulk_update-*.json"))}
    return {name: r["bulk_rows_per_s"] for name, r in results.items() if not r.get("throttle")}


def runbook(rows: int) -> dict[str, Any]:
    """Start a fresh sandbox of `rows`, run the runbook headless, return the measurements."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        root, out = Path(tmp) / "sandbox", Path(tmp) / "runs"
        start = time.perf_counter()
        control.start(SCENARIO, root=root, rows=rows, port=0, owner_pid=os.getpid())
        sandbox_s = time.perf_counter() - start
        try:
            start = time.perf_counter()
            run = execute.execute(SCENARIO, param_file(f"sandbox-{SCENARIO}.yaml"),
                                  {"sandbox.dir": str(root)}, out, echo=lambda line: None)
            wall_s = time.perf_counter() - start
            # What the run spent on its HTML report and seal after papermill, done again the same way
            # from a fresh interpreter (`dw review seal`): nbconvert's import and templates included.
            start = time.perf_counter()
            subprocess.run([str(Path(sys.executable).with_name("dw")), "review", "seal", str(run.record)],
                           check=True, capture_output=True)
            finalize_s = time.perf_counter() - start
            notebook_mb = run.notebook.stat().st_size / 1e6
        finally:
            control.stop(root)
    data = run.data or {}
    steps = {s["id"]: s for s in data.get("steps", [])}
    apply = steps.get("bootstrap-apply", {})
    stamped = apply.get("counts", {}).get("stamped", 0)
    return {
        "rows": rows,
        "status": data.get("status", "no record"),
        "error": run.error,
        "sandbox_start_s": round(sandbox_s, 2),
        "wall_s": round(wall_s, 2),
        "report_and_seal_s": round(finalize_s, 2),
        "notebook_mb": round(notebook_mb, 1),
        "steps_s": {k: round(s["duration_s"], 2) for k, s in steps.items()},
        "http_calls": data.get("http", {}).get("calls", 0),
        "bootstrap_rows": stamped,
        "bootstrap_rows_per_s": round(stamped / apply["duration_s"], 1) if stamped else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the bare papermill measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/runbook.json")
    args = parser.parse_args()
    # msal's token cache of these throwaway sandboxes stays out of the home directory.
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="dw-bench-cache-"))
    bare = bare_papermill(args.repeats)
    runs = [runbook(n) for n in args.rows]
    reference = bulk_reference()
    for r in runs:
        r["papermill_share"] = round(bare / r["wall_s"], 3)
        if r["bootstrap_rows_per_s"]:
            r["bootstrap_vs_bulk"] = {name: round(r["bootstrap_rows_per_s"] / rate, 3)
                                      for name, rate in reference.items()}
    result = {
        "benchmark": "runbook",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "scenario": SCENARIO,
        "bare_papermill_s": round(bare, 2),
        "bulk_update_rows_per_s": reference,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"bare papermill (one-cell notebook): {bare:.2f} s")
        for r in runs:
            print(f"{SCENARIO} at {r['rows']:,} rows: {r['status']}, {r['wall_s']:.1f} s headless "
                  f"(sandbox start {r['sandbox_start_s']:.1f} s, {r['http_calls']:,} calls; report and "
                  f"seal {r['report_and_seal_s']:.1f} s of a {r['notebook_mb']} MB notebook)")
            for step, seconds in r["steps_s"].items():
                print(f"  {step:28} {seconds:8.2f} s")
            if r["bootstrap_rows_per_s"]:
                print(f"  bootstrap-apply: {r['bootstrap_rows']:,} rows at "
                      f"{r['bootstrap_rows_per_s']:,.0f} rows/s; ÷ bulk_update: {r['bootstrap_vs_bulk']}")
    if args.save:
        (RESULTS / "runbook.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
