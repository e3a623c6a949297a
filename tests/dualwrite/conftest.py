"""Fixtures of the dual-write tests (helpers live in `dw_helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dw_helpers import MakeRuntime, runtime_factory


@pytest.fixture
def make_runtime(tmp_path: Path) -> MakeRuntime:
    """A factory of seeded, linked runtimes over fresh stores (see `dw_helpers.runtime_factory`)."""
    return runtime_factory(tmp_path)


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """msal token caches go to a temporary XDG_CACHE_HOME, never the real home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
