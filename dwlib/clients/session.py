"""Wire the clients of a run from its parameters: one journal, one token provider, three clients.

Example:
    with connect(load_params("params/sandbox-new-new.yaml")) as env:
        env.dataverse.whoami(); env.finops.query("LegalEntities"); env.journal.totals()
    >>> Session.__doc__.splitlines()[0]
    'The connected clients of one run; close it (or use `with`) to release connections.'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from .auth import TokenProvider
from .dataverse import DataverseClient
from .dmf import DmfClient
from .finops import FinOpsClient
from .http import HttpConfig, Journal, RetryBudget, make_client
from .pacing import Pacer
from .platform import BAP_RESOURCE, LCS_RESOURCE, PlatformClient

if TYPE_CHECKING:
    from dwlib.params import Params


@dataclass
class Session:
    """The connected clients of one run; close it (or use `with`) to release connections.

    >>> sorted(f for f in Session.__dataclass_fields__ if not f.startswith("_"))
    ['budget', 'config', 'dataverse', 'dmf', 'finops', 'journal', 'platform', 'tokens']
    """

    dataverse: DataverseClient
    finops: FinOpsClient
    dmf: DmfClient
    journal: Journal
    tokens: TokenProvider
    platform: PlatformClient
    config: HttpConfig
    budget: RetryBudget  # the run's retry budget: every client of the session waits through it
    _http: list[httpx.Client] = field(default_factory=list, repr=False)

    def http(self, *, auth: httpx.Auth | None = None) -> httpx.Client:
        """Another client on the session's stack, journal and retry budget (closed with the session).

        gateway = session.http(auth=session.tokens.auth_for(INTEGRATOR_APP))
        """
        client = make_client(self.config, self.journal, auth=auth, budget=self.budget)
        self._http.append(client)
        return client

    def close(self) -> None:
        """Close every HTTP client of the session."""
        for client in self._http:
            client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(
    params: Params,
    *,
    journal: Journal | None = None,
    device_prompt: Callable[[str], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Session:
    """Clients for the run `params` describe, all on one stack, one journal and one retry budget.

    Contacts the sign-in authority (discovery) but no environment yet. `transport` replaces the
    network and `sleep` the waits between retries (`RetryBudget`) and of Dataverse pauses (`Pacer`)
    for tests.

    with connect(load_params("params/sandbox-new-new.yaml")) as session: session.dataverse.whoami()
    """
    config = HttpConfig.from_params(params)
    journal = journal if journal is not None else Journal()
    budget = RetryBudget(config.retry_budget_s, sleep=sleep)
    env = params.environments
    plain = make_client(config, journal, transport=transport, budget=budget)
    try:
        tokens = TokenProvider.from_params(params, plain, device_prompt=device_prompt)
    except BaseException:
        plain.close()
        raise
    dv_http = make_client(config, journal, auth=tokens.auth_for(env.dataverse_url), transport=transport,
                          budget=budget)
    fo_http = make_client(config, journal, auth=tokens.auth_for(env.finops_url), transport=transport,
                          budget=budget)
    options = params.options
    dataverse = DataverseClient(dv_http, env.dataverse_url, page_size=options.page_size,
                                concurrency=options.concurrency, batch_size=options.batch_size,
                                pacer=Pacer(options.concurrency, sleep=sleep))
    finops = FinOpsClient(fo_http, env.finops_url, retry=config, budget=budget)
    # LCS only when the parameters name the environment there; the admin API always (it may refuse).
    lcs_http = (make_client(config, journal, auth=tokens.auth_for(LCS_RESOURCE), transport=transport,
                            budget=budget)
                if env.lcs_project_id and env.lcs_environment_id else None)
    bap_http = make_client(config, journal, auth=tokens.auth_for(BAP_RESOURCE), transport=transport,
                           budget=budget)
    platform = PlatformClient(lcs_http, env.lcs_api_url, bap_http, env.power_platform_api_url)
    opened = [plain, dv_http, fo_http, bap_http, *([lcs_http] if lcs_http else [])]
    return Session(dataverse, finops, DmfClient(finops, plain), journal, tokens, platform, config, budget,
                   opened)
