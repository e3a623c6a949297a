"""What keeps a run of a million rows bounded, proven by structure (sizes and counts, never timing
or memory thresholds): a step's calls in the record and the notebook are capped and every call is
in its evidence file; missing keys are all found, and held in memory only as a bounded head;
packages are read and written row by row."""

from __future__ import annotations

import inspect
import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dwlib import review
from dwlib.clients.http import JournalEntry
from dwlib.record import CALLS_KEPT, SCHEMA_FILE, RunRecord, bounded_calls, call_totals, evidence_dir
from dwlib.render import call_count, result_bundle, summary_rows
from dwlib.steps.support import spill as spill_module
from dwlib.steps.support.dmf_package import Package, package_head, package_rows, read_package
from dwlib.steps.support.reconcile import Reconciliation, Spilled
from dwlib.steps.support.spill import KeyList, Spill


def _calls(n: int, *, failed_every: int = 0) -> list[dict[str, Any]]:
    return [asdict(JournalEntry(started="2026-01-01T00:00:00Z", method="GET", url=f"https://h/p{i}",
                                status=503 if failed_every and i % failed_every == 0 else 200,
                                duration_ms=1.0, retries=1 if failed_every and i % failed_every == 0 else 0,
                                wait_s=0.0, request_id=f"r{i}"))
            for i in range(n)]


def _step(step: str, calls: list[dict[str, Any]], summary: Any) -> dict[str, Any]:
    return {"id": step, "step": step, "title": step, "status": "passed", "summary": "ok", "checks": [],
            "tables": {}, "counts": {}, "evidence_files": [], "next_action": "", "doc_url": "",
            "started": "2026-01-01T00:00:00Z", "duration_s": 1.0, "calls": calls, "remediation": [],
            "error": "", **({"calls_summary": dict(summary)} if summary else {})}


def _record(tmp_path: Path, calls: int) -> dict[str, Any]:
    path = tmp_path / f"run-{calls}.json"
    rec = RunRecord.create(path, run_id=f"r{calls}", scenario="existing-existing", steps=["migrate"],
                           parameters={}, environments={"dataverse_url": "https://d", "finops_url": "https://f"},
                           dry_run=False, interactive=False)
    rec.step_started("migrate")
    file = evidence_dir(path) / "calls" / "migrate.jsonl"
    kept, summary = bounded_calls(_calls(calls, failed_every=97), file)
    rec.step_finished("migrate", _step("migrate", kept, summary))
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_a_step_keeps_at_most_calls_kept_calls_and_every_call_is_in_its_evidence_file(tmp_path: Path) -> None:
    data = _record(tmp_path, 20_000)
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    entry = data["steps"][0]
    assert len(entry["calls"]) == CALLS_KEPT
    summary = entry["calls_summary"]
    assert summary["calls"] == 20_000 and summary["kept"] == CALLS_KEPT
    # Failed and retried calls are kept first (up to half), then the first ones.
    assert sum(1 for c in entry["calls"] if c["status"] == 503) == CALLS_KEPT // 2
    lines = (tmp_path / summary["file"]).read_text().splitlines()
    assert len(lines) == 20_000 and json.loads(lines[-1])["url"] == "https://h/p19999"
    assert summary["failed"] == summary["retries"] == len(range(0, 20_000, 97))
    assert summary["file"] in {e["path"] for e in data["evidence"]}  # hashed like any evidence
    assert call_count(entry) == call_totals(entry)["calls"] == summary_rows([entry])[0]["calls"] == 20_000
    assert review.throttling(data).iloc[0]["retries"] == summary["retries"]


