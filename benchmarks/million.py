"""Million-row benchmark: `existing-existing` headless at N accounts and N contacts, its memory and sizes.

Run: `python benchmarks/million.py [--rows 100000 300000] [--extrapolate 1000000] [--json] [--save]`

For each `--rows` N, runs exactly what an operator runs:

    dw run existing-existing -f params/sandbox-existing-existing.yaml --sandbox --rows N --out <tmp>

(a fresh sandbox with N accounts and N contacts in Dataverse and N customers in F&O) and, while it
runs, samples every process under `dw run` twice a second: the kernel's (`ipykernel_launcher`) peak
resident memory is its `VmHWM` (/proc/<pid>/status, the kernel's own high-water mark, so no peak
between two samples is missed), likewise the sandbox's and `dw run`'s own; the kernel's sampled
`VmRSS` is attributed to the step that was running (`kernel_rss_by_step_gib`, a lower bound).
After the run it reads the run record: the status, each step's wall time, and the sizes of the
executed notebook and the record.

With `--extrapolate M`, each step's time, the kernel's peak and the sizes are fitted as `a + b·N`
through the runs that finished (from one run: proportional to N) and given at M rows, marked
`extrapolated`: an estimate, not a measurement.
A run that did not finish keeps the steps it did. Targets: kernel peak ≤ 2 GiB, notebook ≤ 5 MB.

Prints one JSON object with `--json` (else a table); `--save` writes `benchmarks/results/million.json`
(measured runs are merged with those already there, by row count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "million.json"
SCENARIO = "existing-existing"
GIB = 1024 ** 3
TARGET_PEAK_GIB, TARGET_NOTEBOOK_MB = 2.0, 5.0


def _status_bytes(pid: int, field: str) -> int:
    """A memory line of /proc/<pid>/status (`VmHWM`: peak resident set, `VmRSS`: current) in
    bytes, 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _hwm_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmHWM")


def _per_step(samples: list[tuple[float, int]], steps: list[dict[str, Any]]) -> dict[str, float]:
    """The kernel's largest resident set sampled while each step ran (GiB), by the steps' start
    times and durations in the run record (samples are half a second apart: a lower bound)."""
    out: dict[str, float] = {}
    for s in steps:
        if not s.get("started") or s.get("duration_s") is None:
            continue
        start = datetime.fromisoformat(str(s["started"]).replace("Z", "+00:00")).timestamp()
        inside = [rss for t, rss in samples if start <= t <= start + s["duration_s"]]
        if inside:
            out[s["id"]] = round(max(inside) / GIB, 3)
    return out


def _role(proc: psutil.Process) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    if "ipykernel_launcher" in cmd:
        return "kernel"
    if "dwlib.sandbox" in cmd and "serve" in cmd:
        return "sandbox"
    return None


