"""Chaos rounds (`make chaos`, not part of `make test`): each setup scenario under a random fault
profile, its kernel killed at a random step, then run again; the second run must converge.

Run: `python tests/chaos.py [--seed N] [--scenarios a,b] [--rows N] [--keep DIR]`

Every choice of a round comes from one generator seeded with `<seed>:<scenario>`, so a round is
replayed by its seed and scenario alone (`make chaos SEED=N SCENARIOS=x`), whatever else ran:

- a fault profile for the sandbox (`--faults`: latency, 429, 503, 504 and dropped connections, at
  rates the runbooks must ride out; 500s are left out, as they are not passing conditions);
- a step of the scenario and a request count n: once the run reaches that step (or a later one),
  a sandbox trap kills the kernel's process group (kernel and gate commands, SIGKILL) at the nth
  request to come (any request, or only those that may write: also a choice), before or after the
  sandbox carries it out (a choice too).

The run is killed (or, if it was quicker than the trap, finishes), then `dw run` runs again
against the same sandbox, under the same faults. The round passes when that second run passes
with every map reconciled, no company and no keyed row is doubled, and no round-trip customer is
left. Timing varies between replays (faults are drawn per request); the choices do not.
Prints one line per round and the seed to replay a failure; exit 1 when a round failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dw_helpers import Consultant
from run_helpers import ELIGIBILITY, assert_reconciled, dw_run, round_trip_leftovers

from dwlib.record import RecordError, load_record
from dwlib.sandbox import control
from dwlib.scenarios import SCENARIOS

ROWS = 200
# Everything a runbook's kernel (or its gate command) asks of the sandbox.
ENVIRONMENTS = r"^/(dataverse|finops|_portal|gateway)/"
KERNEL = "ipykernel_launcher"
ANY, WRITES = ".*", "POST|PATCH|PUT|DELETE"  # methods a trap counts
# (table, key columns): a key names one row per company; two rows with one key are a double.
KEYED = {"cdm_companies": ("cdm_companycode",), "accounts": ("accountnumber", "_msdyn_company_value"),
         "contacts": ("msdyn_contactpersonid", "_msdyn_company_value")}


@dataclass(frozen=True)
class Round:
    """The choices of one round, all drawn from its seed."""

    scenario: str
    seed: int
    faults: str
    step: str
    nth: int
    at: str
    method: str  # of the requests counted: any, or those that may write

    @classmethod
    def draw(cls, seed: int, scenario: str) -> Round:
        rng = random.Random(f"{seed}:{scenario}")
        faults = (f"latency={rng.randint(0, 20)}ms,429={rng.uniform(0, 0.05):.3f},"
                  f"503={rng.uniform(0, 0.02):.3f},504={rng.uniform(0, 0.02):.3f},"
                  f"drop={rng.uniform(0, 0.02):.3f},seed={rng.randrange(1 << 16)}")
        return cls(scenario, seed, faults, rng.choice(SCENARIOS[scenario].step_ids()), rng.randint(1, 5),
                   rng.choice(["before", "after"]), rng.choice([ANY, WRITES]))

    def __str__(self) -> str:
        which = "request" if self.method == ANY else "write request"
        return (f"{self.scenario}: faults {self.faults}; kill at {which} {self.nth} ({self.at} it runs) "
                f"from step {self.step}")


def _await_step(out: Path, steps: list[str], proc: Any) -> bool:
    """Wait until the run's record shows one of `steps` running or done; False if the run ended first."""
    while proc.poll() is None:
        for path in out.glob("*.json"):
            try:
                data = load_record(path)
            except RecordError:
                continue
            done = {s["id"] for s in data["steps"]}
            if data["current_step"] in steps or done & set(steps):
                return True
        time.sleep(0.05)
    return False


def _doubles(connection: dict[str, Any]) -> list[str]:
    """Keys held by more than one row, and round-trip customers left behind."""
    consultant = Consultant(connection)
    try:
        found = []
        for table, key in KEYED.items():
            rows = consultant.dv_rows(f"{table}?$select={','.join(key)}")
            counts = Counter(tuple(r[k] for k in key) for r in rows if r[key[0]])
            found += [f"{table} {k} ×{n}" for k, n in counts.items() if n > 1]
        return found + [f"round-trip customer left: {r}" for r in round_trip_leftovers(connection)]
    finally:
        consultant.close()


