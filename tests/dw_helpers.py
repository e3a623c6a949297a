"""Test helpers shared across test folders.

A seeded runtime (no server), async runs, a consultant playing the portal, and library
sessions for a running sandbox.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from dwlib.clients import HttpConfig, Session, TokenProvider, connect, make_client, scope_for
from dwlib.params import Params, load_params
from dwlib.sandbox import control, profiles
from dwlib.sandbox.dualwrite import DualWrite
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.state import Settings
from dwlib.sandbox.store import Store

MakeRuntime = Callable[..., DualWrite]
JWT = re.compile(rb"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.")  # an access token, in any output


def leaks(data: bytes, secrets: Iterable[str]) -> list[str]:
    """What `data` (bytes something wrote) gives away: any of `secrets`, any access token (JWT)."""
    found = [f"secret {s[:4]}…" for s in secrets if s and s.encode() in data]
    return found + [f"token {m.group()[:12]!r}…" for m in JWT.finditer(data)]


PARAMS = Path(__file__).resolve().parents[1] / "params"
COMPANIES_MAP = "Legal entities (cdm_companies)"  # the map that brings the companies to Dataverse


def runtime_factory(tmp_path: Path) -> MakeRuntime:
    """`make(profile, rows=12, link=True)`: a seeded store and its dual-write runtime.

    With `link`, Power Platform integration is set up and dual-write configured and linked for
    every F&O legal entity, and the Legal entities (cdm_companies) map has run its initial sync,
    which brings the companies to Dataverse (linking does not); no other map is started. 12 rows
    keep the seeded defects (double quotes in names) out, so tests add the defects they are about.
    """
    count = 0

    def make(profile: str = "existing-new", rows: int = 12, *, link: bool = True) -> DualWrite:
        nonlocal count
        count += 1
        store = Store(tmp_path / f"state{count}.sqlite")
        settings = Settings(profile=profile, rows=rows)
        profiles.seed(store, settings)
        rt = DualWrite(store, settings, "https://127.0.0.1:1")
        if link:
            rt.setup_power_platform_integration()
            rt.configure()
            rt.link(start_maps=False)
            run_maps(rt, [COMPANIES_MAP])
        return rt

    return make


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on a fresh event loop (the runtime spawns its jobs on the running loop)."""
    return asyncio.run(coro)


def run_maps(rt: DualWrite, names: list[str], **kwargs: Any) -> dict[str, Any]:
    """Run the maps `names` on the runtime, wait until idle, and return the finished request."""
    async def go() -> dict[str, Any]:
        req = rt.run(names, **kwargs)
        await rt.idle()
        return rt.request(req["requestId"])

    return run_async(go())


def company_id(rt: DualWrite, code: str) -> str:
    """The `cdm_companyid` of the company `code` in the runtime's store."""
    (row,) = rt.store.find(ENTITIES["cdm_companies"], {"cdm_companycode": code})
    return row["cdm_companyid"]


def default_transforms(mapping: str) -> dict[str, Any]:
    """Source field → Default value of the two-sided column rows of an `msdyn_mapping` JSON (read
    the way Dual-write-automations reads it: `entityMappingTasks[0].legs[0].fieldMappings`)."""
    fields = json.loads(mapping)["entityMappingTasks"][0]["legs"][0]["fieldMappings"]
    return {f["sourceField"]: t["defaultValue"] for f in fields if f["sourceField"] and f["destinationField"]
            for t in f["valueTransforms"] if t["transformType"] == "Default"}


