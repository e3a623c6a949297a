"""Live sync: a committed write on one side written to the other in the same transaction.

`on_write` is registered in `sbx.extras["write_hooks"]` (see `odata.WriteEvent`): the API
handlers call it inside the writing transaction, so when the other side rejects the row the
hook raises `ODataError`, the whole write rolls back on both sides, and the caller gets the error
("if the sync fails on one of the apps, then the other app will fail as well"). While a map is
Paused or Resuming its changes are queued in order (`dw_queue`) and applied by `catch_up`.

The documented limits of a live-sync transaction (sync-limits.md) refuse it the same way: more
than 1,000 records from F&O; from Dataverse, a payload (the mapped values of its rows) over
116.65 MB, with the documented "Message size exceeded when sending context to Sandbox" error; and
a transaction that takes longer than 2 minutes (measured, plus the sandbox's `row_ms` a row).

Example:
    >>> finops_message("accounts", "CustCustomerV3Entity", "x")[:48]
    'Cannot save the changes to the database. Unit of'
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dwlib import catalog

from . import tracelog
from .dw_limits import RuntimeLimits, elapsed_ms
from .dw_mapping import COMPANY, Company, MapBinding, Rejected, Resolver, binding, companies
from .dw_records import company_owner
from .odata import ODataError, WriteEvent
from .store import utcnow

if TYPE_CHECKING:
    from .dw_runtime import RuntimeBase

LIVE_STATES = ("Running", "Paused", "Resuming")
ISV_ABORTED = "0x80040265"  # Dataverse: "ISV code aborted the operation" (plug-in failure)
MESSAGE_SIZE_EXCEEDED = "0x80040216"  # -2147220970, documented with "Message size exceeded …"
CATCH_UP_BATCH = 200


def finops_message(dv_table: str, fo_entity: str, detail: str) -> str:
    """The documented shape of a live-sync failure reported to an F&O writer."""
    return (
        f"Cannot save the changes to the database. Unit of Work can not commit transaction. Unable to "
        f"write data to entity {dv_table}. Writes to {fo_entity} failed with error message {detail}"
    )


def dataverse_message(fo_entity: str, detail: str) -> str:
    """A live-sync failure reported to a Dataverse writer (the dual-write runtime plug-in)."""
    head = f"Unable to write data to entity {fo_entity}. Writes to {fo_entity}"
    return f"{head} failed with error message {detail}"


def message_size_exceeded(size_bytes: int) -> str:
    """Dataverse's refusal of a payload over its limit when a plug-in (dual-write's) is registered
    (troubleshoot-plug-in; error code -2147220970, 0x80040216).

    >>> message_size_exceeded(120_400_000)
    'Message size exceeded when sending context to Sandbox. Message size: 120 Mb'
    """
    return f"Message size exceeded when sending context to Sandbox. Message size: {size_bytes / 1e6:.0f} Mb"


def transaction_timeout(elapsed_ms: float, limit_ms: int) -> str:
    """The detail of a live-sync transaction over the time limit (sync-limits.md gives no text).

    >>> transaction_timeout(130_000, 120_000)[:60]
    'The transaction took 130 seconds, more than the dual-write t'
    """
    return (f"The transaction took {elapsed_ms / 1000:.3g} seconds, more than the dual-write transaction "
            f"time limit of {limit_ms / 1000:g} seconds: its records are rolled back in both apps.")


def _maps_for(service: str, entity_set: str) -> list[catalog.TableMap]:
    attr = "finops_entity_set" if service == "finops" else "dataverse_table"
    return [m for m in catalog.table_maps() if getattr(m, attr) == entity_set]


def _code_of(comps: dict[str, Company], company_id: Any) -> str | None:
    return next((c for c, comp in comps.items() if comp.id == company_id), None)


def _in_scope(
    b: MapBinding, origin: str, row: dict[str, Any], linked: set[str], comps: dict[str, Company]
) -> bool:
    if origin == "finops":
        if not b.fo_eligible(row):
            return False
        if b.map.company_specific:
            return str(row.get("dataAreaId", "")).lower() in linked
        return b.dv.name != "cdm_companies" or str(row.get(b.fo_key, "")).lower() in linked
    if not b.dv_eligible(row):
        return False
    if b.map.company_specific:
        return _code_of(comps, row.get(COMPANY)) in linked
    return True


def apply_change(
    rt: RuntimeBase,
    b: MapBinding,
    origin: str,
    op: str,
    row: dict[str, Any],
    comps: dict[str, Company] | None = None,
) -> None:
    """Write one change of side `origin` to the other side; raises Rejected when refused."""
    assert b.fo is not None
    store = rt.store
    resolver = Resolver(store, rt.dataverse_url)
    comps = companies(store) if comps is None else comps
    if origin == "finops":
        company = comps.get(str(row.get("dataAreaId", "")).lower()) if b.map.company_specific else None
        if b.dv.name == "cdm_companies":
            company = None
        scope = {COMPANY: company.id} if company is not None and b.map.company_specific else {}
        existing = store.find(b.dv, {b.dv_key: row[b.fo_key], **scope}, limit=1)
        if op == "delete":
            if existing:
                store.delete(b.dv, {b.dv.key[0]: existing[0][b.dv.key[0]]})
            return
        values = b.to_dataverse(row, company, resolver)
        if existing:
            store.update(b.dv, {b.dv.key[0]: existing[0][b.dv.key[0]]}, values)
        else:
            stored = store.insert_rows(b.dv, [values])
            if b.dv.name == "cdm_companies":
                company_owner(store, stored[0])
        return
    data_area = _code_of(comps, row.get(COMPANY)) if b.map.company_specific else None
    key = {b.fo_key: row[b.dv_key], **({"dataAreaId": data_area} if data_area else {})}
    existing = store.find(b.fo, key, limit=1)
    if op == "delete":
        if existing:
            store.delete(b.fo, {c: existing[0][c] for c in b.fo.key})
        return
    values = b.to_finops(row, data_area, resolver, existing[0] if existing else None)
    if existing:
        store.update(b.fo, {c: existing[0][c] for c in b.fo.key}, values)
    else:
        store.insert(b.fo, values)


def _reject(b: MapBinding, origin: str, exc: Rejected) -> ODataError:
    if origin == "finops":
        return ODataError(
            400,
            finops_message(b.dv.name, b.map.finops_data_entity, exc.message),
            kind="Microsoft.Dynamics.Integrator.DualWriteRuntime.DualWriteException",
        )
    return ODataError(400, dataverse_message(b.map.finops_data_entity, exc.message), ISV_ABORTED)


def _enqueue(
    rt: RuntimeBase, m: catalog.TableMap, rec: dict[str, Any], origin: str, op: str, row: dict[str, Any]
) -> None:
    lim = rt.limits()
    payload = json.dumps(row, default=str)
    (queued,) = rt.store.query("SELECT COALESCE(SUM(bytes), 0) FROM dw_queue WHERE map_id = ?", [m.id])[0]
    paused_on = rec.get("pausedOn") or utcnow()
    age = (
        datetime.fromisoformat(utcnow().replace("Z", "+00:00"))
        - datetime.fromisoformat(paused_on.replace("Z", "+00:00"))
    ).total_seconds()
    if queued + len(payload) > lim.pause_max_bytes or age > lim.pause_max_seconds:
        raise ODataError(
            409,
            f"The queue of the paused table map '{m.name}' is full ({lim.pause_max_bytes:,} bytes) or the "
            f"map "
            f"has been paused for longer than {lim.pause_max_seconds:,} seconds: writes are blocked until "
            f"the map "
            "is resumed (pause-for-maintenance).",
            ISV_ABORTED,
        )
    rt.store.conn.execute(
        "INSERT INTO dw_queue (map_id, origin, op, row, bytes, queuedon) VALUES (?, ?, ?, ?, ?, ?)",
        (m.id, origin, op, payload, len(payload), utcnow()),
    )


@dataclass(frozen=True)
class _Live:
    """What the write hook needs to know about one table: the connection's legal entities, the
    limits, and each live map covering the table with its record and binding."""

    linked: set[str]
    lim: RuntimeLimits
    maps: list[tuple[catalog.TableMap, dict[str, Any], MapBinding]]


def _live(rt: RuntimeBase, origin: str, entity_set: str) -> _Live | None:
    maps = _maps_for(origin, entity_set)
    conn = rt.connection() if maps else None
    if conn is None:
        return None
    live = []
    for m in maps:
        rec = rt.map_record(m.name)
        if rec["state"] not in LIVE_STATES:
            continue
        b = binding(rt.effective_map(m.name))
        if b.has_data:
            live.append((m, rec, b))
    return _Live({c.lower() for c in conn["legalEntities"]}, rt.limits(), live)


def on_write(rt: RuntimeBase, event: WriteEvent) -> None:
    """The write hook: sync (or queue) every row of `event` for each map that covers its table. A
    refused Dataverse write is a failure of the dual-write plug-in: the trace log keeps it when the
    organization's setting asks for it (`tracelog`).

    The connection, limits and map records are read once per `event.batch` (e.g. a DMF import
    step: rows written in one block, where no action can change them in between)."""
    try:
        _sync(rt, event)
    except ODataError as exc:
        if event.entity.service == "dataverse":
            tracelog.trace_failure(rt.store, event, exc)
        raise


def _sync(rt: RuntimeBase, event: WriteEvent) -> None:
    origin = event.entity.service
    key = (__name__, origin, event.entity.name)
    if key not in event.batch:
        event.batch[key] = _live(rt, origin, event.entity.name)
    live: _Live | None = event.batch[key]
    if live is None:
        return
    linked, lim = live.linked, live.lim
    comps: dict[str, Company] | None = None
    started = time.perf_counter()
    synced = 0
    for m, rec, b in live.maps:
        comps = companies(rt.store) if comps is None else comps
        rows = [r for r in event.rows if _in_scope(b, origin, r, linked, comps)]
        if origin == "finops" and len(rows) > lim.live_transaction_records:
            raise ODataError(
                400,
                f"A dual-write transaction from finance and operations to Dataverse supports "
                f"{lim.live_transaction_records:,} records; this one has {len(rows):,}. Split it into "
                "smaller transactions (sync-limits).",
                kind="Microsoft.Dynamics.Ax.Xpp.ErrorException",
            )
        if origin == "dataverse" and rows:
            size = _payload_bytes(b, rows)
            if size > lim.live_payload_bytes:
                raise ODataError(400, message_size_exceeded(size), MESSAGE_SIZE_EXCEEDED)
        for row in rows:
            if rec["state"] == "Running":
                try:
                    apply_change(rt, b, origin, event.op, row, comps)
                except Rejected as exc:
                    raise _reject(b, origin, exc) from None
                synced += 1
            else:
                _enqueue(rt, m, rec, origin, event.op, row)
        took = elapsed_ms(time.perf_counter() - started, rows=synced, lim=lim)
        if synced and took > lim.live_transaction_ms:
            raise _reject(b, origin, Rejected(transaction_timeout(took, lim.live_transaction_ms)))


def _payload_bytes(b: MapBinding, rows: list[dict[str, Any]]) -> int:
    """What the dual-write plug-in hands on for `rows`: their mapped Dataverse values, as JSON."""
    columns = [x.dataverse for x in b.bindings if x.dataverse]
    return len(json.dumps([{c: r.get(c) for c in columns} for r in rows], default=str).encode())


def queued(rt: RuntimeBase, name: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """The Queued records tab: total count and a page of records in queue order."""
    m = catalog.table_map(name)
    (total,) = rt.store.query("SELECT COUNT(*) FROM dw_queue WHERE map_id = ?", [m.id])[0]
    rows = rt.store.query(
        "SELECT seq, origin, op, row, queuedon FROM dw_queue WHERE map_id = ? ORDER BY seq LIMIT ? OFFSET ?",
        [m.id, limit, offset],
    )
    return {
        "totalQueuedRecordCount": total,
        "records": [
            {"seq": s, "origin": o, "op": op, "row": json.loads(r), "queuedOn": q} for s, o, op, r, q in rows
        ],
    }


def _catch_up_errors(rt: RuntimeBase, m: catalog.TableMap) -> list[dict[str, Any]]:
    return rt.store.kv_get(f"dw.catchup.{m.id}", [])


def catch_up_errors(rt: RuntimeBase, name: str) -> list[dict[str, Any]]:
    """The Catch-up errors tab of a map."""
    return _catch_up_errors(rt, catalog.table_map(name))


def _record_error(rt: RuntimeBase, m: catalog.TableMap, entry: dict[str, Any], message: str) -> None:
    errors = _catch_up_errors(rt, m)
    errors.append({**entry, "error": message, "time": utcnow()})
    rt.store.kv_set(f"dw.catchup.{m.id}", errors)


def drop_queue(rt: RuntimeBase, name: str, *, keep_as_errors: bool) -> int:
    """Empty a map's queue (skip to live sync), keeping the records as catch-up errors if asked."""
    m = catalog.table_map(name)
    rows = rt.store.query("SELECT seq, origin, op, row FROM dw_queue WHERE map_id = ? ORDER BY seq", [m.id])
    if keep_as_errors:
        for seq, origin, op, row in rows:
            _record_error(
                rt,
                m,
                {"seq": seq, "origin": origin, "op": op, "row": json.loads(row)},
                "skipped to live synchronization; preserved for retry",
            )
    rt.store.conn.execute("DELETE FROM dw_queue WHERE map_id = ?", (m.id,))
    return len(rows)