def run(rows: int) -> dict[str, Any]:
    dw = Path(sys.executable).with_name("dw")
    with tempfile.TemporaryDirectory(prefix="dw-million-") as tmp:
        out = Path(tmp) / "runs"
        cmd = [str(dw), "run", SCENARIO, "-f", str(ROOT / "params" / f"sandbox-{SCENARIO}.yaml"),
               "--sandbox", "--rows", str(rows), "--out", str(out)]
        env = {**os.environ, "PATH": f"{dw.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        peaks = {"kernel": 0, "sandbox": 0, "dw run": 0}
        samples: list[tuple[float, int]] = []  # (epoch seconds, the kernel's resident set)
        start = time.perf_counter()
        with open(Path(tmp) / "log.txt", "w") as log:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
            parent = psutil.Process(proc.pid)
            while proc.poll() is None:
                peaks["dw run"] = max(peaks["dw run"], _hwm_bytes(proc.pid))
                try:
                    children = parent.children(recursive=True)
                except psutil.Error:
                    children = []
                for child in children:
                    role = _role(child)
                    if role:
                        peaks[role] = max(peaks[role], _hwm_bytes(child.pid))
                    if role == "kernel":
                        samples.append((time.time(), _status_bytes(child.pid, "VmRSS")))
                time.sleep(0.5)
        wall = time.perf_counter() - start
        tail = (Path(tmp) / "log.txt").read_text()[-2000:]
        records = sorted(out.glob("*.json"))
        notebooks = sorted(out.glob("*.ipynb"))
        data = json.loads(records[-1].read_text()) if records else {}
        record_mb = records[-1].stat().st_size / 1e6 if records else None
        notebook_mb = notebooks[-1].stat().st_size / 1e6 if notebooks else None
    steps = {s["id"]: {"status": s.get("status"), "duration_s": s.get("duration_s")}
             for s in data.get("steps", []) if s.get("duration_s") is not None}
    verify: dict[str, Any] = next((s for s in data.get("steps", []) if s.get("id") == "verify"), {})
    reconciliation = (verify.get("tables") or {}).get("reconciliation") or []
    return {
        "rows": rows,
        "exit_status": proc.returncode,
        "status": data.get("status", "no record"),
        "wall_s": round(wall, 1),
        "steps_s": {k: round(v["duration_s"], 2) for k, v in steps.items()},
        "step_status": {k: v["status"] for k, v in steps.items()},
        "kernel_peak_gib": round(peaks["kernel"] / GIB, 3),
        "kernel_rss_by_step_gib": _per_step(samples, data.get("steps", [])),
        "sandbox_peak_gib": round(peaks["sandbox"] / GIB, 3),
        "dw_run_peak_gib": round(peaks["dw run"] / GIB, 3),
        # verify's reconciliation: per map and company, counts, keys and value checksums on both sides
        "reconciled": {"pairs": len(reconciliation),
                       "pass": sum(r.get("status") == "PASS" for r in reconciliation),
                       "rows_per_side": sum(int(r.get("finops_rows") or 0) for r in reconciliation)},
        "notebook_mb": round(notebook_mb, 2) if notebook_mb is not None else None,
        "record_mb": round(record_mb, 2) if record_mb is not None else None,
        **({"log_tail": tail} if proc.returncode else {}),
    }


def _fit(points: list[tuple[int, float]], at: int) -> float:
    """Least-squares line through `points` (rows, value), read at `at`."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my + slope * (at - mx)


def extrapolate(runs: list[dict[str, Any]], at: int) -> dict[str, Any] | None:
    """An estimate at `at` rows from the runs that finished: per quantity a least-squares line
    through them, or, from one run, proportional to the rows (an upper bound for what does not grow
    with the rows)."""
    measured = [r for r in runs if not r.get("extrapolated") and r["exit_status"] == 0]
    if not measured:
        return None
    if len({r["rows"] for r in measured}) == 1:
        measured = [*measured, {**{k: 0.0 for k in measured[0]}, "rows": 0,
                                "steps_s": dict.fromkeys(measured[0]["steps_s"], 0.0)}]
        method = "proportional to the rows, from one run: an estimate, not a measurement"
    else:
        method = "per quantity a least-squares line a + b·rows through the measured runs: an estimate"
    steps = [s for s in measured[0]["steps_s"] if all(s in r["steps_s"] for r in measured)]
    fit = {s: round(max(0.0, _fit([(r["rows"], r["steps_s"][s]) for r in measured], at)), 1) for s in steps}
    keys = ("wall_s", "kernel_peak_gib", "notebook_mb", "record_mb")
    return {"rows": at, "extrapolated": True,
            "from_rows": sorted(r["rows"] for r in measured if r["rows"]),
            "method": method,
            "steps_s": fit,
            **{k: round(_fit([(r["rows"], r[k]) for r in measured], at), 3) for k in keys}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 300_000],
                        help="rows per run (none: only extrapolate from the runs in results/million.json)")
    parser.add_argument("--extrapolate", type=int, default=1_000_000,
                        help="rows to extrapolate to from the measured runs (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", action="store_true", help="write (merge into) results/million.json")
    parser.add_argument("--label", default="", help="what code the runs measured (kept with each run)")
    args = parser.parse_args()
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="dw-bench-cache-"))
    measured = []
    for n in args.rows:
        measured.append({**({"label": args.label} if args.label else {}), **run(n)})
        print(f"{n:,} rows: exit {measured[-1]['exit_status']}, {measured[-1]['wall_s']} s", file=sys.stderr)
    keep = args.save or not args.rows
    previous = json.loads(RESULTS.read_text()).get("runs", []) if keep and RESULTS.exists() else []
    runs = {r["rows"]: r for r in previous if not r.get("extrapolated")}
    runs.update({r["rows"]: r for r in measured})
    ordered = [runs[k] for k in sorted(runs)]
    estimate = extrapolate(ordered, args.extrapolate) if args.extrapolate else None
    if estimate and estimate["rows"] not in runs:
        ordered.append(estimate)
    result = {
        "benchmark": "million",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1)},
        "scenario": SCENARIO,
        **({"label": args.label} if args.label else {}),
        "targets": {"kernel_peak_gib": TARGET_PEAK_GIB, "notebook_mb": TARGET_NOTEBOOK_MB},
        "runs": ordered,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for r in ordered:
            label = "EXTRAPOLATED" if r.get("extrapolated") else f"exit {r['exit_status']}, {r['status']}"
            print(f"{r['rows']:>9,} rows ({label}): {r['wall_s']} s; kernel peak {r['kernel_peak_gib']} GiB; "
                  f"notebook {r['notebook_mb']} MB; record {r['record_mb']} MB"
                  + (f"; reconciled {r['reconciled']['pass']} of {r['reconciled']['pairs']} map × company"
                     if r.get("reconciled") else ""))
            for step, seconds in r["steps_s"].items():
                print(f"    {step:28} {seconds:8.2f} s")
    if args.save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
