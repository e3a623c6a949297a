"""Sandbox throughput: HTTPS paged reads and UpdateMultiple against the raw SQLite capacity, and seeding.

Run: `python benchmarks/sandbox.py [--rows N] [--seed-rows N] [--json] [--save]`

- (a) read every account through the Dataverse Web API in pages of 5,000
  (`Prefer: odata.maxpagesize=5000`, following `@odata.nextLink`), beside the same pages read
  directly from the sandbox's SQLite file in this process (keyset SELECTs of 5,000);
- (b) update every account with `UpdateMultiple` in requests of 1,000 targets, beside the same
  updates as `executemany` UPDATEs of 1,000 rows per transaction on the SQLite file;
- (c) seed `--seed-rows` accounts (profile `new-existing`: as many contacts too) straight into a
  temporary store with `profiles.seed`, timing each table.

The sandbox runs in its own process (`control.start`, profile `new-existing` with `--rows`
accounts), over verified TLS with a real token. The direct SQLite work runs while the sandbox is
idle, on the same file. Ratios (HTTPS ÷ direct) are computed within one run, so they compare like
with like on this machine. `--save` writes the result to `benchmarks/results/sandbox.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dwlib.clients import HttpConfig, TokenProvider, make_client, scope_for  # noqa: E402
from dwlib.packaged import param_file  # noqa: E402
from dwlib.params import load_params  # noqa: E402
from dwlib.sandbox import control, profiles  # noqa: E402
from dwlib.sandbox.state import Settings  # noqa: E402
from dwlib.sandbox.store import Store  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sandbox.json"
PAGE = 5000
BATCH = 1000
COLUMNS = ("accountid", "name", "accountnumber", "customertypecode", "_owningbusinessunit_value",
           "_msdyn_company_value")


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def http_reads(conn: dict[str, Any], token: str) -> tuple[list[str], float]:
    """Every account id, read page by page through HTTPS; (ids, seconds)."""
    api = f"{conn['dataverse_url']}/api/data/v9.2"
    headers = {"Authorization": f"Bearer {token}", "Prefer": f"odata.maxpagesize={PAGE}",
               "Accept": "application/json"}
    ids: list[str] = []
    url: str | None = f"{api}/accounts?$select={','.join(COLUMNS)}"
    with control.http_client(conn, timeout=120) as http:
        started = time.perf_counter()
        while url:
            r = http.get(url, headers=headers)
            r.raise_for_status()
            body = r.json()
            ids.extend(row["accountid"] for row in body["value"])
            url = body.get("@odata.nextLink")
        return ids, time.perf_counter() - started


def direct_reads(db: Path) -> tuple[int, float]:
    """The same pages straight from SQLite (keyset paging on the primary key); (rows, seconds)."""
    conn = sqlite3.connect(db)
    try:
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        started = time.perf_counter()
        total, last = 0, ""
        while rows := conn.execute(f"SELECT {cols} FROM dv_accounts WHERE accountid > ? ORDER BY accountid "
                                   f"LIMIT {PAGE}", (last,)).fetchall():
            total += len(rows)
            last = rows[-1][0]
        return total, time.perf_counter() - started
    finally:
        conn.close()


def http_updates(conn: dict[str, Any], token: str, ids: list[str]) -> float:
    """UpdateMultiple in requests of BATCH targets; seconds."""
    url = f"{conn['dataverse_url']}/api/data/v9.2/accounts/Microsoft.Dynamics.CRM.UpdateMultiple"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with control.http_client(conn, timeout=120) as http:
        started = time.perf_counter()
        for i in range(0, len(ids), BATCH):
            targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid": a,
                        "description": f"benchmark https {i}"} for a in ids[i:i + BATCH]]
            r = http.post(url, json={"Targets": targets}, headers=headers)
            if r.status_code != 204:
                raise SystemExit(f"UpdateMultiple answered {r.status_code}: {r.text[:300]}")
        return time.perf_counter() - started


def direct_updates(db: Path, ids: list[str]) -> float:
    """The same updates as executemany UPDATEs, one transaction per BATCH rows; seconds."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (version,) = conn.execute("SELECT COALESCE(MAX(versionnumber), 0) FROM dv_accounts").fetchone()
        started = time.perf_counter()
        for i in range(0, len(ids), BATCH):
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            conn.execute("BEGIN")
            conn.executemany(
                "UPDATE dv_accounts SET description = ?, modifiedon = ?, versionnumber = ? "
                "WHERE accountid = ?",
                [(f"benchmark direct {i}", now, version + i + k + 1, a)
                 for k, a in enumerate(ids[i:i + BATCH])])
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def seeding(rows: int) -> dict[str, Any]:
    """Seed `new-existing` with `rows` accounts (and contacts) into a temporary store, per table."""
    with tempfile.TemporaryDirectory(prefix="dw-seed-") as tmp:
        store = Store(Path(tmp) / "state.sqlite")
        marks: list[tuple[str, int, float]] = []
        started = time.perf_counter()
        last = started

        def progress(table: str, n: int) -> None:
            nonlocal last
            now = time.perf_counter()
            marks.append((table, n, now - last))
            last = now

        profiles.seed(store, Settings(profile="new-existing", rows=rows), progress)
        total = time.perf_counter() - started
        store.close()
        size = (Path(tmp) / "state.sqlite").stat().st_size
    tables = {t: {"rows": n, "seconds": round(s, 2)} for t, n, s in marks if n >= 1000}
    accounts = tables["accounts"]
    return {"profile": "new-existing", "accounts": rows, "accounts_seconds": accounts["seconds"],
            "accounts_rows_per_s": round(_rate(rows, accounts["seconds"])), "total_seconds": round(total, 2),
            "total_rows": sum(n for _, n, _ in marks), "database_mb": round(size / 2**20),
            # The one transaction's commit comes after the last table: it is in neither table's time.
            "commit_and_rest_s": round(total - sum(s for _, _, s in marks), 2), "tables": tables}


