"""The conformance corpus: documented request/response samples, loaded and compared (see README.md).

A fixture is one YAML file holding one sample: the request (method, path relative to the service
root, headers, body), the response (status, the headers that matter, body), the rows the sandbox
must hold first (`setup`), and the client call that makes the request and what it must return
(`client`). Placeholders written as the documentation writes them (`[Organization URI]`,
`[tenant]`, …) are replaced by the values of the side under test (`services.py`).

Two comparisons live here: `request_differences` (does a client's request say what the sample
says) and `response_differences` (does the sandbox answer with the sample's shape: status,
headers present, JSON keys and types recursively, multipart parts one by one).

Example:
    >>> shape_differences({"a": [1, {"b": "x"}]}, {"a": [2.5, {"b": "y"}]})
    []
    >>> shape_differences({"a": "x"}, {"a": None, "c": 1})
    ['$: unexpected key c', '$.a: string expected, got null']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

HERE = Path(__file__).parent
MANIFEST = HERE / "manifest.yaml"
STATUSES = ("documented", "observed", "inferred")
# Request headers a client's request must carry as the sample does (the others are the sample's
# own, sent to the sandbox as they are).
_CHECKED_HEADERS = ("prefer", "if-match")
# Response headers whose value must match, not only be present.
_EXACT_HEADERS = ("odata-version", "preference-applied")
_PLACEHOLDER = re.compile(r"\[[A-Za-z&][A-Za-z &_]*\]")


# --- fixtures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A message body: JSON, form fields, or raw text with its line endings (`crlf` or `lf`)."""

    json: Any = None
    form: dict[str, str] | None = None
    text: str | None = None
    newline: str = "lf"
    present: bool = False

    @classmethod
    def of(cls, data: dict[str, Any]) -> Body:
        kinds = [k for k in ("json", "form", "text") if k in data]
        if len(kinds) > 1:
            raise ValueError(f"a body is json, form or text, not {' and '.join(kinds)}")
        newline = data.get("newline", "lf")
        if newline not in ("crlf", "lf"):
            raise ValueError(f"newline is crlf or lf, not {newline!r}")
        return cls(json=data.get("json"), form=data.get("form"), text=data.get("text"), newline=newline,
                   present=bool(kinds))

    def bytes(self) -> bytes:
        if self.text is not None:
            text = self.text.replace("\r\n", "\n")
            return (text.replace("\n", "\r\n") if self.newline == "crlf" else text).encode()
        if self.form is not None:
            from urllib.parse import urlencode
            return urlencode(self.form).encode()
        if self.present:
            return json.dumps(self.json).encode()
        return b""


@dataclass(frozen=True)
class Message:
    """A request (`method`, `path`) or a response (`status`, `partial`) of a fixture."""

    headers: dict[str, str]
    body: Body
    method: str = ""
    path: str = ""
    status: int = 0
    partial: bool = False  # the documentation abbreviates the sample ("truncated for brevity")

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class Fixture:
    """One sample, as its YAML file and its manifest entry describe it."""

    id: str
    service: str
    file: Path
    request: Message
    response: Message
    client: dict[str, Any]
    setup: list[dict[str, Any]] = field(default_factory=list)
    sandbox: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def resolved(self, values: dict[str, str]) -> Fixture:
        """The fixture with its placeholders replaced by `values`."""
        return _build(self.id, self.service, self.file, substitute(self.raw, values))


