"""F&O throttles parts inside a `$batch` (429 with Retry-After in a batch answered 200): the sandbox
emulates it (`part429` faults), and the client sends only those parts again."""

from __future__ import annotations

from typing import Any

from dw_helpers import sandbox_params

from dwlib.clients import Batch, FinOpsClient, connect
from dwlib.sandbox import control
from dwlib.sandbox.limits import FINOPS_THROTTLED, THROTTLING_KIND

GROUPS = 12


def _groups_batch(fo: FinOpsClient, prefix: str) -> Batch:
    """Each group created in its own change set, with a read between them."""
    batch = fo.batch()
    for i in range(GROUPS):
        with batch.changeset() as cs:
            cs.create("CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": f"{prefix}{i}",
                                         "Description": f"group {i}"})
        batch.get("LegalEntities", {"$top": "1"})
    return batch


def _created(fo: FinOpsClient, prefix: str) -> list[str]:
    return sorted(g["CustomerGroupId"] for g in fo.query("CustomerGroups", company="USMF")
                  if g["CustomerGroupId"].startswith(prefix))


def test_the_sandbox_throttles_batch_parts_and_the_client_sends_only_those_again(
        start_sandbox: Any) -> None:
    conn = start_sandbox("existing-existing", rows=12, fresh=True)
    waits: list[float] = []
    with connect(sandbox_params(conn), sleep=waits.append) as s:
        fo = s.finops
        control.admin(conn, "faults", "part429=1,retry=2")
        try:
            parts = _groups_batch(fo, "ALL").execute(continue_on_error=True)
        finally:
            control.admin(conn, "faults", "")
        assert {p.status for p in parts} == {429} and len(parts) == 2 * GROUPS  # the batch itself: 200
        assert {p.headers["retry-after"] for p in parts} == {"2"}
        inner = parts[0].json()["error"]["innererror"]
        assert (inner["message"], inner["type"]) == (FINOPS_THROTTLED, THROTTLING_KIND)
        assert _created(fo, "ALL") == []  # a throttled part does not run

        control.admin(conn, "faults", "part429=0.4,seed=11,retry=2")
        mark = len(s.journal)
        try:
            answers = fo.execute(_groups_batch(fo, "SOME"))
        finally:
            control.admin(conn, "faults", "")
        batches = [e for e in s.journal.entries()[mark:] if e.url.endswith("/$batch")]
        assert [a.status for a in answers] == [201, 200] * GROUPS
        assert len(batches) > 1 and waits and set(waits) == {2.0}  # throttled parts waited out, sent again
        assert _created(fo, "SOME") == sorted(f"SOME{i}" for i in range(GROUPS))  # each exactly once
