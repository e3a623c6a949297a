"""Helpers of the client tests: a fake OData service (an `httpx.MockTransport` router)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx

Handler = Callable[[httpx.Request, re.Match[str]], httpx.Response]


class FakeService:
    """A MockTransport router: `(method, path regex) → handler`, recording every request."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[httpx.Request] = []

    def on(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append((method, re.compile(pattern), handler))
            return handler
        return register

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.decode()
        for method, pattern, handler in self.routes:
            found = pattern.fullmatch(path.split("?")[0]) if method == request.method else None
            if found:
                return handler(request, found)
        return httpx.Response(404, json={"error": {"code": "0x80060888", "message": f"no route {path}"}})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def body(request: httpx.Request) -> Any:
    """The JSON body of a request."""
    return json.loads(request.content)
