"""Batch benchmark: 8 runbook runs sequentially, two at a time, and on a Dask LocalCluster.

Run: `python benchmarks/batch.py [--pairs 4] [--runs-per-pair 2] [--rows 50] [--json] [--save]`

For each mode it starts `--pairs` fresh `existing-existing` sandboxes (environment pairs) in a
temporary directory and runs a plan of `--pairs` × `--runs-per-pair` runs (the first run of a pair
sets dual-write up, the later ones find their work done) through `dwlib.batch.run_batch`, exactly
as `dw batch` does:

- **sequential**: `--max-parallel 1`;
- **parallel 2**: `--max-parallel 2`, local processes;
- **dask 2**: `--executor dask --max-parallel 2`, a LocalCluster of 2 single-threaded worker
  processes started by the batch (its start-up is part of the wall time).

It reports each mode's wall time (the whole `run_batch` call), the sum of the runs' own durations
(manifest start → end of each `dw run` process) and the speedup over sequential. Prints a table
(or one JSON object with `--json`); `--save` writes `benchmarks/results/batch.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dwlib.batch import run_batch  # noqa: E402
from dwlib.packaged import param_file  # noqa: E402
from dwlib.sandbox import control  # noqa: E402

SCENARIO = "existing-existing"
MODES = (("sequential", "local", 1), ("parallel 2", "local", 2), ("dask 2", "dask", 2))


def plan_for(tmp: Path, pairs: int, runs_per_pair: int, rows: int) -> tuple[Path, list[Path]]:
    """Start `pairs` fresh sandboxes; write their parameters files and the plan."""
    base = yaml.safe_load((param_file(f"sandbox-{SCENARIO}.yaml")).read_text())
    runs, roots = [], []
    for p in range(pairs):
        root = tmp / f"sandbox{p}"
        control.start(SCENARIO, root=root, rows=rows, port=0, owner_pid=os.getpid())
        roots.append(root)
        params = tmp / f"pair{p}.yaml"
        params.write_text(yaml.safe_dump({**base, "sandbox": {"dir": str(root)}}))
        runs += [{"name": f"pair{p}-{i}", "scenario": SCENARIO, "params": str(params)}
                 for i in range(runs_per_pair)]
    # The plan as a partner would write it, pair after pair; the scheduler interleaves the pairs.
    plan = tmp / "plan.yaml"
    plan.write_text(yaml.safe_dump({"runs": runs}, sort_keys=False))
    return plan, roots


def measure(label: str, executor: str, parallel: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dw-bench-batch-") as name:
        tmp = Path(name)
        plan, roots = plan_for(tmp, args.pairs, args.runs_per_pair, args.rows)
        try:
            start = time.perf_counter()
            result = run_batch(plan, tmp / "out", max_parallel=parallel, executor=executor,
                               echo=lambda s: None)
            wall = time.perf_counter() - start
        finally:
            for root in roots:
                control.stop(root)
    runs = result.manifest.data["runs"]
    return {"mode": label, "executor": executor, "max_parallel": parallel, "wall_s": round(wall, 2),
            "status": result.manifest.data["status"], "runs": len(runs),
            "runs_sum_s": round(sum(r["duration_s"] or 0 for r in runs), 2),
            "first_run_of_pair_s": round(sum(r["duration_s"] for r in runs if r["name"].endswith("-0"))
                                         / args.pairs, 2),
            "later_runs_s": round(sum(r["duration_s"] for r in runs if not r["name"].endswith("-0"))
                                  / max(1, len(runs) - args.pairs), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--runs-per-pair", type=int, default=2)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    modes = [measure(label, executor, parallel, args) for label, executor, parallel in MODES]
    sequential = modes[0]["wall_s"]
    for m in modes:
        m["speedup"] = round(sequential / m["wall_s"], 2)
    result = {"benchmark": "batch", "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "scenario": SCENARIO, "pairs": args.pairs, "runs_per_pair": args.runs_per_pair,
              "rows": args.rows, "modes": modes}
    if args.save:
        (ROOT / "benchmarks" / "results" / "batch.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'mode':12} {'wall s':>8} {'speedup':>8} {'sum of runs s':>14} {'first run s':>12} "
          f"{'later run s':>12}  status")
    for m in modes:
        print(f"{m['mode']:12} {m['wall_s']:8.1f} {m['speedup']:8.2f} {m['runs_sum_s']:14.1f} "
              f"{m['first_run_of_pair_s']:12.1f} {m['later_runs_s']:12.1f}  {m['status']}")


if __name__ == "__main__":
    main()
