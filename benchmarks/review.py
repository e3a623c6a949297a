"""Review benchmark: cataloguing 1,000 run records, beside plain `json.load` of the same files.

Run: `python benchmarks/review.py [--runs 1000] [--rows 300] [--repeats 3] [--json] [--save]`

It makes one real run (a fresh `existing-existing` sandbox of `--rows` rows, the runbook headless
as `dw run` runs it: the record, its executed notebook, evidence and HTML report), then copies it
`--runs` times into one directory under new run ids, with a status mix (a third failed at a step,
a few killed mid-run), so the catalogue reads records of a real size. It reports, medians of
`--repeats`:

- **json.load**: a loop that opens and parses every `.json` record (the floor: the catalogue must
  at least read what it lists);
- **catalogue**: `dwlib.review.catalogue(dir)` (finds, reads and checks the records, builds one
  row each, works out interrupted runs), and the ratio of the two;
- **text**: the catalogue as the table `dw review DIR` prints;
- **notebooks opened** by the catalogue (must be 0: notebooks are never needed to list runs),
  counted by wrapping `Path.open`.

Prints a table (or one JSON object with `--json`); `--save` writes `benchmarks/results/review.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dwlib import execute, review  # noqa: E402
from dwlib.packaged import param_file  # noqa: E402
from dwlib.record import RunRecord, evidence_dir, load_record  # noqa: E402
from dwlib.sandbox import control  # noqa: E402

SCENARIO = "existing-existing"
RESULTS = ROOT / "benchmarks" / "results"


def one_real_run(rows: int, folder: Path) -> Path:
    """A real headless run against a fresh sandbox; returns its record."""
    sandbox = folder / "sandbox"
    control.start(SCENARIO, root=sandbox, rows=rows, port=0)
    try:
        params = param_file(f"sandbox-{SCENARIO}.yaml")
        run = execute.execute(SCENARIO, params, {"sandbox.dir": str(sandbox)}, folder / "seed",
                              echo=lambda _line: None)
    finally:
        control.stop(sandbox)
    if not run.ok:
        raise SystemExit(f"the seed run did not pass:\n{run.summary()}")
    return run.record


def copies(record: Path, runs: int, target: Path) -> None:
    """`runs` copies of a run under new ids: record (re-digested), notebook, report, evidence."""
    data = load_record(record)
    for i in range(runs):
        run_id = str(uuid.UUID(int=i + 1))
        stem = f"{data['started'].replace('-', '').replace(':', '')}-{SCENARIO}-{i:08d}"
        path = target / f"{stem}.json"
        copy = json.loads(json.dumps(data))
        copy["run_id"] = run_id
        if i % 3 == 1:  # a third stopped at a step
            step = copy["steps"][4]
            step["status"], step["error"] = "failed", "HTTPStatusError: 429 Too Many Requests"
            copy["status"], copy["failed_step"] = "failed", step["id"]
        if i % 50 == 7:  # and a few were killed mid-run
            copy["status"], copy["ended"] = "running", None
            copy["process"]["pid"] = 2**22 + i
        RunRecord(path, copy).write()
        for suffix in (".ipynb", ".html"):
            shutil.copyfile(record.with_suffix(suffix), path.with_suffix(suffix))
        shutil.copytree(evidence_dir(record), evidence_dir(path))


def median_time(func: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def plain_json_load(folder: Path) -> int:
    """The floor: open and parse every record file."""
    count = 0
    for path in folder.glob("*.json"):
        with path.open("rb") as fh:
            json.load(fh)
        count += 1
    return count


def measure(runs: int, rows: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dw-bench-review-") as tmp:
        folder = Path(tmp)
        record = one_real_run(rows, folder)
        target = folder / "runs"
        copies(record, runs, target)
        record_bytes = sum(p.stat().st_size for p in target.glob("*.json"))
        notebook_bytes = sum(p.stat().st_size for p in target.glob("*.ipynb"))
        load_s, loaded = median_time(lambda: plain_json_load(target), repeats)
        opened: list[str] = []
        real_open = pathlib.Path.open

        def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
            opened.append(self.suffix)
            return real_open(self, *args, **kwargs)

        pathlib.Path.open = spy  # type: ignore[method-assign]
        try:
            catalogue_s, rows_out = median_time(lambda: review.catalogue(target), repeats)
        finally:
            pathlib.Path.open = real_open  # type: ignore[method-assign]
        text_s, _text = median_time(lambda: review.catalogue_text(rows_out), repeats)
        statuses: dict[str, int] = {}
        for row in rows_out:
            statuses[str(row["status"])] = statuses.get(str(row["status"]), 0) + 1
        assert loaded == len(rows_out) == runs, (loaded, len(rows_out))
        return {
            "runs": runs, "seed_rows": rows, "record_mb_total": round(record_bytes / 1e6, 1),
            "record_kb_each": round(record_bytes / runs / 1e3, 1),
            "notebook_mb_total": round(notebook_bytes / 1e6, 1),
            "json_load_s": round(load_s, 3), "catalogue_s": round(catalogue_s, 3),
            "catalogue_vs_json_load": round(catalogue_s / load_s, 2),
            "text_table_s": round(text_s, 3), "notebooks_opened": opened.count(".ipynb"),
            "statuses": statuses,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=300, help="rows of the seed run's sandbox")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="dw-bench-cache-"))
    result = {"benchmark": "review", "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              **measure(args.runs, args.rows, args.repeats)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        r = result
        print(f"{r['runs']:,} records ({r['record_kb_each']} kB each, {r['record_mb_total']} MB; notebooks "
              f"{r['notebook_mb_total']} MB beside them)")
        print(f"  json.load of every record: {r['json_load_s']:.3f} s")
        print(f"  dwlib.review.catalogue:    {r['catalogue_s']:.3f} s  "
              f"({r['catalogue_vs_json_load']} × json.load)")
        print(f"  text table:                {r['text_table_s']:.3f} s")
        print(f"  notebooks opened:          {r['notebooks_opened']}")
        print(f"  statuses: {r['statuses']}")
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "review.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
