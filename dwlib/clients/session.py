"""Wire the clients of a run from its parameters: one journal, one token provider, three clients.

Example:
    >>> # with connect(load_params("params/sandbox-new-new.yaml")) as env:
    >>> #     env.dataverse.whoami(); env.finops.query("LegalEntities"); env.journal.totals()
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
from .http import HttpConfig, Journal, make_client
from .platform import BAP_RESOURCE, LCS_RESOURCE, PlatformClient

if TYPE_CHECKING:
    from dwlib.params import Params


@dataclass
class Session:
    """The connected clients of one run; close it (or use `with`) to release connections.

    >>> sorted(f for f in Session.__dataclass_fields__ if not f.startswith("_"))
    ['dataverse', 'dmf', 'finops', 'journal', 'platform', 'tokens']
    """

    dataverse: DataverseClient
    finops: FinOpsClient
    dmf: DmfClient
    journal: Journal
    tokens: TokenProvider
    platform: PlatformClient
    _http: list[httpx.Client] = field(default_factory=list, repr=False)

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
) -> Session:
    """Clients for the run `params` describe, all on one stack and one journal.

    Contacts the sign-in authority (discovery) but no environment yet. `transport` replaces the
    network for tests.

    >>> # with connect(load_params("params/sandbox-new-new.yaml")) as session: session.dataverse.whoami()
    """
    config = HttpConfig.from_params(params)
    journal = journal if journal is not None else Journal()
    env = params.environments
    plain = make_client(config, journal, transport=transport)
    try:
        tokens = TokenProvider.from_params(params, plain, device_prompt=device_prompt)
    except BaseException:
        plain.close()
        raise
    dv_http = make_client(config, journal, auth=tokens.auth_for(env.dataverse_url), transport=transport)
    fo_http = make_client(config, journal, auth=tokens.auth_for(env.finops_url), transport=transport)
    options = params.options
    dataverse = DataverseClient(dv_http, env.dataverse_url, page_size=options.page_size,
                                concurrency=options.concurrency, batch_size=options.batch_size)
    finops = FinOpsClient(fo_http, env.finops_url, retry=config)
    # LCS only when the parameters name the environment there; the admin API always (it may refuse).
    lcs_http = (make_client(config, journal, auth=tokens.auth_for(LCS_RESOURCE), transport=transport)
                if env.lcs_project_id and env.lcs_environment_id else None)
    bap_http = make_client(config, journal, auth=tokens.auth_for(BAP_RESOURCE), transport=transport)
    platform = PlatformClient(lcs_http, env.lcs_api_url, bap_http, env.power_platform_api_url)
    opened = [plain, dv_http, fo_http, bap_http, *([lcs_http] if lcs_http else [])]
    return Session(dataverse, finops, DmfClient(finops, plain), journal, tokens, platform, opened)
