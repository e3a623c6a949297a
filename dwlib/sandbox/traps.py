"""Traps: a signal to a process when a chosen request reaches the sandbox (tests and `make chaos`).

Killing a client "in the middle of a step" with a timer is a guess; a trap picks the moment exactly:
the `nth` request whose method and path match, `before` its route runs or `after` it (the change
is made, the response not yet sent: the client dies without hearing that it happened). The signal
goes to `pid` when given, else to the process that sent the request (found by its TCP connection),
or to its nearest ancestor whose command line matches `process` (e.g. `ipykernel`: a runbook's
kernel also when a portal gate's consultant, a child of it, sent the request); with `group`, to the
target's whole process group (a kernel and the gate commands it started). With `respond`, the
request is answered with that status (e.g. 429) instead, without running. A trap fires once;
the admin endpoint `/_sandbox/traps` sets them and shows which fired, at what and against whom.
Traps are no part of any emulated service and live only as long as the process.

Example:
    >>> t = Trap.model_validate({"method": "POST", "path": "/finops/data/LegalEntities$"})
    >>> t.matches("POST", "/finops/data/LegalEntities"), t.matches("GET", "/finops/data/LegalEntities")
    (True, False)
    >>> t.signal, t.at, t.nth
    ('SIGKILL', 'after', 1)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("dwlib.sandbox")
GONE_WAIT_S = 5.0  # a killed process is gone (or a zombie) within this, or the trap says so


class Trap(BaseModel):
    """One trap: which request, when, which signal to whom; `fired` once it went off."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(".*", description="regex matched against the whole method, e.g. POST|PATCH")
    path: str = Field(description="regex searched in the path (no query), e.g. /finops/data/LegalEntities$")
    nth: int = Field(1, ge=1, description="fire at the nth matching request")
    at: Literal["before", "after"] = "after"
    signal: str = "SIGKILL"
    pid: int | None = Field(None, description="the process to signal; default: the request's sender")
    process: str | None = Field(None, description="regex on the command line: the sender or its nearest "
                                                   "ancestor that matches gets the signal")
    group: bool = Field(False, description="signal the target's whole process group (what it started)")
    respond: int | None = Field(None, ge=400, le=599, description="instead of a signal: answer with this "
                                "status (Retry-After: 1 on 429/503) without running the route")
    seen: int = 0
    fired: dict[str, Any] | None = None

    @field_validator("method", "path", "process")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    @field_validator("signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        if value not in signal.Signals.__members__:
            raise ValueError(f"unknown signal {value!r}: e.g. SIGKILL, SIGTERM, SIGINT")
        return value

    def matches(self, method: str, path: str) -> bool:
        """Whether a request counts towards this trap (a fired trap counts nothing)."""
        return (self.fired is None and re.fullmatch(self.method, method) is not None
                and re.search(self.path, path) is not None)


def sender(client: tuple[str, int] | None, server_port: int) -> int | None:
    """The pid of the local process whose TCP connection from `client` reaches `server_port`."""
    if client is None:
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if (conn.laddr and conn.raddr and conn.pid and conn.pid != os.getpid()
                and conn.laddr.port == client[1] and conn.raddr.port == server_port):
            return int(conn.pid)
    return None


def target(trap: Trap, sender_pid: int | None) -> int | None:
    """Whom `trap` signals: its `pid`, else the sender or its nearest ancestor matching `process`."""
    if trap.pid is not None or sender_pid is None:
        return trap.pid
    if trap.process is None:
        return sender_pid
    try:
        proc: psutil.Process | None = psutil.Process(sender_pid)
        while proc is not None:
            if re.search(trap.process, " ".join(proc.cmdline())):
                return proc.pid
            proc = proc.parent()
    except psutil.Error:
        pass
    return None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fire(trap: Trap, client: tuple[str, int] | None, server_port: int, request: str) -> None:
    """Send the trap's signal (blocking: run it off the event loop); note what happened in `fired`."""
    pid = target(trap, sender(client, server_port))
    sig = signal.Signals[trap.signal]
    trap.fired = {"request": request, "pid": pid, "signal": trap.signal, "at": trap.at,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "error": None}
    if pid is None:
        trap.fired["error"] = "no process to signal: the sender was not found (or no ancestor matched)"
    else:
        try:
            if trap.group:
                group = os.getpgid(pid)
                if group == os.getpgid(0):
                    raise PermissionError("the target shares the sandbox's process group")
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)
        except OSError as exc:
            trap.fired["error"] = f"{type(exc).__name__}: {exc}"
        else:
            # A killed client must not read the response of an `after` trap: wait until it is gone.
            deadline = time.monotonic() + GONE_WAIT_S
            while sig == signal.SIGKILL and not _gone(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
    log.info("trap fired: %s %s to pid %s (%s)", request, trap.signal, pid, trap.fired["error"] or "sent")


class Traps:
    """The ASGI middleware that springs traps; `server.py` keeps it in `sbx.extras["traps"]`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.traps: list[Trap] = []

    def set(self, specs: list[dict[str, Any]]) -> list[Trap]:
        """Replace the traps (pydantic's ValueError when a spec is bad)."""
        self.traps = [Trap.model_validate(s) for s in specs]
        return self.traps

    def describe(self) -> list[dict[str, Any]]:
        return [t.model_dump() for t in self.traps]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.traps:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        due = []
        for trap in self.traps:
            if trap.matches(method, path):
                trap.seen += 1
                if trap.seen == trap.nth:
                    due.append(trap)
        if not due:
            await self.app(scope, receive, send)
            return
        client, port = scope.get("client"), scope["server"][1]
        refusal = next((t for t in due if t.respond is not None), None)
        if refusal is not None:
            await _refuse(refusal, f"{method} {path}", send)
            return

        async def spring(when: str) -> None:
            for trap in (t for t in due if t.at == when):
                await asyncio.to_thread(fire, trap, client, port, f"{method} {path}")

        await spring("before")

        async def held(message: Message) -> None:
            if message["type"] == "http.response.start":
                await spring("after")
            await send(message)

        await self.app(scope, receive, held)


async def _refuse(trap: Trap, request: str, send: Send) -> None:
    """Answer the request with the trap's status and an OData error body; the route never runs."""
    assert trap.respond is not None
    trap.fired = {"request": request, "pid": None, "signal": None, "at": "before", "respond": trap.respond,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "error": None}
    message = f"refused by a sandbox trap ({trap.respond})"
    body = json.dumps({"error": {"code": "", "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if trap.respond in (429, 503):
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": trap.respond, "headers": headers})
    await send({"type": "http.response.body", "body": body})
