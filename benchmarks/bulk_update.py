"""Bulk update benchmark: stamp the company lookup on N accounts, per row vs. the client's bulk path.

Run: `python benchmarks/bulk_update.py --rows N [--throttle] [--json] [--save]`

Starts its own sandbox (profile `new-existing`, N accounts) in a temporary directory and, through
`dwlib.clients` wired from a sandbox parameters file, sets `msdyn_company` on the accounts:

- **naive**: one `PATCH accounts(id)` per row (`DataverseClient.update`), on the first
  `--naive-rows` accounts (a sample: the rate is per row, and a full per-row run of 100,000 rows
  would only take longer to say the same);
- **bulk**: every account through `DataverseClient.update_multiple` (UpdateMultiple, chunks of
  `--batch-size`, `--concurrency` requests in flight, retries, journal);
- **raw**: the same UpdateMultiple requests (bodies encoded before the clock starts) sent by a
  minimal loop on a bare `httpx.Client` with a fixed token and no retries, journal or checks,
  both one after another and from `--concurrency` threads; the faster of the two is the
  sandbox's capacity for these requests (`raw_rows_per_s`).

Raw and bulk runs alternate `--repeats` times; medians are reported. Each run points the accounts
at another company, so every run changes every row. After the last bulk run the accounts are
counted per company: `lost_rows` are accounts without the final company, `extra_rows` accounts
that should not exist. With `--throttle` the bulk runs meet low service protection limits
(`THROTTLE_LIMITS`, set through the sandbox's admin endpoint once the requests of the other
phases have left the sliding window; raw and naive run unthrottled), and `throttle_wait_s` is
the time the client spent waiting on `Retry-After` in the last bulk run.

Prints one JSON object with `--json` (else a table); `--save` also writes it to
`benchmarks/results/bulk_update-<N>[-throttle].json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dwlib.clients import Session, connect, scope_for  # noqa: E402
from dwlib.packaged import param_file  # noqa: E402
from dwlib.params import load_params  # noqa: E402
from dwlib.sandbox import control  # noqa: E402

PROFILE = "new-existing"
THROTTLE_WINDOW_S = 5
THROTTLE_LIMITS = f"requests=10,window={THROTTLE_WINDOW_S}"
ODATA_TYPE = "Microsoft.Dynamics.CRM.account"


def _rate(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else float("inf")


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _companies(session: Session, count: int) -> list[str]:
    """`count` cdm_company rows to point accounts at (codes B0, B1, …)."""
    create = session.dataverse.create
    return [create("cdm_companies", {"cdm_companycode": f"B{i}", "cdm_name": f"Bench {i}"})
            for i in range(count)]


def _bind(company: str) -> str:
    return f"/cdm_companies({company})"


def naive(session: Session, ids: list[str], company: str) -> float:
    """One PATCH per row through the client; seconds."""
    changes = {"msdyn_company@odata.bind": _bind(company)}

    def each() -> None:
        for i in ids:
            session.dataverse.update("accounts", i, changes)

    return _timed(each)


def bulk(session: Session, ids: list[str], company: str) -> float:
    """Every row through the client's bulk path; seconds (raises if any chunk fails)."""
    bind = _bind(company)
    return _timed(lambda: session.dataverse.update_multiple(
        "accounts", ({"accountid": i, "msdyn_company@odata.bind": bind} for i in ids)))


def raw(conn: dict[str, Any], token: str, ids: list[str], company: str, batch: int,
        threads: int) -> tuple[float, int]:
    """The same UpdateMultiple requests from a minimal loop; (seconds, rows not acknowledged)."""
    bind = _bind(company)
    targets = [{"@odata.type": ODATA_TYPE, "accountid": i, "msdyn_company@odata.bind": bind} for i in ids]
    bodies = [json.dumps({"Targets": targets[start:start + batch]}).encode()
              for start in range(0, len(ids), batch)]
    url = f"{conn['dataverse_url']}/api/data/v9.2/accounts/Microsoft.Dynamics.CRM.UpdateMultiple"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json", "OData-Version": "4.0", "OData-MaxVersion": "4.0"}
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with control.http_client(conn, timeout=300, limits=limits) as http:
        http.post(url, content=bodies[0], headers=headers)  # connect and warm up outside the clock

        def send(body: bytes) -> int:
            return http.post(url, content=body, headers=headers).status_code

        started = time.perf_counter()
        if threads == 1:
            statuses = [send(b) for b in bodies]
        else:
            with ThreadPoolExecutor(threads) as pool:
                statuses = list(pool.map(send, bodies))
        seconds = time.perf_counter() - started
    failed = sum(min(batch, len(ids) - n * batch) for n, s in enumerate(statuses) if s != 204)
    return seconds, failed


