"""Every script of `benchmarks/` still runs, at its smallest size, against today's library and sandbox.

Their numbers are measurements (committed in `benchmarks/results/`), never checked here: no timed
assertion. What is checked: the script exits 0, prints the one JSON object its `--json` promises
(`ceiling.py`'s fields are fixed: checks rely on them), reports what it measured as correct (no row
lost, every pair reconciled), and writes nothing into the checkout without `--save`. Three of them
had stopped running when the parameters' checks grew stricter, and nothing said so.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CEILING_FIELDS = {"name", "limits", "ceiling_rows_per_s", "achieved_rows_per_s", "ratio",
                  "throttled_responses", "lost_rows"}


def _ceiling(out: dict[str, Any]) -> None:
    profiles = out["profiles"]
    assert [p["name"] for p in profiles] == ["requests-bound", "execution-time-bound", "concurrency-bound"]
    for p in profiles:
        assert p.keys() >= CEILING_FIELDS, p.keys()
        assert p["lost_rows"] == 0 and p.get("failed_rows", 0) == 0, p
        assert p["ceiling_rows_per_s"] > 0 and p["achieved_rows_per_s"] > 0


def _bulk_update(out: dict[str, Any]) -> None:
    assert out["rows"] == 2000 and out["lost_rows"] == out["extra_rows"] == out["raw_failed_rows"] == 0


def _sandbox(out: dict[str, Any]) -> None:
    assert out["rows"] == 2000 and out["seed"]["accounts"] == 2000
    assert out["paged_reads"]["https_rows_per_s"] > 0 and out["update_multiple"]["https_rows_per_s"] > 0


def _migrate(out: dict[str, Any]) -> None:
    assert out["rows"] == 200 and out["status"] in ("passed", "warning"), out["status"]
    assert out["migrate_rows"] > 0 and out["bulk_same_rows_refused"] == 0


def _million(out: dict[str, Any]) -> None:
    (run,) = [r for r in out["runs"] if r["rows"] == 200 and not r.get("extrapolated")]
    assert run["exit_status"] == 0 and run["status"] in ("passed", "warning")
    assert run["reconciled"]["pairs"] == run["reconciled"]["pass"] > 0


def _runbook(out: dict[str, Any]) -> None:
    (run,) = out["runs"]
    assert run["rows"] == 100 and run["status"] in ("passed", "warning")


def _review(out: dict[str, Any]) -> None:
    assert out["runs"] == 4


def _batch(out: dict[str, Any]) -> None:
    assert [m["mode"] for m in out["modes"]] == ["sequential", "parallel 2", "dask 2"]
    assert all(m["runs"] == 1 and m["status"] in ("passed", "warning") for m in out["modes"]), out["modes"]


CASES: dict[str, tuple[list[str], Callable[[dict[str, Any]], None]]] = {
    "ceiling": (["--rows", "5000", "--window", "5"], _ceiling),
    "bulk_update": (["--rows", "2000", "--naive-rows", "100", "--repeats", "1"], _bulk_update),
    "sandbox": (["--rows", "2000", "--seed-rows", "2000"], _sandbox),
    "migrate": (["--rows", "200"], _migrate),
    "million": (["--rows", "200", "--extrapolate", "0"], _million),
    "runbook": (["--rows", "100", "--repeats", "1"], _runbook),
    "review": (["--runs", "4", "--rows", "100", "--repeats", "1"], _review),
    "batch": (["--pairs", "1", "--runs-per-pair", "1", "--rows", "50"], _batch),
}


def _results() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.iterdir())}


def test_every_benchmark_script_is_covered() -> None:
    assert {p.stem for p in (ROOT / "benchmarks").glob("*.py")} == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_the_benchmark_runs_at_its_smallest_size(name: str, tmp_path: Path) -> None:
    args, check = CASES[name]
    before = _results()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)  # one JSON object and nothing else on stdout
    assert out["benchmark"] == name
    check(out)
    assert _results() == before  # nothing written into the checkout without --save

