"""docs/fidelity.md: every test a row names as pinning its behaviour exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `tests/x/test_y.py::test_z`, `test_y.py::test_z`, `::test_z` (in the file named before it), `test_y.py`
REFERENCE = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w+))?")


def _pins() -> list[tuple[str, str, str]]:
    """(row, file, test) for each test reference in the "pinned by" column of the tables."""
    out = []
    for line in (ROOT / "docs" / "fidelity.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[3] in ("pinned by", "---"):
            continue
        current = ""
        for file, test in REFERENCE.findall(cells[3]):
            current = file or current
            if current:
                out.append((cells[0][:60], current, test))
    return out


def _find(name: str) -> Path | None:
    path = ROOT / name
    if path.is_file():
        return path
    found = sorted((ROOT / "tests").rglob(Path(name).name))
    return found[0] if len(found) == 1 else None


def test_every_pinning_test_exists() -> None:
    pins = _pins()
    assert len(pins) > 50  # the three sections of the operations services alone name more
    missing = []
    for row, file, test in pins:
        path = _find(file)
        if path is None or (test and not re.search(rf"^def {test}\b", path.read_text(), re.MULTILINE)):
            missing.append(f"{row}: {file}::{test}")
    assert missing == []
