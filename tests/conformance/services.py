"""The services of the corpus: where each one's root is, what its placeholders stand for, which
dwlib client speaks to it, and how the sandbox authenticates a request to it.

Contract side: the client is built on an `httpx.Client` whose transport is the fixture's
`MockTransport`, at a made-up environment URL. Sandbox side: the in-process sandbox of the test.
A fixture names its service in the manifest; adding a service is adding an entry here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msal
from corpus import Fixture

from dwlib.clients import DataverseClient, DmfClient, FinOpsClient, TokenProvider
from dwlib.clients.auth import MsalHttp, TokenCacheFile
from dwlib.clients.dualwrite import GatewayAdmin
from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.identity import INTEGRATOR_APP, EntraIdentity, app_principal, consultant

DATAVERSE_URL = "https://contoso.crm.dynamics.com"
FINOPS_URL = "https://contoso.operations.dynamics.com"
GATEWAY_URL = "https://projectmanagementservice.weu.gateway.prod.island.powerapps.com"
TENANT = "8eaef023-2b34-4da1-9baa-8bc8c9d6a490"
CLIENT_ID = "535fb089-9ff3-47b6-9bfb-4f1264799865"
CLIENT_SECRET = "sampleCredentials"


@dataclass(frozen=True)
class Service:
    """One service of the corpus."""

    name: str
    contract_root: str  # the service root URL on the contract side, ending in '/'
    contract_values: dict[str, str]  # placeholder → value on the contract side
    # the dwlib client over a (mock) httpx.Client, for a fixture (its placeholders resolved)
    client: Callable[[httpx.Client, Path, Fixture], Any]
    sandbox_root: Callable[[Sandbox], str]
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
        "dmf", f"{FINOPS_URL}/data/", {"[Finance and Operations URI]": FINOPS_URL},
        lambda http, tmp, fixture: DmfClient(FinOpsClient(http, FINOPS_URL), http),
        lambda sbx: f"{sbx.finops_url}/data/",
        lambda sbx: {"[Finance and Operations URI]": sbx.finops_url},
        lambda sbx: _issue(sbx, sbx.finops_url),
    ),
    Service(
        "gateway", f"{GATEWAY_URL}/", {"[Gateway URI]": GATEWAY_URL},
        _gateway,
        lambda sbx: f"{sbx.gateway_url}/",
        lambda sbx: {"[Gateway URI]": sbx.gateway_url},
        lambda sbx: _issue(sbx, INTEGRATOR_APP, user=True),
    ),
)}
