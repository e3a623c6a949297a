"""The services of the corpus: where each one's root is, what its placeholders stand for, which
dwlib client speaks to it, and how the sandbox authenticates a request to it.

Contract side: the client is built on an `httpx.Client` whose transport is the fixture's
`MockTransport`, at a made-up environment URL. Sandbox side: the in-process sandbox of the test.
A fixture names its service in the manifest; adding a service is adding an entry here.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msal
from corpus import Fixture

from dwlib.clients import DataverseClient, DmfClient, FinOpsClient, TokenProvider
from dwlib.clients.auth import MsalHttp, TokenCacheFile
from dwlib.clients.dualwrite import GatewayAdmin
from dwlib.sandbox import dmf_jobs
from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.dualwrite import runtime_of
from dwlib.sandbox.identity import INTEGRATOR_APP, EntraIdentity, app_principal, consultant

DATAVERSE_URL = "https://contoso.crm.dynamics.com"
FINOPS_URL = "https://contoso.operations.dynamics.com"
GATEWAY_URL = "https://projectmanagementservice.weu.gateway.prod.island.powerapps.com"
TENANT = "8eaef023-2b34-4da1-9baa-8bc8c9d6a490"
CLIENT_ID = "535fb089-9ff3-47b6-9bfb-4f1264799865"
CLIENT_SECRET = "sampleCredentials"
# A package's blob URL with its SAS (data-management-api.md: https://<baseurl_id>.blob.core.windows.net/dmf/…)
PACKAGE_URL = ("https://contosoax7.blob.core.windows.net/dmf/customers-import.zip?sv=2014-02-14&sr=b"
               "&sig=Q2VydGFpbmx5Tm90QVNpZ25hdHVyZQ%3D%3D&se=2024-06-01T10%3A00%3A00Z&sp=rw")


@dataclass(frozen=True)
class Service:
    """One service of the corpus."""

    name: str
    contract_root: str  # the service root URL on the contract side, ending in '/'
    contract_values: dict[str, str]  # placeholder → value on the contract side
    # the dwlib client over a (mock) httpx.Client, for a fixture (its placeholders resolved)
    client: Callable[[httpx.Client, Path, Fixture], Any]
    sandbox_root: Callable[[Sandbox], str]
    # placeholder → value on the sandbox side (the gateway's also puts the sandbox in the state its
    # samples describe: its paths answer only for a linked connection)
    sandbox_values: Callable[[Sandbox], dict[str, str]]
    token: Callable[[Sandbox], str | None]  # the bearer token a sandbox request carries


def _entra_client(http: httpx.Client, tmp: Path, fixture: Fixture) -> TokenProvider:
    # The secret the sample sends (a sample of a refused secret sends another one).
    form = fixture.request.body.form or {}
    secret = form.get("client_secret", CLIENT_SECRET)
    # instance discovery off, as dwlib does for an authority msal does not know: the fixture host
    # stands for login.microsoftonline.com but the transport is the fixture's.
    app = msal.ConfidentialClientApplication(
        CLIENT_ID, client_credential=secret, authority=f"https://login.microsoftonline.com/{TENANT}",
        http_client=MsalHttp(http), instance_discovery=False, token_cache=TokenCacheFile(tmp / "cache.bin"))
    return TokenProvider(app, app.token_cache)  # type: ignore[arg-type]


def _secret(sbx: Sandbox) -> str:
    return sbx.paths.client_secret.read_text().strip()


def _dataverse_values(url: str) -> dict[str, str]:
    return {"[Organization URI]": url, "[Organization Uri]": url}


def _issue(sbx: Sandbox, audience: str, *, user: bool = False) -> str:
    ident = sbx.identity
    assert isinstance(ident, EntraIdentity)
    who = consultant(sbx.settings) if user else app_principal(sbx.settings)
    return str(ident.issue(who, audience)["access_token"])


def _dmf_values(sbx: Sandbox) -> dict[str, str]:
    # The sandbox's own signed URL: ImportFromPackage refuses a package URL it did not sign.
    return {"[Finance and Operations URI]": sbx.finops_url,
            "[Package URL]": dmf_jobs.service_of(sbx).blobs.url("customers-import.zip", "rw")}


# The gateway samples' maps: one run with its initial sync (it has executions and a request), two
# with a project and no run yet (Start runs them), the others as linking leaves them.
SYNCED, CURRENCIES, TERMS = ("Legal entities (cdm_companies)", "Currencies (transactioncurrencies)",
                             "Terms of payment (msdyn_paymentterms)")
_GATEWAY_IDS = {  # placeholder → (map, field of its runtime record) on the sandbox side
    "[Legal entities template ID]": (SYNCED, "tid"), "[Legal entities project ID]": (SYNCED, "pid"),
    "[Currencies template ID]": (CURRENCIES, "tid"), "[Currencies project ID]": (CURRENCIES, "pid"),
    "[Terms template ID]": (TERMS, "tid"), "[Terms project ID]": (TERMS, "pid"),
}
GATEWAY_VALUES = {
    "[Gateway URI]": GATEWAY_URL, "[Finance and Operations host]": "contoso.operations.dynamics.com",
    "[Dataverse environment name]": "contoso.crm.dynamics.com",
    "[Connection ID]": "a9b3f1c2-5d6e-4f70-8a91-b2c3d4e5f607",
    "[Connection name]": "b1f2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d-5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
    "[Request ID]": "0f6a7c28-3b9d-4e51-a2c4-8d7e6f5a4b3c",
    **{name: f"{n:08x}-1f2e-4d3c-8b4a-5f6e7d8c9b0a" for n, name in enumerate(_GATEWAY_IDS, 1)},
}


def _gateway_values(sbx: Sandbox) -> dict[str, str]:
    """The gateway answers only for a linked connection: link the sandbox's environments (once)
    and give the samples' maps the state they describe, then name their ids."""
    rt = runtime_of(sbx)
    if rt.connection() is None:
        rt.setup_power_platform_integration()
        rt.configure()
        rt.link(start_maps=False)

        async def synced() -> None:
            rt.run([SYNCED], initial_sync=True)
            await rt.idle()

        asyncio.run(synced())
        rt.init([CURRENCIES, TERMS])
    conn = rt.connection()
    assert conn is not None
    return {"[Gateway URI]": sbx.gateway_url,
            "[Finance and Operations host]": urlsplit(sbx.finops_url).netloc,
            "[Dataverse environment name]": f"{urlsplit(sbx.dataverse_url).netloc}/dataverse",
            "[Connection ID]": conn["cid"], "[Connection name]": conn["cname"],
            "[Request ID]": rt.map_record(SYNCED)["requests"][-1],
            **{name: str(rt.map_record(m)[key]) for name, (m, key) in _GATEWAY_IDS.items()}}