async def catch_up(rt: RuntimeBase, name: str) -> None:
    """Apply the queued changes of a Resuming map in order, then set it Running.

    Writes arriving meanwhile keep queueing behind; a record the other side rejects becomes a
    catch-up error (the rest continue).
    """
    m = catalog.table_map(name)
    while True:
        if rt.map_record(name)["state"] != "Resuming":
            return  # stopped or reset meanwhile
        batch = rt.store.query(
            "SELECT seq, origin, op, row FROM dw_queue WHERE map_id = ? ORDER BY seq LIMIT ?",
            [m.id, CATCH_UP_BATCH],
        )
        if not batch:
            rec = rt.map_record(name)
            rt._set_state(m, rec, "Running", "caught up")
            return
        b = binding(rt.effective_map(name))
        for seq, origin, op, row in batch:
            data = json.loads(row)
            try:
                with rt.store.transaction():
                    apply_change(rt, b, origin, op, data)
            except Rejected as exc:
                _record_error(rt, m, {"seq": seq, "origin": origin, "op": op, "row": data}, exc.message)
            rt.store.conn.execute("DELETE FROM dw_queue WHERE seq = ?", (seq,))
        await asyncio.sleep(0)


def retry_catch_up_errors(rt: RuntimeBase, name: str) -> dict[str, Any]:
    """Retry All on the Catch-up errors tab: apply each again; what still fails stays."""
    m = catalog.table_map(name)
    b = binding(rt.effective_map(name))
    still: list[dict[str, Any]] = []
    entries = _catch_up_errors(rt, m)
    for entry in entries:
        try:
            with rt.store.transaction():
                apply_change(rt, b, entry["origin"], entry["op"], entry["row"])
        except Rejected as exc:
            still.append({**entry, "error": exc.message, "time": utcnow()})
    rt.store.kv_set(f"dw.catchup.{m.id}", still)
    return {"retried": len(entries), "remaining": len(still)}