def run(rows: int, seed_rows: int, log: Callable[[str], None]) -> dict[str, Any]:
    """All measurements; the result object written to RESULTS."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        root = Path(tmp) / "sandbox"
        log(f"starting a new-existing sandbox with {rows} accounts …")
        t0 = time.perf_counter()
        conn = control.start("new-existing", root=root, rows=rows, port=0).connection
        startup = time.perf_counter() - t0
        try:
            params = load_params(param_file("sandbox-new-existing.yaml"),
                                 {"sandbox.dir": str(root),
                                  "auth.token_cache": str(Path(tmp) / "msal_cache.bin")}, say=False)
            with make_client(HttpConfig.from_params(params)) as http:
                token = TokenProvider.from_params(params, http).token(scope_for(conn["dataverse_url"]))
            db = root / "state.sqlite"
            log("paged reads …")
            ids, http_read_s = http_reads(conn, token)
            read_rows, direct_read_s = direct_reads(db)
            if read_rows != len(ids):
                raise SystemExit(f"HTTPS read {len(ids)} accounts, SQLite {read_rows}: the sandbox lost rows")
            log("UpdateMultiple …")
            http_update_s = http_updates(conn, token, ids)
            direct_update_s = direct_updates(db, ids)
        finally:
            control.stop(root)
    log(f"seeding {seed_rows} accounts …")
    seed = seeding(seed_rows)
    reads = {"rows": len(ids), "https_s": round(http_read_s, 3), "direct_s": round(direct_read_s, 3),
             "https_rows_per_s": round(_rate(len(ids), http_read_s)),
             "direct_rows_per_s": round(_rate(len(ids), direct_read_s)),
             "ratio": round(_rate(len(ids), http_read_s) / _rate(len(ids), direct_read_s), 4)}
    updates = {"rows": len(ids), "https_s": round(http_update_s, 3), "direct_s": round(direct_update_s, 3),
               "https_rows_per_s": round(_rate(len(ids), http_update_s)),
               "direct_rows_per_s": round(_rate(len(ids), direct_update_s)),
               "ratio": round(_rate(len(ids), http_update_s) / _rate(len(ids), direct_update_s), 4)}
    return {
        "benchmark": "sandbox",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version},
        "rows": rows, "sandbox_start_s": round(startup, 2),
        "paged_reads": {"page_size": PAGE, **reads},
        "update_multiple": {"batch": BATCH, **updates},
        "seed": seed,
    }


def table(result: dict[str, Any]) -> str:
    """The result as a fixed-width text table."""
    lines = [f"{'measurement':<34}{'HTTPS rows/s':>14}{'direct rows/s':>15}{'ratio':>8}"]
    for key, label in (("paged_reads", f"paged reads ({PAGE}/page)"),
                       ("update_multiple", f"UpdateMultiple ({BATCH}/request)")):
        m = result[key]
        lines.append(f"{label:<34}{m['https_rows_per_s']:>14,}{m['direct_rows_per_s']:>15,}{m['ratio']:>8.3f}")
    s = result["seed"]
    lines.append(f"seed {s['accounts']:,} accounts: {s['accounts_seconds']} s "
                 f"({s['accounts_rows_per_s']:,} rows/s); whole profile {s['total_rows']:,} rows in "
                 f"{s['total_seconds']} s, {s['database_mb']} MB")
    lines.append(f"rows: {result['rows']:,}; sandbox start (incl. seeding): {result['sandbox_start_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="accounts read and updated (default 50000)")
    parser.add_argument("--seed-rows", type=int, default=1_000_000, help="accounts to seed (default 1000000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/sandbox.json")
    args = parser.parse_args(argv)
    if args.rows < BATCH or args.seed_rows < 1000:
        parser.error(f"--rows must be at least {BATCH} and --seed-rows at least 1000")
    result = run(args.rows, args.seed_rows, log=lambda msg: print(msg, file=sys.stderr))
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
