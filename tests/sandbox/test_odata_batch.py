"""`$batch` for both services: parsing, dispatch, change sets, Content-ID references, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx

from .conftest import Part, PartResponse, Service, batch_body, parse_batch

API = "/dataverse/api/data/v9.2/"


def _send(
    svc: Service, items: list[Any], *, prefer: str | None = None, token: str | None = None
) -> httpx.Response:
    ctype, body = batch_body(items)
    headers = {"Content-Type": ctype}
    if prefer:
        headers["Prefer"] = prefer
    return svc.post("$batch", content=body, headers=headers, token=token)


def _names(dv: Service) -> list[str]:
    return sorted(a["name"] for a in dv.get("accounts?$select=name").json()["value"])


def _account(name: str, cid: str | None = None, url: str = "accounts") -> Part:
    return Part("POST", url, json.dumps({"name": name}), cid)


def test_change_set_and_get_with_the_documented_response_shape(dv: Service) -> None:
    r = _send(dv, [[_account("A", "1"), _account("Bäckerei Müller", "2")],
                   Part("GET", f"{API}accounts?$select=name&$orderby=name")])
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/mixed; boundary=batchresponse_")
    text = r.content.decode()
    assert "\n" not in text.replace("\r\n", "")  # CRLF only
    assert "Content-Type: multipart/mixed; boundary=changesetresponse_" in text
    assert "HTTP/1.1 204 No Content\r\n" in text and "OData-EntityId: " in text
    parts = parse_batch(r)
    shape = [(p.status, p.content_id, p.change_set) for p in parts]
    assert shape == [(204, "1", 0), (204, "2", 0), (200, None, None)]
    assert [v["name"] for v in json.loads(parts[2].body)["value"]] == ["A", "Bäckerei Müller"]
    assert parts[2].headers["content-type"] == "application/json; odata.metadata=minimal"


def test_failing_part_rolls_back_its_change_set(dv: Service) -> None:
    bad = Part("POST", "accounts", json.dumps({"name": "C", "colour": "red"}), "2")
    r = _send(dv, [[_account("A", "1"), bad]])
    assert r.status_code == 400
    (only,) = parse_batch(r)  # the change set answers with the one error
    assert only.status == 400 and only.content_id == "2"
    assert "colour" in json.loads(only.body)["error"]["message"]
    assert "req_id" in only.headers
    assert _names(dv) == []


def test_stop_at_first_error_unless_continue_on_error(dv: Service) -> None:
    bad = Part("POST", "accounts", json.dumps({"colour": "red"}))
    r = _send(dv, [bad, _account("after")])
    assert r.status_code == 400 and [p.status for p in parse_batch(r)] == [400]
    assert _names(dv) == []
    r = _send(dv, [bad, _account("after")], prefer="odata.continue-on-error")
    assert r.status_code == 200 and r.headers["Preference-Applied"] == "odata.continue-on-error"
    assert [p.status for p in parse_batch(r)] == [400, 204]
    assert _names(dv) == ["after"]


def test_content_id_references_in_url_and_bind(dv: Service) -> None:
    contact = Part("POST", "contacts",
                   json.dumps({"lastname": "L", "parentcustomerid_account@odata.bind": "$1"}), "2")
    rename = Part("PATCH", "$1", json.dumps({"name": "renamed"}), "3")
    r = _send(dv, [[_account("A", "1"), contact, rename]])
    assert [p.status for p in parse_batch(r)] == [204, 204, 204]
    account = dv.get("accounts?$select=name").json()["value"][0]
    assert account["name"] == "renamed"
    linked = dv.get("contacts?$select=_parentcustomerid_value").json()["value"][0]
    assert linked["_parentcustomerid_value"] == account["accountid"]


def test_undeclared_content_id_reference(dv: Service) -> None:
    r = _send(dv, [[_account("A", "1"), Part("PATCH", "$2", json.dumps({"name": "x"}))]])
    (only,) = parse_batch(r)
    assert json.loads(only.body)["error"]["message"] == (
        "Content-ID Reference: '$2' does not exist in the batch context.")
    r = _send(dv, [[Part("POST", "contacts", json.dumps({"parentcustomerid_account@odata.bind": "$9"}))]])
    assert "'$9' does not exist" in json.loads(parse_batch(r)[0].body)["error"]["message"]
    assert _names(dv) == []


def test_get_is_not_allowed_in_a_change_set(dv: Service) -> None:
    r = _send(dv, [[_account("A"), Part("GET", "accounts")]])
    (only,) = parse_batch(r)
    assert only.status == 400 and "GET" in json.loads(only.body)["error"]["message"]
    assert _names(dv) == []


def test_part_urls_absolute_host_relative_and_service_relative(dv: Service) -> None:
    urls = [f"{dv.root}accounts", f"{API}accounts", "/api/data/v9.2/accounts", "accounts"]
    r = _send(dv, [_account(str(i), url=u) for i, u in enumerate(urls)])
    assert [p.status for p in parse_batch(r)] == [204] * 4
    assert _names(dv) == ["0", "1", "2", "3"]
    r = _send(dv, [_account("x", url="/finops/data/CustomerGroups")])
    assert r.status_code == 400
    assert "not under the service root" in json.loads(parse_batch(r)[0].body)["error"]["message"]


def test_limits_and_malformed_batches(dv: Service) -> None:
    r = _send(dv, [_account(str(i)) for i in range(1001)])
    assert r.status_code == 400 and "at most 1000" in r.json()["error"]["message"]
    assert _names(dv) == []
    r = dv.post("$batch", json={"requests": []})
    assert r.status_code == 400 and "multipart/mixed" in r.json()["error"]["message"]
    assert _send(dv, [_account("A")], token="").status_code == 401


def test_thousand_part_change_set(dv: Service) -> None:
    r = _send(dv, [[_account(f"n{i:04d}", str(i)) for i in range(1000)]])
    parts: list[PartResponse] = parse_batch(r)
    assert r.status_code == 200 and len(parts) == 1000 and {p.status for p in parts} == {204}
    assert len(_names(dv)) == 1000


def test_finops_batch_change_set_is_atomic(fo: Service) -> None:
    fo.post("LegalEntities", json={"LegalEntityId": "USMF", "Name": "Contoso"})
    group = Part("POST", "CustomerGroups", json.dumps({"CustomerGroupId": "10"}), "1")
    customer = Part("POST", "CustomersV3", json.dumps({"CustomerAccount": "C1", "CustomerGroupId": "10"}),
                    "2")
    orphan = Part("POST", "CustomersV3", json.dumps({"CustomerAccount": "C2", "CustomerGroupId": "99"}),
                  "3")
    r = _send(fo, [[group, customer, orphan]], prefer="odata.continue-on-error")
    (only,) = parse_batch(r)
    assert only.status == 400 and "innererror" in json.loads(only.body)["error"]
    assert fo.get("CustomerGroups").json()["value"] == []
    r = _send(fo, [[group, customer], Part("GET", "CustomersV3?$select=CustomerAccount")])
    parts = parse_batch(r)
    assert [p.status for p in parts] == [201, 201, 200]
    assert json.loads(parts[2].body)["value"][0]["CustomerAccount"] == "C1"


def _lf_only(items: list[Any], ending: str) -> tuple[str, bytes]:
    ctype, body = batch_body(items)
    return ctype, body.decode().replace("\r\n", "\n").rstrip("\n").encode() + ending.encode()


def test_an_lf_only_body_is_unreadable_unless_it_ends_with_two_line_endings(dv: Service) -> None:
    """web-api-client-errors, "Stream was not readable": Dataverse cannot read a batch body whose line
    endings are not CRLF, unless two line endings end it."""
    items = [[_account("first")], [_account("second")]]
    ctype, body = _lf_only(items, "\n")
    r = dv.post("$batch", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400
    parts = parse_batch(r)
    assert [p.status for p in parts] == [204, 400]  # the last request is the one that cannot be read
    error = json.loads(parts[-1].body)["error"]
    assert error["code"] == "0x80048d19"
    assert error["message"].startswith("Error identified in Payload provided by the user for Entity "
                                       ":'accounts', For more information")
    assert error["message"].endswith("InnerException : System.ArgumentException: Stream was not readable.")
    assert _names(dv) == ["first"]
    ctype, body = _lf_only([[_account("third")]], "\n\n")
    r = dv.post("$batch", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 200 and [p.status for p in parse_batch(r)] == [204]
    assert _names(dv) == ["first", "third"]