def test_the_record_and_the_notebook_output_do_not_grow_with_the_calls(tmp_path: Path) -> None:
    small, large = _record(tmp_path, 1_000), _record(tmp_path, 50_000)
    biggest = max(len(json.dumps(c)) for c in _calls(50_000, failed_every=97))
    for data in (small, large):
        entry = data["steps"][0]
        notebook = result_bundle(entry)["application/vnd.dwlib.step-result+json"]["result"]
        assert len(entry["calls"]) == len(notebook["calls"]) == CALLS_KEPT
        assert len(json.dumps(notebook["calls"])) <= CALLS_KEPT * (biggest + 2)
    few, none = bounded_calls(_calls(CALLS_KEPT), tmp_path / "never.jsonl")
    assert len(few) == CALLS_KEPT and none is None and not (tmp_path / "never.jsonl").exists()


def test_every_missing_key_is_found_through_the_spill_and_only_a_head_is_in_memory() -> None:
    finops = {f"us-{i:06d}": f"US-{i:06d}" for i in range(20_000)}
    dataverse = {f"us-{i:06d}": f"us-{i:06d}" for i in range(0, 25_000, 3)}
    with Spill() as spill:
        spill.put_keys("fo", iter(finops.items()))
        spill.put_keys("dv", iter(dataverse.items()))
        spilled = Reconciliation("m", "USMF", Spilled(spill, "fo"), Spilled(spill, "dv"), 20_000,
                                 len(dataverse))
    in_memory = Reconciliation("m", "USMF", finops, dataverse, 20_000, len(dataverse))
    for side in ("missing_in_dataverse", "missing_in_finops"):
        streamed, expected = getattr(spilled, side), getattr(in_memory, side)
        assert len(streamed) == len(expected) and list(streamed) == list(expected)
    keys = spilled.missing_in_dataverse
    assert isinstance(keys, KeyList) and keys.spilled and len(keys._head) == 1000  # the rest on disk
    every = len(in_memory.missing_in_dataverse) + len(in_memory.missing_in_finops)
    assert len(list(spilled.missing_rows())) == every
    assert spilled.row(3)["sample_missing_in_dataverse"] == "US-000001, US-000002, US-000004"
    assert spilled.distinct_keys == (20_000, len(dataverse)) and not spilled.ok


def test_a_key_seen_twice_keeps_its_first_spelling_and_counts_once() -> None:
    with Spill() as spill:
        spill.put_keys("fo", [("a-1", "A-1"), ("a-1", "a-1"), ("a-2", "A-2")])
        spill.put_keys("dv", [])
        r = Reconciliation("m", "USMF", Spilled(spill, "fo"), Spilled(spill, "dv"), 3, 0)
    assert list(r.missing_in_dataverse) == ["A-1", "A-2"] and r.duplicates == 1


def test_packages_are_read_and_written_row_by_row(tmp_path: Path) -> None:
    manifest = (b'<DataManagementPackageManifest xmlns="http://schemas.microsoft.com/dynamics/2015/01/'
                b'DataManagement"><PackageEntityList><DataManagementPackageEntityData>'
                b'<EntityName>Customers V3</EntityName><InputFilePath>Customers.csv</InputFilePath>'
                b'</DataManagementPackageEntityData>'
                b'</PackageEntityList></DataManagementPackageManifest>')
    head = Package(b"<h/>", manifest, "Customers V3", "Customers.csv", ["ACCOUNTNUM", "NAME"], [])
    made: list[int] = []

    def rows() -> Any:
        for i in range(30_000):
            made.append(i)
            yield {"ACCOUNTNUM": f"US-{i}", "NAME": f'Name "{i}", Ltd\né'}

    path = head.write(tmp_path / "p.zip", rows())
    assert len(made) == 30_000 and head.rows == []  # consumed as written, nothing kept
    again = package_head(path, "customers v3")
    assert again.rows == [] and again.fields == ["ACCOUNTNUM", "NAME"]
    stream = package_rows(path, again)
    assert inspect.isgenerator(stream)
    assert next(stream) == {"ACCOUNTNUM": "US-0", "NAME": 'Name "0", Ltd\né'}
    assert sum(1 for _ in stream) == 29_999
    assert read_package(path, "Customers V3").rows[-1]["ACCOUNTNUM"] == "US-29999"