def play(chosen: Round, rows: int, work: Path) -> str:
    """Play one round in `work`; what happened (raises AssertionError when the rerun did not converge)."""
    connection = control.start(chosen.scenario, root=work / "sandbox", rows=rows, port=0,
                               faults=chosen.faults, owner_pid=os.getpid()).connection
    out = work / "runs"
    try:
        first = dw_run(chosen.scenario, connection, out)
        steps = SCENARIOS[chosen.scenario].step_ids()
        if _await_step(out, steps[steps.index(chosen.step):], first):
            control.traps(connection, [{"method": chosen.method, "path": ENVIRONMENTS, "nth": chosen.nth,
                                        "at": chosen.at, "process": KERNEL, "group": True}])
        output, _ = first.communicate(timeout=1800)
        fired = (control.traps(connection) or [{}])[0].get("fired")
        (record,) = out.glob("*.json")
        ran = load_record(record)
        if fired:
            what = f"killed in {ran['current_step']} ({fired['request']})"
        else:  # quicker than the trap; a failure here is the runbook not riding out the faults
            what = f"the run ended before the kill: {ran['status']}" + (
                f" at {ran['failed_step']}" if ran["failed_step"] else "")
        second = dw_run(chosen.scenario, connection, out)
        output, _ = second.communicate(timeout=1800)
        assert second.returncode == 0, f"{what}; the second run did not pass:\n{output[-4000:]}"
        (again,) = set(out.glob("*.json")) - {record}
        data = load_record(again)
        # Passed, or done with the warnings the seeded data brings (Dataverse rows dual-write will
        # not pick up): nothing else may warn.
        warned = [c["name"] for s in data["steps"] for c in s["checks"] if c["status"] == "warning"]
        assert data["status"] in ("passed", "warning"), f"{what}; the second run is {data['status']}"
        assert all(ELIGIBILITY in name for name in warned), f"{what}; the second run warns: {warned}"
        assert_reconciled(data)
        control.admin(connection, "faults", "")  # the checks below read without the runbooks' retries
        doubles = _doubles(connection)
        assert not doubles, f"{what}; after the second run: {'; '.join(doubles)}"
        return f"{what}; the second run passed and reconciled"
    finally:
        control.stop(work / "sandbox")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="replay the rounds of this seed (default: a new one)")
    setups = ",".join(s for s, sc in SCENARIOS.items() if sc.kind == "setup")
    parser.add_argument("--scenarios", default=setups,
                        help="comma-separated scenarios (default: all six)")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows per main table (default {ROWS})")
    parser.add_argument("--keep", type=Path, help="keep each round's sandbox and runs under this directory")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: use {', '.join(SCENARIOS)}")
    print(f"chaos: seed {seed}, {len(scenarios)} round(s), {args.rows} rows (replay: make chaos SEED={seed})",
          flush=True)
    failed = []
    for scenario in scenarios:
        chosen = Round.draw(seed, scenario)
        work = (args.keep / scenario) if args.keep else Path(tempfile.mkdtemp(prefix=f"dw-chaos-{scenario}-"))
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        started = time.monotonic()
        print(f"- {chosen}", flush=True)
        try:
            print(f"  {play(chosen, args.rows, work)} ({time.monotonic() - started:.0f} s)", flush=True)
        except Exception as exc:  # a round that breaks is reported; the others still run
            failed.append(scenario)
            text = str(exc) if isinstance(exc, AssertionError) else traceback.format_exc()
            print(f"  FAILED ({time.monotonic() - started:.0f} s): {text}\n  replay: make chaos SEED={seed} "
                  f"SCENARIOS={scenario} ROWS={args.rows}; runs and sandbox kept in {work}", flush=True)
            continue
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"chaos: seed {seed}: {len(scenarios) - len(failed)} of {len(scenarios)} round(s) passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