def substitute(data: Any, values: dict[str, str]) -> Any:
    """`data` with every `[Placeholder]` in its strings replaced (unknown ones are left as they are).

    >>> substitute({"p": "[Organization URI]/x", "n": 1}, {"[Organization URI]": "https://o"})
    {'p': 'https://o/x', 'n': 1}
    """
    if isinstance(data, str):
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), data)
    if isinstance(data, dict):
        return {substitute(k, values): substitute(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute(v, values) for v in data]
    return data


def _message(data: dict[str, Any], *, request: bool) -> Message:
    headers = {str(k): str(v) for k, v in (data.get("headers") or {}).items()}
    body = Body.of(data)
    if request:
        return Message(headers, body, method=str(data["method"]).upper(), path=str(data["path"]))
    return Message(headers, body, status=int(data["status"]), partial=bool(data.get("partial", False)))


def _build(fixture_id: str, service: str, file: Path, raw: dict[str, Any]) -> Fixture:
    unknown = set(raw) - {"request", "response", "client", "setup", "sandbox"}
    if unknown:
        raise ValueError(f"{file.name}: unknown keys {sorted(unknown)}")
    return Fixture(id=fixture_id, service=service, file=file, request=_message(raw["request"], request=True),
                   response=_message(raw["response"], request=False), client=dict(raw["client"]),
                   setup=list(raw.get("setup") or []), sandbox=dict(raw.get("sandbox") or {}), raw=raw)


def manifest() -> list[dict[str, Any]]:
    """The manifest's entries."""
    return list(yaml.safe_load(MANIFEST.read_text())["fixtures"])


def load(entry: dict[str, Any]) -> Fixture:
    """The fixture a manifest entry names."""
    file = HERE / entry["file"]
    return _build(entry["id"], entry["service"], file, yaml.safe_load(file.read_text()))


def fixtures() -> dict[str, Fixture]:
    """Every fixture of the manifest, by id."""
    return {e["id"]: load(e) for e in manifest()}


# --- JSON shapes --------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def shape_differences(expected: Any, actual: Any, path: str = "$", *, partial: bool = False) -> list[str]:
    """Where `actual` has another shape than `expected`: other JSON types, other keys (recursively;
    with `partial`, more keys are allowed), an empty array where the sample has items, or items of
    another shape than the sample's."""
    kind, got = _kind(expected), _kind(actual)
    if kind != got:
        return [f"{path}: {kind} expected, got {got}"]
    if kind == "object":
        out = [f"{path}: missing key {k}" for k in expected if k not in actual]
        if not partial:
            out += [f"{path}: unexpected key {k}" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += shape_differences(expected[k], actual[k], f"{path}.{k}", partial=partial)
        return out
    if kind == "array":
        if bool(expected) != bool(actual):
            return [f"{path}: {'items' if expected else 'no items'} expected, got {len(actual)}"]
        out = []
        for i, item in enumerate(actual):
            # an item matches when it has the shape of one of the sample's items
            tries = [shape_differences(e, item, f"{path}[{i}]", partial=partial) for e in expected]
            out += [] if any(not t for t in tries) else min(tries, key=len)
        return out
    return []


# --- multipart (both services' $batch) ---------------------------------------------------------------


@dataclass
class HttpPart:
    """One HTTP message inside a batch: a request line or a status line, headers, body."""

    start: str  # "POST /api/data/v9.2/accounts" or "204"
    headers: dict[str, str]
    body: bytes
    content_id: str | None

    def json(self) -> Any:
        text = self.body.strip()
        return json.loads(text) if text else None


Item = HttpPart | list[HttpPart]  # a part, or a change set's parts

_LINE = re.compile(rb"\r?\n")
_BLANK = re.compile(rb"\r?\n\r?\n")


def _head(block: bytes) -> tuple[dict[str, str], bytes]:
    found = _BLANK.search(block)
    head, rest = (block, b"") if found is None else (block[:found.start()], block[found.end():])
    headers = {}
    for line in _LINE.split(head):
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def boundary_of(content_type: str) -> str:
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if found is None:
        raise ValueError(f"no boundary in {content_type!r}")
    return found.group(1)


def multipart(content_type: str, body: bytes) -> list[Item]:
    """The items of a multipart/mixed batch body (CRLF or LF line endings)."""
    delimiter = b"--" + boundary_of(content_type).encode()
    items: list[Item] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        headers, payload = _head(chunk.lstrip(b"\r\n"))
        ctype = headers.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            inner = multipart(ctype, payload)
            items.append([i for i in inner if isinstance(i, HttpPart)])
            continue
        first, *rest = _LINE.split(payload.lstrip(b"\r\n"), maxsplit=1)
        after = rest[0] if rest else b""
        found = _LINE.match(after)  # no header lines: the body follows the blank line at once
        inner_headers, inner_body = ({}, after[found.end():]) if found else _head(after)
        words = first.decode("latin-1").split()
        line = words[1] if words and words[0].startswith("HTTP/") else " ".join(words[:2])
        items.append(HttpPart(line, inner_headers, inner_body.rstrip(b"\r\n"), headers.get("content-id")))
    return items


# --- requests -------------------------------------------------------------------------------------------


def _relative(url: str, root: str) -> tuple[str, list[tuple[str, str]]]:
    """A URL (absolute, host-relative or relative) as (path under the service root, query pairs)."""
    root_path = urlsplit(root).path
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme or path.startswith("/"):
        api = root_path if path.startswith(root_path) else "/" + root_path.split("/", 2)[-1]
        path = path[len(api):] if path.startswith(api) else path
    return path.lstrip("/"), sorted(parse_qsl(parts.query, keep_blank_values=True))


def _preferences(value: str | None) -> set[str]:
    return {p.strip().replace('"', "") for p in (value or "").split(",") if p.strip()}


def request_differences(expected: Message, method: str, url: str, headers: dict[str, str], body: bytes,
                        root: str) -> list[str]:
    """How a client's request differs from the sample's, in what the sample says."""
    out = []
    if method != expected.method:
        out.append(f"method {method}, the sample sends {expected.method}")
    want, got = _relative(root + expected.path, root), _relative(url, root)
    if want != got:
        out.append(f"URL {got}, the sample sends {want}")
    sent = {k.lower(): v for k, v in headers.items()}
    for name in _CHECKED_HEADERS:
        mine, theirs = sent.get(name), expected.header(name)
        same = _preferences(mine) == _preferences(theirs) if name == "prefer" else mine == theirs
        if not same:
            out.append(f"header {name}: {mine!r}, the sample sends {theirs!r}")
    if expected.body.present:
        out += _body_differences(expected, sent.get("content-type", ""), body, root)
    elif body:
        out.append("a body, the sample sends none")
    return out


def _body_differences(expected: Message, content_type: str, body: bytes, root: str) -> list[str]:
    if expected.body.form is not None:
        # every field of the sample, as the sample has it; a client may add its own (msal: client_info)
        got = dict(parse_qsl(body.decode()))
        wrong = {k: got.get(k) for k, v in expected.body.form.items() if got.get(k) != v}
        return [f"form fields {wrong}, the sample sends {expected.body.form}"] if wrong else []
    if expected.body.text is not None:
        want = multipart(expected.header("content-type") or "", expected.body.bytes())
        return _items_sent(want, multipart(content_type, body), root)
    try:
        got = json.loads(body)
    except ValueError:
        return [f"a body that is not JSON: {body[:80]!r}"]
    return [] if got == expected.body.json else [f"JSON {got}, the sample sends {expected.body.json}"]


def _paired(want: list[Item], got: list[Item]) -> tuple[list[tuple[str, HttpPart, HttpPart]], list[str]]:
    """The parts of two batch bodies side by side, or how their grouping into change sets differs."""
    if len(want) != len(got):
        return [], [f"{len(got)} batch items, the sample has {len(want)}"]
    pairs, problems = [], []
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        ws, gs = (w if isinstance(w, list) else [w]), (g if isinstance(g, list) else [g])
        if isinstance(w, list) != isinstance(g, list) or len(ws) != len(gs):
            problems.append(f"batch item {i}: another grouping into change sets than the sample's")
            continue
        pairs += [(f"batch item {i}.{j}: ", wp, gp) for j, (wp, gp) in enumerate(zip(ws, gs, strict=True))]
    return pairs, problems


def _items_sent(want: list[Item], got: list[Item], root: str) -> list[str]:
    pairs, out = _paired(want, got)
    for where, wp, gp in pairs:
        wm, _, wu = wp.start.partition(" ")
        gm, _, gu = gp.start.partition(" ")
        if (wm, _relative(wu, root)) != (gm, _relative(gu, root)):
            out.append(f"{where}{gm} {gu}, the sample sends {wm} {wu}")
        if wp.content_id and wp.content_id != gp.content_id:
            out.append(f"{where}Content-ID {gp.content_id}, the sample sends {wp.content_id}")
        if wp.json() != gp.json():
            out.append(f"{where}body {gp.json()}, the sample sends {wp.json()}")
    return out


# --- responses ------------------------------------------------------------------------------------------


def response_differences(expected: Message, status: int, headers: dict[str, str], body: bytes) -> list[str]:
    """How an answer differs from the sample's shape."""
    out = []
    if status != expected.status:
        out.append(f"status {status}, the sample has {expected.status}")
    got = {k.lower(): v for k, v in headers.items()}
    out += _header_differences(expected.headers, got, "")
    if expected.body.text is not None:
        want = multipart(expected.header("content-type") or "", expected.body.bytes())
        try:
            items = multipart(got.get("content-type", ""), body)
        except ValueError as exc:
            return [*out, f"not a multipart answer: {exc}"]
        return out + _items_answered(want, items, expected.partial)
    if expected.body.present:
        try:
            data = json.loads(body)
        except ValueError:
            return [*out, f"a body that is not JSON: {body[:120]!r}"]
        return out + shape_differences(expected.body.json, data, partial=expected.partial)
    return out + ([f"a body, the sample has none: {body[:120]!r}"] if body.strip() else [])


def _header_differences(expected: dict[str, str], got: dict[str, str], where: str) -> list[str]:
    out = []
    for name, value in expected.items():
        key = name.lower()
        if key in ("content-length", "content-transfer-encoding"):
            continue
        if key not in got:
            out.append(f"{where}header {name} missing")
        elif key == "content-type" and got[key].split(";")[0].strip() != value.split(";")[0].strip():
            out.append(f"{where}Content-Type {got[key]!r}, the sample has {value!r}")
        elif key in _EXACT_HEADERS and got[key] != value:
            out.append(f"{where}header {name}: {got[key]!r}, the sample has {value!r}")
    return out


def _items_answered(want: list[Item], got: list[Item], partial: bool) -> list[str]:
    pairs, out = _paired(want, got)
    for where, wp, gp in pairs:
        if wp.start != gp.start:
            out.append(f"{where}status {gp.start}, the sample has {wp.start}")
        out += _header_differences(wp.headers, gp.headers, where)
        out += [where + d for d in shape_differences(wp.json(), gp.json(), partial=partial)]
    return out