def run(rows: int, *, throttle: bool, concurrency: int, batch: int, naive_rows: int, repeats: int,
        root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    conn = control.start(PROFILE, root=root, rows=rows, port=0).connection
    start_s = time.perf_counter() - started
    params = load_params(param_file(f"sandbox-{PROFILE}.yaml"),
                         {"sandbox.dir": str(root), "options.concurrency": concurrency,
                          "options.batch_size": batch}, say=False)
    with connect(params) as session:
        ids = [r["accountid"] for r in session.dataverse.query("accounts", select=["accountid"])]
        assert len(ids) == rows, f"the sandbox has {len(ids)} accounts, not {rows}"
        companies = _companies(session, 2 * repeats + 1)
        token = session.tokens.token(scope_for(params.environments.dataverse_url))
        session.dataverse.update("accounts", ids[0], {"name": ids[0]})  # warm up the client's connection

        sample = ids[:naive_rows]
        naive_s = naive(session, sample, companies[0])
        raw_seq, raw_par, bulk_s, raw_failed = [], [], [], 0
        wait_s = retries = 0.0
        for r in range(repeats):
            company = companies[1 + 2 * r]
            seconds, failed = raw(conn, token, ids, company, batch, 1)
            raw_seq.append(seconds)
            seconds, failed2 = raw(conn, token, ids, company, batch, concurrency)
            raw_par.append(seconds)
            raw_failed += failed + failed2
            if throttle:
                # Let the unthrottled requests of the other phases leave the sliding window, so
                # the waits measured are those the bulk run itself causes.
                time.sleep(THROTTLE_WINDOW_S)
                control.admin(conn, "limits", THROTTLE_LIMITS)
            mark = len(session.journal)
            try:
                bulk_s.append(bulk(session, ids, companies[2 + 2 * r]))
            finally:
                if throttle:
                    control.admin(conn, "limits", "")
            last = session.journal.entries()[mark:]
            wait_s = sum(e.wait_s for e in last)
            retries = sum(e.retries for e in last)
        final = companies[2 * repeats]
        counts = {c["_msdyn_company_value"]: c["count"]
                  for c in session.dataverse.count_by("accounts", ["_msdyn_company_value"])}
    total = sum(counts.values())
    raw_s = min(statistics.median(raw_seq), statistics.median(raw_par))
    naive_rps, bulk_rps, raw_rps = _rate(len(sample), naive_s), _rate(rows, statistics.median(bulk_s)), \
        _rate(rows, raw_s)
    return {
        "benchmark": "bulk_update",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "rows": rows,
        "throttle": throttle,
        "limits": THROTTLE_LIMITS if throttle else "documented defaults",
        "concurrency": concurrency,
        "batch_size": batch,
        "repeats": repeats,
        "sandbox_start_s": round(start_s, 2),
        "naive_rows": len(sample),
        "naive_rows_per_s": naive_rps,
        "bulk_rows_per_s": bulk_rps,
        "speedup": round(bulk_rps / naive_rps, 2),
        "raw_rows_per_s": raw_rps,
        "raw_sequential_rows_per_s": _rate(rows, statistics.median(raw_seq)),
        "raw_concurrent_rows_per_s": _rate(rows, statistics.median(raw_par)),
        "raw_failed_rows": raw_failed,
        "client_vs_raw": round(bulk_rps / raw_rps, 3),
        "lost_rows": rows - counts.get(final, 0),
        "extra_rows": total - rows,
        "throttle_wait_s": round(wait_s, 2),
        "retries": int(retries),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="accounts to update (default 20000)")
    parser.add_argument("--throttle", action="store_true", help=f"bulk runs meet limits {THROTTLE_LIMITS}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", action="store_true",
                        help="also write benchmarks/results/bulk_update-<rows>[-throttle].json")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="rows per UpdateMultiple (default 1000)")
    parser.add_argument("--naive-rows", type=int, default=2000,
                        help="rows of the per-row sample (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="raw/bulk runs, medians reported (default 3)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.naive_rows < 1:
        parser.error("--rows and --naive-rows must be at least 1")
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        root = Path(tmp) / "sandbox"
        try:
            result = run(args.rows, throttle=args.throttle, concurrency=args.concurrency,
                         batch=args.batch_size, naive_rows=min(args.naive_rows, args.rows),
                         repeats=args.repeats, root=root)
        finally:
            control.stop(root)
    if args.save:
        name = f"bulk_update-{args.rows}{'-throttle' if args.throttle else ''}.json"
        (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result["lost_rows"] == 0 and result["extra_rows"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
