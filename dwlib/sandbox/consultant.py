"""A stand-in for the consultant: does what a portal gate's instruction says, on a local sandbox.

The runbook shows each portal-only action as an instruction (title, numbered steps, links, what
is verified) and can hand it to a gate command as JSON. `dw sandbox consultant` is such a
command: it reads the instruction and performs it through the sandbox's portal endpoints
(`/_portal/…`, docs/sandbox.md), as a person clicking in LCS and the dual-write workspace would.
The instruction texts are those of `dwlib.clients.dualwrite.PortalAdmin`; an instruction it does
not recognise is refused, so a new gate cannot pass silently.

Example:
    >>> parse_codes("On the Legal entities tab select Add legal entity and add USMF, GBSI.",
    ...             "add legal entity and add ")
    ['USMF', 'GBSI']

    perform(connection, {"title": "Set up the Power Platform integration (LCS)", "steps": [], ...})
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dwlib import catalog
from dwlib.errors import SandboxError

from . import control

_DEFAULT_STEP = re.compile(r"^Column (\S+): .* choose Default, enter the value '(.*)'; select OK\.$")


def parse_codes(text: str, after: str) -> list[str]:
    """The comma-separated names that follow `after` in `text` (case-insensitive), up to a `;` or `.`."""
    at = text.lower().index(after.lower()) + len(after)
    rest = text[at:].split(";", 1)[0].rstrip(". ")
    return [c.strip() for c in rest.split(",") if c.strip()]


def _step(steps: Sequence[str], contains: str) -> str:
    for s in steps:
        if contains.lower() in s.lower():
            return s
    raise SandboxError(f"the instruction has no step mentioning {contains!r}")


def _map_id(name: str) -> str:
    return catalog.table_map(name).id


def actions(instruction: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The portal calls `(method, path, body)` that carry out `instruction`.

    >>> actions({"title": "Stop table maps Customers V3 (accounts)", "steps": []})
    [('POST', '/dualwrite/maps/customers-v3-accounts/stop', None)]
    >>> actions({"title": "Remove legal entities from the dual-write connection",
    ...          "steps": ["On the Legal entities tab remove DAT, USMF (not in legal_entities), then Save."]})
    [('DELETE', '/dualwrite/legal-entities/DAT', None), ('DELETE', '/dualwrite/legal-entities/USMF', None)]
    """
    # A runbook in another language keeps the English instruction, which this reads, under `en`.
    english: Mapping[str, Any] = instruction.get("en") or instruction
    title: str = english["title"]
    steps: list[str] = list(english.get("steps") or [])
    if title.startswith("Set up the Power Platform integration"):
        return [("POST", "/lcs/power-platform-integration", None)]
    if title.startswith("Configure dual-write and link"):
        codes = parse_codes(_step(steps, "keep these legal entities:"), "keep these legal entities:")
        return [("POST", "/lcs/dual-write/configure", None),
                ("POST", "/lcs/dual-write/link", {"legal_entities": codes})]
    if title.startswith("Add legal entities"):
        codes = parse_codes(_step(steps, "add legal entity and add"), "add legal entity and add ")
        skip = _step(steps, "skip initial writes").startswith("Select")
        return [("POST", "/dualwrite/legal-entities", {"add": codes, "skip_initial_writes": skip})]
    if title.startswith("Remove legal entities"):
        step = _step(steps, "tab remove ")
        codes = parse_codes(step.split(" (", 1)[0], "tab remove ")
        return [("DELETE", f"/dualwrite/legal-entities/{code}", None) for code in codes]
    if title == "Reset the dual-write link":
        step = _step(steps, "on select legal entities select")
        codes = parse_codes(step, "on select legal entities select ")
        return [("POST", "/dualwrite/reset", {"legal_entities": codes}),
                ("POST", "/dualwrite/apply-solution", None)]
    if title.startswith("Run table map"):
        selected = _step(steps, "Select '").split("'")[1]
        order = _step(steps, "in this order:").split(": ", 1)[1].rstrip(".").split(" → ")
        text = " ".join(steps)
        return [("POST", f"/dualwrite/maps/{_map_id(selected)}/run",
                 {"related": [n for n in order if n != selected],
                  "initial_sync": "keep Initial Sync selected" in text,
                  "master": "finops" if "Finance and Operations apps" in text else "dataverse"})]
    if title.startswith("Set default values of table map "):
        name = title.removeprefix("Set default values of table map ")
        defaults = {m[1]: m[2] for s in steps if (m := _DEFAULT_STEP.match(s))}
        return [("PATCH", f"/dualwrite/maps/{_map_id(name)}", {"defaults": defaults})]
    for verb in ("Stop", "Pause", "Resume"):
        if title.startswith(f"{verb} table maps "):
            names = parse_codes(title, f"{verb} table maps ")
            return [("POST", f"/dualwrite/maps/{_map_id(n)}/{verb.lower()}", None) for n in names]
    raise SandboxError(f"the sandbox consultant does not know how to do: {title!r}")


def perform(connection: Mapping[str, Any], instruction: Mapping[str, Any]) -> list[str]:
    """Carry out `instruction` on the sandbox of `connection`; returns one line per portal call."""
    base = str(connection["dataverse_url"]).rsplit("/", 1)[0]
    headers = {"X-Sandbox-Admin": Path(connection["admin_key_file"]).read_text().strip()}
    done = []
    with control.http_client(dict(connection), timeout=120) as http:
        for method, path, body in actions(instruction):
            r = http.request(method, f"{base}/_portal{path}", headers=headers, json=body)
            if r.status_code >= 300:
                try:
                    message = r.json().get("error", r.text)
                except ValueError:
                    message = r.text
                raise SandboxError(f"the portal refused {method} {path}: {r.status_code} {message}")
            done.append(f"{method} /_portal{path}" + (f" {body}" if body else ""))
    return done


def play(payload: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """Perform the gate `payload` (the runbook's JSON: instruction, sandbox_dir, …) on the sandbox in
    `root` (default: the payload's `sandbox_dir`)."""
    where = root or (Path(payload["sandbox_dir"]) if payload.get("sandbox_dir") else None)
    if where is None:
        raise SandboxError("no sandbox to act on: pass --dir, or run with parameters that name sandbox.dir")
    connection = control.read_connection(where)
    if connection is None:
        raise SandboxError(f"no running sandbox in {where}: start it with dw sandbox start --dir {where}")
    return perform(connection, payload["instruction"])