def test_the_spill_pairs_rows_by_key_and_lists_rows_in_order() -> None:
    with Spill() as spill:
        spill.put("fo", ((f"k{i:05d}", {"i": i}) for i in range(10_000)))
        spill.put("dv", ((f"k{i:05d}", {"j": i}) for i in range(0, 10_000, 4)))
        # Rows added while another table is read: migrate converts one side while it reads the pairs.
        added = spill.add("out", ({"k": k} for k, _, other in spill.pairs("fo", "dv") if other is None))
        assert added == spill.count("out") == 7_500
        assert [r["k"] for r in spill.listed("out")][:3] == ["k00001", "k00002", "k00003"]


def test_keyed_rows_come_back_merged_from_sorted_runs_in_key_order_the_last_row_of_a_key_winning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed tables are sorted runs in a file (seven rows a run here, 64-byte reads), merged when
    read: the same pairs as a dict of the rows given (a later row replacing an earlier one)."""
    monkeypatch.setattr(spill_module, "RUN", 7)
    monkeypatch.setattr(spill_module, "READ", 64)
    rng = random.Random(7)
    left = [(f"k{rng.randrange(60):03d}", {"n": i, "pad": "x" * rng.randrange(90)}) for i in range(200)]
    right = [(f"k{rng.randrange(90):03d}", [i]) for i in range(50)]
    with Spill() as spill:
        assert spill.put("fo", left[:120]) == 120 and spill.put("fo", left[120:]) == 80
        spill.put("dv", right)
        want_left, want_right = dict(left), dict(right)
        expected = [(k, want_left[k], want_right.get(k)) for k in sorted(want_left)]
        assert list(spill.pairs("fo", "dv")) == expected
        assert list(spill.pairs("fo", "dv", unmatched=True)) == [e for e in expected if e[2] is None]
        assert spill.count("fo") == len(want_left) and spill.count("dv") == len(want_right)
        assert list(spill.pairs("fo", "none")) == [(k, v, None) for k, v, _ in expected]
        assert list(spill.pairs("none2", "fo")) == []


def test_listed_rows_cross_read_blocks_and_are_read_by_two_threads_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed table's records are read in blocks (50 bytes here, smaller than some rows) by any
    number of readers at once, each at its own offset; a name is one kind of table."""
    monkeypatch.setattr(spill_module, "READ", 50)
    rows = [{"i": i, "text": "é" * (i % 70)} for i in range(300)]
    with Spill() as spill:
        assert spill.add("out", rows[:100]) + spill.add("out", iter(rows[100:])) == 300
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: list(spill.listed("out")), range(2)))
        assert both == [rows, rows] and spill.count("out") == 300
        spill.put("keyed", [("a", 1)])
        for wrong in (lambda: spill.add("keyed", [1]), lambda: spill.put("out", [("a", 1)]),
                      lambda: spill.put_keys("out", [("a", "A")])):
            with pytest.raises(ValueError, match="another kind of table"):
                wrong()
        spill.drop("out")
        assert spill.count("out") == 0 and list(spill.listed("out")) == []


def test_spill_and_key_files_leave_nothing_behind_even_when_the_process_is_killed(tmp_path: Path) -> None:
    """Both are unlinked as soon as they are opened: a run killed with SIGKILL (no clean-up code
    runs) cannot leave a table's rows in the temporary directory."""
    import os
    import subprocess
    import sys

    script = ("from dwlib.steps.support.spill import KeyList, Spill; import os, signal\n"
              "s = Spill(); s.put('fo', ((str(i), {'i': i}) for i in range(5000)))\n"
              "k = KeyList((str(i) for i in range(5000)), head=10)\n"
              "assert k.spilled and len(list(k)) == 5000 and s.count('fo') == 5000\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_page_is_freed_as_soon_as_its_rows_are_without_the_cyclic_collector() -> None:
    """httpx ties each response to its stream in a reference cycle; the client unties it, so a page's
    body (megabytes at 10,000 rows) goes with its response instead of waiting for a full collection."""
    import gc
    import weakref

    import httpx

    from dwlib.clients.odata import ODataService

    seen: list[weakref.ref[httpx.Response]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "0"))
        link = {"@odata.nextLink": f"https://h/svc/things?page={page + 1}"} if page < 2 else {}
        return httpx.Response(200, json={"value": [{"n": page}] * 1000, **link})

    class Spy(ODataService):
        def send(self, *args: Any, **kwargs: Any) -> httpx.Response:
            response = super().send(*args, **kwargs)
            seen.append(weakref.ref(response))
            return response

    service = Spy(httpx.Client(transport=httpx.MockTransport(answer)), "https://h/svc")
    enabled = gc.isenabled()
    gc.disable()
    try:
        pages = service.pages("things")
        first = next(pages)
        assert len(first) == 1000 and seen[0]() is None  # the rows are here, the body is gone
        assert sum(len(p) for p in pages) == 2000 and all(ref() is None for ref in seen)
    finally:
        if enabled:
            gc.enable()


