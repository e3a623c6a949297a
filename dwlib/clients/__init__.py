"""Clients of the services a runbook talks to, on one HTTP stack (see `http`).

`connect(params)` builds them all from a run's parameters; each client can also be built alone
from an `httpx.Client` made by `make_client`.

Example:
    >>> from dwlib.clients import HttpConfig, Journal, make_client
    >>> client = make_client(HttpConfig(), Journal())
    >>> client.close()
"""

from .auth import BearerAuth, TokenProvider, default_cache_path, scope_for
from .bulk import BulkResult, ChunkFailure
from .dataverse import DataverseClient
from .dmf import DmfClient
from .errors import (
    AuthError,
    BatchError,
    BulkError,
    ClientError,
    ConnectionLostError,
    DmfError,
    HttpError,
    NotFoundError,
    ResponseError,
    ThrottledError,
)
from .finops import FinOpsClient
from .http import SAFE, HttpConfig, Journal, JournalEntry, make_client
from .odata_batch import Batch, ChangeSet, PartResponse
from .pacing import Pacer
from .session import Session, connect

__all__ = [
    "SAFE",
    "AuthError",
    "Batch",
    "BatchError",
    "BearerAuth",
    "BulkError",
    "BulkResult",
    "ChangeSet",
    "ChunkFailure",
    "ClientError",
    "ConnectionLostError",
    "DataverseClient",
    "DmfClient",
    "DmfError",
    "FinOpsClient",
    "HttpConfig",
    "HttpError",
    "Journal",
    "JournalEntry",
    "NotFoundError",
    "Pacer",
    "PartResponse",
    "ResponseError",
    "Session",
    "ThrottledError",
    "TokenProvider",
    "connect",
    "default_cache_path",
    "make_client",
    "scope_for",
]
