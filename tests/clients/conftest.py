"""Fixtures of the client tests: a private token cache, recorded (not slept) retry waits, fake services."""

from __future__ import annotations

from pathlib import Path

import httpx_retries.retry
import pytest
from client_fakes import FakeService


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Token caches go to a temporary XDG_CACHE_HOME, never the real home."""
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the retry layer asks for, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(httpx_retries.retry.time, "sleep", recorded.append)
    return recorded


@pytest.fixture
def fake() -> FakeService:
    return FakeService()
