"""The comparisons of the corpus catch what they must (so a passing corpus means something)."""

from __future__ import annotations

import corpus

ROOT = "https://org.example/api/data/v9.2/"
SAMPLE = corpus.Message({"Prefer": "odata.maxpagesize=2"}, corpus.Body(), method="GET",
                        path="contacts?$select=fullname&$top=3")


def test_shapes_differ_by_keys_types_and_emptiness() -> None:
    sample = {"value": [{"a": 1, "b": None}], "next": "x"}
    assert corpus.shape_differences(sample, {"value": [{"a": 2.5, "b": None}], "next": "y"}) == []
    assert corpus.shape_differences(sample, {"value": [{"a": 1, "b": None}]}) == ["$: missing key next"]
    assert corpus.shape_differences(sample, {**sample, "more": 1}) == ["$: unexpected key more"]
    assert corpus.shape_differences(sample, {**sample, "more": 1}, partial=True) == []
    assert corpus.shape_differences(sample, {"value": [{"a": "1", "b": None}], "next": "x"}) == [
        "$.value[0].a: number expected, got string"]
    assert corpus.shape_differences(sample, {"value": [], "next": "x"}) == ["$.value: items expected, got 0"]
    assert corpus.shape_differences({"v": True}, {"v": 1}) == ["$.v: boolean expected, got number"]


def test_requests_differ_by_url_preferences_and_body() -> None:
    url = ROOT + "contacts?$top=3&$select=fullname"
    assert corpus.request_differences(SAMPLE, "GET", url, {"prefer": "odata.maxpagesize=2"}, b"", ROOT) == []
    found = corpus.request_differences(SAMPLE, "GET", url, {}, b"", ROOT)
    assert found == ["header prefer: None, the sample sends 'odata.maxpagesize=2'"]
    assert corpus.request_differences(SAMPLE, "GET", ROOT + "contacts?$select=fullname",
                                      {"prefer": "odata.maxpagesize=2"}, b"", ROOT)[0].startswith("URL")
    posted = corpus.Message({}, corpus.Body.of({"json": {"name": "A"}}), method="POST", path="accounts")
    assert corpus.request_differences(posted, "POST", ROOT + "accounts", {}, b'{"name": "B"}', ROOT) == [
        "JSON {'name': 'B'}, the sample sends {'name': 'A'}"]


def test_multipart_bodies_compare_part_by_part_whatever_their_line_endings() -> None:
    text = ("--b\nContent-Type: multipart/mixed; boundary=c\n\n--c\nContent-Type: application/http\n\n"
            "HTTP/1.1 204 No Content\nOData-EntityId: x\n\n\n--c--\n--b--\n")
    sample = corpus.Message({"Content-Type": "multipart/mixed; boundary=b"},
                            corpus.Body.of({"text": text, "newline": "crlf"}), status=200)
    lf = text.replace("boundary=c", "boundary=z").replace("--c", "--z").encode()
    headers = {"content-type": "multipart/mixed; boundary=b"}
    assert corpus.response_differences(sample, 200, headers, lf) == []
    missing = lf.replace(b"OData-EntityId: x\n", b"")
    assert corpus.response_differences(sample, 200, headers, missing) == [
        "batch item 0.0: header odata-entityid missing"]
    flat = lf.replace(b"Content-Type: multipart/mixed; boundary=z\n\n--z\n", b"").replace(b"--z--\n", b"")
    assert corpus.response_differences(sample, 200, headers, flat) == [
        "batch item 0: another grouping into change sets than the sample's"]
