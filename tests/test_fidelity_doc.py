"""docs/fidelity.md: every test and conformance fixture a row names as pinning its behaviour exists."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import yaml

from dwlib import doctor

ROOT = Path(__file__).resolve().parents[1]
# `tests/x/test_y.py::test_z`, `test_y.py::test_z`, `::test_z` (in the file named before it), `test_y.py`
REFERENCE = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w+))?")
# `tests/conformance` `finops/query-paging` (or a pattern, `dataverse/error-*`): fixtures of the corpus
FIXTURE = re.compile(r"`((?:entra|dataverse|finops|dmf|gateway)/[\w*-]+)`")


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


def test_every_pinning_fixture_is_in_the_corpus() -> None:
    manifest = yaml.safe_load((ROOT / "tests" / "conformance" / "manifest.yaml").read_text())
    ids = [f["id"] for f in manifest["fixtures"]]
    named = FIXTURE.findall((ROOT / "docs" / "fidelity.md").read_text())
    assert len(named) > 30
    assert [n for n in named if not fnmatch.filter(ids, n)] == []


def test_every_row_to_verify_names_doctor_reads_and_every_doctor_read_verifies_a_row() -> None:
    text = (ROOT / "docs" / "fidelity.md").read_text()
    section = text[text.index("## To verify on a real environment"):]
    ids = {r.id for r in doctor.READS}
    named: set[str] = set()
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) > 10
    for row in rows:
        cell = [c.strip() for c in row.strip().strip("|").split("|")][2]
        if cell.startswith("none read-only"):
            continue
        reads = re.findall(r"`((?:dataverse|finops|dmf)-[\w<>-]+)`", cell)
        assert reads, f"no doctor read named: {row[:80]}"
        for read in reads:
            pattern = re.sub(r"<\w+>", r"[\\w]+", read)
            found = {i for i in ids if re.fullmatch(pattern, i)}
            assert found, f"{read} is no read of dwlib/doctor.py"
            named |= found
    assert sorted(ids - named) == []