class Consultant:
    """Plays the consultant against a running sandbox: portal clicks, and reads with tokens."""

    def __init__(self, connection: dict[str, Any]) -> None:
        self.connection = connection
        self.http = control.http_client(connection, timeout=30)
        self.base = connection["dataverse_url"].rsplit("/", 1)[0]
        self.admin = {"X-Sandbox-Admin": Path(connection["admin_key_file"]).read_text().strip()}
        self._tokens: dict[str, str] = {}

    def portal(self, method: str, path: str, body: dict[str, Any] | None = None, *, expect: int = 200) -> Any:
        r = self.http.request(method, f"{self.base}/_portal{path}", headers=self.admin, json=body)
        assert r.status_code == expect, r.text
        return r.json()

    def _auth(self, resource: str) -> dict[str, str]:
        if resource not in self._tokens:
            self._tokens[resource] = sandbox_token(self.connection, resource)
        return {"Authorization": f"Bearer {self._tokens[resource]}"}

    def fo(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.request(
            method, f"{self.connection['finops_url']}/data/{path}", headers=self._auth("finops"), json=body
        )

    def dv(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.request(
            method,
            f"{self.connection['dataverse_url']}/api/data/v9.2/{path}",
            headers=self._auth("dataverse"),
            json=body,
        )

    def dv_rows(self, path: str) -> list[dict[str, Any]]:
        r = self.dv("GET", path)
        assert r.status_code == 200, r.text
        return r.json()["value"]

    def fo_rows(self, path: str) -> list[dict[str, Any]]:
        r = self.fo("GET", path)
        assert r.status_code == 200, r.text
        return r.json()["value"]

    def close(self) -> None:
        self.http.close()


def run_companies_map(c: Consultant, timeout_s: float = 30) -> None:
    """Run the Legal entities (cdm_companies) map with its initial sync, through the portal, and
    wait until it runs: linking creates no company in Dataverse, this map does."""
    c.portal("POST", "/dualwrite/maps/legal-entities/run", {"initial_sync": True, "master": "finops"})
    deadline = time.monotonic() + timeout_s
    while c.portal("GET", "/dualwrite/maps/legal-entities")["state"] != "Running":
        assert time.monotonic() < deadline, "the Legal entities map did not reach Running"
        time.sleep(0.05)


def stamp(c: Consultant, account: str, code: str) -> Any:
    """Give an existing Dataverse account its company (what the bootstrap does): live sync to F&O."""
    (company,) = c.dv_rows(f"cdm_companies?$filter=cdm_companycode eq '{code}'&$select=cdm_companyid")
    return c.dv("PATCH", f"accounts({account})",
                {"msdyn_company@odata.bind": f"/cdm_companies({company['cdm_companyid']})"})


def perform_map_gate(consultant: Consultant, steps: list[str], title: str) -> bool:
    """Do a table-map gate of `PortalAdmin` (Run, Stop, Pause, Resume, column defaults) through the
    sandbox portal, as its instruction (`title`, `steps`) says; False when it is not a map gate."""
    from dwlib import catalog
    from dwlib.sandbox.consultant import actions

    if title.startswith("Set default values of table map "):
        for method, path, body in actions({"title": title, "steps": steps}):
            consultant.portal(method, path, body)
        return True
    if title.startswith("Run table map"):
        selected = next(s for s in steps if s.startswith("Select '")).split("'")[1]
        order = next(s for s in steps if s.startswith("Keep these maps")).split(": ", 1)[1]
        related = [n for n in order.rstrip(".").split(" → ") if n != selected]
        master = "finops" if "Finance and Operations apps" in " ".join(steps) else "dataverse"
        initial = any("keep Initial Sync selected" in s for s in steps)
        consultant.portal("POST", f"/dualwrite/maps/{catalog.table_map(selected).id}/run",
                          {"related": related, "initial_sync": initial, "master": master})
        return True
    verb = title.split()[0].lower()
    if verb not in ("stop", "pause", "resume") or "table maps " not in title:
        return False
    for name in title.split("table maps ", 1)[1].split(", "):
        consultant.portal("POST", f"/dualwrite/maps/{catalog.table_map(name).id}/{verb}")
    return True


def run_basics(profile: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What parameters of `profile` must say besides the sandbox and what a test `given` says itself,
    from the project's params/sandbox-<profile>.yaml: the legal entities in scope (an existing F&O
    links every one, so the file names those to keep) and the companies the scenario creates (those
    of them in the legal entities in effect)."""
    own = yaml.safe_load((PARAMS / f"sandbox-{profile}.yaml").read_text(encoding="utf-8"))
    given = given or {}
    out: dict[str, Any] = {}
    if "legal_entities" not in given and "legal_entities" in own:
        out["legal_entities"] = own["legal_entities"]
    codes = set(given.get("legal_entities", own.get("legal_entities", [])))
    kept = [c for c in own.get("companies", []) if c["code"] in codes]
    if "companies" not in given and kept:
        out["companies"] = kept
    return out


def sandbox_params(connection: dict[str, Any], **overrides: Any) -> Params:
    """Parameters that name the sandbox directory and the run's basics (`run_basics`), as
    params/sandbox-*.yaml do; `overrides` as for `load_params`, e.g. `**{"auth.method": "certificate"}`."""
    profile = connection["profile"]
    base = {"scenario": profile, "sandbox": {"dir": connection["state_dir"]}, **run_basics(profile)}
    return load_params(base, overrides)


def session_for(connection: dict[str, Any], **auth: Any) -> Session:
    """The library's clients for a running sandbox (app credentials, or `method="device_code"`)."""
    params = sandbox_params(connection, **{f"auth.{k}": v for k, v in auth.items()})
    return connect(params, device_prompt=lambda message: None)


def sandbox_token(connection: dict[str, Any], resource: str = "dataverse", credential: str = "secret", *,
                  token_cache: Path | None = None) -> str:
    """An access token from a running sandbox, signed in the library's way (`dwlib.clients.auth`).

    `resource` is "dataverse", "finops" or a URL; `credential` "secret" or "certificate"; msal's
    cache goes to `token_cache` (default: under `XDG_CACHE_HOME`, which test fixtures point at a
    temporary directory).
    """
    method = {"secret": "client_secret", "certificate": "certificate"}[credential]
    overrides: dict[str, Any] = {"auth.method": method}
    if token_cache is not None:
        overrides["auth.token_cache"] = str(token_cache)
    params = sandbox_params(connection, **overrides)
    with make_client(HttpConfig.from_params(params)) as http:
        tokens = TokenProvider.from_params(params, http)
        return tokens.token(scope_for(connection.get(f"{resource}_url", resource)))


# Debian's Chromium (installed by .ci/run), driven by Playwright: its own browser download cannot
# reach its CDN here.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser from a `sync_playwright()` context (close it when done). The
    browser tests are part of `make test`: without Chromium they fail, saying how to install it."""
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
