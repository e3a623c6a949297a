"""The manifest and the fixture files agree: every file listed once, every entry complete."""

from __future__ import annotations

from collections import Counter

import corpus
from services import SERVICES

REQUIRED = ("id", "file", "service", "source", "status", "parses")


def test_every_fixture_file_is_listed_once_and_every_listed_file_exists() -> None:
    entries = corpus.manifest()
    listed = Counter(e["file"] for e in entries)
    assert [f for f, n in listed.items() if n > 1] == []
    on_disk = {str(p.relative_to(corpus.HERE)) for p in (corpus.HERE / "fixtures").rglob("*") if p.is_file()}
    assert sorted(on_disk - set(listed)) == [], "fixture files the manifest does not list"
    assert sorted(set(listed) - on_disk) == [], "manifest entries without their file"


def test_every_entry_is_complete_and_consistent() -> None:
    entries = corpus.manifest()
    ids = Counter(e["id"] for e in entries)
    assert [i for i, n in ids.items() if n > 1] == []
    for entry in entries:
        missing = [k for k in REQUIRED if not entry.get(k)]
        assert missing == [], f"{entry.get('id')}: {missing}"
        assert entry["status"] in corpus.STATUSES, f"{entry['id']}: status {entry['status']!r}"
        assert entry["service"] in SERVICES, f"{entry['id']}: service {entry['service']!r}"
        assert entry["file"] == f"fixtures/{entry['id']}.yaml", f"{entry['id']}: file {entry['file']}"
        assert entry["id"].split("/")[0] == entry["service"], f"{entry['id']}: not under its service"
        fixture = corpus.load(entry)
        assert fixture.client["call"] == entry["parses"], f"{entry['id']}: parses {entry['parses']}"
        assert set(fixture.client["expect"]) & {"returns", "raises"}, f"{entry['id']}: no expect"
        for other in fixture.client.get("also") or []:
            assert other in ids, f"{entry['id']}: also {other} is not in the manifest"
