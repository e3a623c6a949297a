"""Fixtures of the client tests: a private token cache, a list for retry waits (tests hand it to the
stack's `RetryBudget(sleep=sleeps.append)`, so nothing sleeps), fake services."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_fakes import FakeService


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Token caches go to a temporary XDG_CACHE_HOME, never the real home."""
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def sleeps() -> list[float]:
    """Where the waits the retry layer asks for are recorded (pass `sleeps.append` as the sleep)."""
    return []


@pytest.fixture
def fake() -> FakeService:
    return FakeService()