def test_the_bootstrap_keeps_its_rows_on_disk_counts_them_as_they_come_and_gives_them_back_in_order() -> None:
    """A million rows to stamp as objects would take a gigabyte: `BootstrapState.add` counts each
    row and writes it to the spill, and no row object outlives the call."""
    import gc

    from dwlib.steps.bootstrap import BootstrapState, RowChange

    def change(i: int) -> RowChange:
        table = "accounts" if i % 3 else "contacts"
        code = "" if i % 10 == 0 else ("USMF" if i % 2 else "GBSI")
        rule, company = ("business unit", f"co-{code}") if code else ("", "")
        group, group_id = ("10", "grp") if code and i % 7 else ("", "")
        reason = "" if code else "not in bootstrap.mapping"
        return RowChange(table, f"id-{i}", f"K{i}", f"name {i}", "Contoso US", rule, code, company, "",
                         group, group_id, reason)

    targets: dict[str, Any] = {"accounts": None, "contacts": None}
    with Spill() as spill:
        state = BootstrapState(targets, spill)
        state.add(change(i) for i in range(30_000))
        assert not [o for o in gc.get_objects() if isinstance(o, RowChange)]
        everything = [change(i) for i in range(30_000)]
        stamps = [c for c in everything if c.company_code]
        assert state.stamp_count == len(stamps) and state.not_mapped == 3_000
        assert state.to_stamp["contacts"] == sum(c.table == "contacts" for c in stamps)
        assert list(state.stamps("contacts")) == [c for c in stamps if c.table == "contacts"]
        assert list(state.stamps()) == [c for c in stamps if c.table == "accounts"] + \
            [c for c in stamps if c.table == "contacts"]
        assert list(state.unmapped()) == [c for c in everything if not c.company_code]
        assert state.per_company()["accounts USMF"] == sum(
            c.table == "accounts" and c.company_code == "USMF" for c in stamps)
        assert state.groups_given["10"] == sum(bool(c.customer_group_id) for c in stamps)
        unmapped = Counter(c.table for c in everything if not c.company_code)
        assert state.unmapped_table() == [
            {"table": t, "owning_business_unit": "Contoso US", "rows": unmapped[t],
             "reason": "not in bootstrap.mapping"} for t in ("accounts", "contacts")]


def test_f_and_o_customers_are_looked_up_by_key_from_the_spill_with_every_company_they_are_in() -> None:
    from dwlib.steps.bootstrap import Rules

    with Spill() as spill:
        spill.put_many("fo_0", [("c-1", ("USMF", "10")), ("c-2", ("USMF", "20")), ("c-1", ("GBSI", "30"))])
        rules = Rules({}, {}, {}, None, {}, spill, {"accounts": "fo_0"})
        assert rules.finops_matches("accounts", "C-1") == [("USMF", "10"), ("GBSI", "30")]
        assert rules.finops_matches("accounts", "c-9") == [] == rules.finops_matches("contacts", "c-1")
        assert Rules({}, {}, {}, None, {}).finops_matches("accounts", "c-1") == []
