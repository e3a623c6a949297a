"""The local "storage account" of DMF packages: blob files and SAS-like signed URLs.

Blob URLs are `{base}/blob/dmf/{name}?sv=…&sr=b&sp=r|rw&se=<expiry>&sig=<HMAC>`; the key derives
from `identity.key`. A request Azure Storage would refuse raises `BlobAuthError` with the
service's error code (the HTTP endpoint, `dmf.py`, renders it as an Azure Storage XML body).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from .dmf_package import DmfError

SAS_TTL_S = 3600
SAS_VERSION = "2021-08-06"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_AUTH_FAILED = ("Server failed to authenticate the request. Make sure the value of Authorization header is "
                "formed correctly including the signature.")


class BlobAuthError(Exception):
    """A blob request Azure Storage would refuse; `code`/`status` as the service sends them.

    >>> BlobAuthError("BlobNotFound", "The specified blob does not exist.", 404).status
    404
    """

    def __init__(self, code: str, message: str, status: int, detail: str = "", header: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.detail, self.header = code, message, status, detail, header


class Blobs:
    """The local "storage account": files under `DIR/blobs/`, URLs signed like a service SAS.

    >>> import tempfile, pathlib
    >>> b = Blobs(pathlib.Path(tempfile.mkdtemp()), b"k" * 32, "https://127.0.0.1:1")
    >>> url = b.url("p.zip", "rw"); b.check("p.zip", urlsplit(url).query, "w") is None
    True
    """

    def __init__(self, root: Path, key: bytes, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        root.mkdir(parents=True, exist_ok=True)
        # A key of its own, derived from the identity key: a SAS never reveals the token key.
        self._key = hmac.new(key, b"dmf-blob-sas", hashlib.sha256).digest()

    def path(self, name: str) -> Path:
        """Where blob `name` is stored; BlobAuthError for a name that is not a plain file name."""
        if not _NAME_RE.match(name) or ".." in name:
            raise BlobAuthError("InvalidResourceName", "The specified resource name contains invalid "
                                "characters.", 400)
        return self.root / name

    def _sign(self, name: str, perms: str, expiry: str) -> str:
        text = f"{perms}\n{expiry}\n/blob/dmf/{name}\n{SAS_VERSION}".encode()
        return base64.b64encode(hmac.new(self._key, text, hashlib.sha256).digest()).decode()

    def url(self, name: str, perms: str = "r", ttl_s: float = SAS_TTL_S) -> str:
        """A signed URL for blob `name`, valid `ttl_s` seconds, with permissions `r` or `rw`."""
        self.path(name)
        expiry = (datetime.now(UTC) + timedelta(seconds=ttl_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = self._sign(name, perms, expiry)
        return (f"{self.base_url}/blob/dmf/{quote(name)}?sv={SAS_VERSION}&sr=b&sp={perms}"
                f"&se={quote(expiry, safe='')}&sig={quote(sig, safe='')}")

    def check(self, name: str, query: str, need: str) -> None:
        """Raise BlobAuthError unless `query` is a valid, unexpired SAS for `name` granting `need`."""
        q = {k: v[0] for k, v in parse_qs(query).items()}
        perms, expiry, sig = q.get("sp", ""), q.get("se", ""), q.get("sig", "")
        if not sig or not hmac.compare_digest(sig, self._sign(name, perms, expiry)):
            raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED, 403,
                                "Signature did not match. String to sign used was " + perms)
        try:
            expires = datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED, 403, "se is malformed") from None
        if expires <= datetime.now(UTC):
            raise BlobAuthError("AuthenticationFailed", _AUTH_FAILED, 403,
                                f"Signed expiry time [{format_datetime(expires, usegmt=True)}] must be after "
                                f"signed start time [{format_datetime(datetime.now(UTC), usegmt=True)}]")
        if need not in perms:
            raise BlobAuthError("AuthorizationPermissionMismatch", "This request is not authorized to "
                                "perform this operation using this permission.", 403)

    def name_of(self, url: str) -> str:
        """The blob name of one of this store's URLs (DmfError for a foreign or unsigned URL)."""
        parts = urlsplit(url)
        prefix = urlsplit(self.base_url)
        if parts.netloc != prefix.netloc or not parts.path.startswith("/blob/dmf/"):
            raise DmfError(f"packageUrl {parts.scheme}://{parts.netloc}{parts.path} is not a blob URL of "
                           "this environment: upload the package to the URL GetAzureWriteUrl returned.")
        name = parts.path.removeprefix("/blob/dmf/")
        try:
            self.check(name, parts.query, "r")
        except BlobAuthError as exc:
            raise DmfError(f"The package could not be downloaded: {exc.message} {exc.detail}") from None
        return name