def _gateway(http: httpx.Client, tmp: Path, fixture: Fixture) -> GatewayAdmin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "unsupported by Microsoft": known, and meant
        return GatewayAdmin(DataverseClient(http, DATAVERSE_URL), FinOpsClient(http, FINOPS_URL), http=http,
                            gateway_url=GATEWAY_URL)


SERVICES: dict[str, Service] = {s.name: s for s in (
    Service(
        "entra", "https://login.microsoftonline.com/",
        {"[tenant]": TENANT, "[client_id]": CLIENT_ID, "[client_secret]": CLIENT_SECRET,
         "[authority host]": "https://login.microsoftonline.com", **_dataverse_values(DATAVERSE_URL)},
        _entra_client,
        lambda sbx: f"{sbx.base_url}/",
        lambda sbx: {"[tenant]": sbx.settings.tenant_id, "[client_id]": sbx.settings.client_id,
                     "[client_secret]": _secret(sbx), "[authority host]": sbx.base_url,
                     **_dataverse_values(sbx.dataverse_url)},
        lambda sbx: None,
    ),
    Service(
        "dataverse", f"{DATAVERSE_URL}/api/data/v9.2/", _dataverse_values(DATAVERSE_URL),
        lambda http, tmp, fixture: DataverseClient(http, DATAVERSE_URL),
        lambda sbx: f"{sbx.dataverse_url}/api/data/v9.2/",
        lambda sbx: _dataverse_values(sbx.dataverse_url),
        lambda sbx: _issue(sbx, sbx.dataverse_url),
    ),
    Service(
        "finops", f"{FINOPS_URL}/data/", {"[Finance and Operations URI]": FINOPS_URL},
        lambda http, tmp, fixture: FinOpsClient(http, FINOPS_URL),
        lambda sbx: f"{sbx.finops_url}/data/",
        lambda sbx: {"[Finance and Operations URI]": sbx.finops_url},
        lambda sbx: _issue(sbx, sbx.finops_url),
    ),
    Service(
        "dmf", f"{FINOPS_URL}/data/",
        {"[Finance and Operations URI]": FINOPS_URL, "[Package URL]": PACKAGE_URL},
        # the import gate's lock file in the test's directory: no import started elsewhere is waited for
        lambda http, tmp, fixture: DmfClient(FinOpsClient(http, FINOPS_URL), http, lock_dir=tmp / "locks"),
        lambda sbx: f"{sbx.finops_url}/data/",
        _dmf_values,
        lambda sbx: _issue(sbx, sbx.finops_url),
    ),
    Service(
        "gateway", f"{GATEWAY_URL}/", GATEWAY_VALUES,
        _gateway,
        lambda sbx: f"{sbx.gateway_url}/",
        _gateway_values,
        lambda sbx: _issue(sbx, INTEGRATOR_APP, user=True),
    ),
)}
