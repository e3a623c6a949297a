"""Sign-in with msal: app credentials (secret or certificate) or a consultant's device code.

A `TokenProvider` hands out access tokens per resource (`{url}/.default`; Dataverse and F&O are
different audiences), keeps them in memory, renews them before they expire, and persists msal's
cache in `~/.cache/dwlib/msal_cache.bin` (owner-only; `XDG_CACHE_HOME` honoured; never inside a
repository). msal's own HTTP calls go through the same stack (trust, timeouts, retries, journal),
so a sandbox needs nothing special: its https authority and CA bundle come from the parameters.
`BearerAuth` puts the token on each request and, on a 401, retries once with a fresh token.

Example:
    tokens = TokenProvider.from_params(params, make_client(HttpConfig.from_params(params)))
    client = make_client(config, auth=tokens.auth_for(params.environments.dataverse_url))
    >>> scope_for("https://contoso.crm.dynamics.com/")
    'https://contoso.crm.dynamics.com/.default'
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import msal

from dwlib.secrets import remember

from .errors import AuthError, connection_lost
from .http import SAFE

if TYPE_CHECKING:
    from dwlib.params import Auth, Params

log = logging.getLogger(__name__)

# Hosts msal knows (instance discovery on); any other authority (ADFS, a sandbox) gets it off.
_MICROSOFT_HOSTS = frozenset({"login.microsoftonline.com", "login.microsoft.com", "login.windows.net",
                              "sts.windows.net", "login.microsoftonline.us", "login.chinacloudapi.cn",
                              "login.partner.microsoftonline.cn"})
# Renew this long before expiry (or at half-life for short-lived tokens).
_REFRESH_MARGIN_S = 300.0

# AADSTS codes → the fix a consultant should apply.
_FIXES = {
    7000215: "put the current secret value (not its ID) where auth.client_secret points",
    7000222: "the client secret has expired: create a new one in the app registration and store it "
             "where auth.client_secret points",
    700016: "check auth.client_id and environments.tenant_id: the app is not registered in that tenant",
    90002: "check environments.tenant_id (and environments.authority)",
    700027: "the certificate is not registered on the app: upload it to the app registration, or point "
            "auth.certificate at the registered one",
    500011: "check the environment URL (environments.dataverse_url / finops_url): no resource with that "
            "URL exists in the tenant",
    70011: "check the environment URL: the requested scope is not valid",
    65001: "grant admin consent to the app for this resource",
}


def scope_for(resource_url: str) -> str:
    """The app-only scope of a resource: its base URL (as given, no trailing slash) + `/.default`.

    >>> scope_for("https://127.0.0.1:8443/finops")
    'https://127.0.0.1:8443/finops/.default'
    """
    return f"{resource_url.rstrip('/')}/.default"


def default_cache_path() -> Path:
    """`$XDG_CACHE_HOME/dwlib/msal_cache.bin`, else `~/.cache/dwlib/msal_cache.bin`.

    >>> default_cache_path().name
    'msal_cache.bin'
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dwlib" / "msal_cache.bin"


class TokenCacheFile(msal.SerializableTokenCache):  # type: ignore[misc]  # msal ships no types
    """msal's token cache, persisted in an owner-only file outside any repository.

    >>> import tempfile
    >>> cache = TokenCacheFile(Path(tempfile.mkdtemp()) / "c.bin")
    >>> cache.save()  # nothing changed, nothing written
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path.expanduser().resolve()
        repo = next((p for p in self.path.parents if (p / ".git").exists()), None)
        if repo is not None:
            raise AuthError(f"the token cache {self.path} is inside the repository {repo}; tokens must "
                            "not land where they could be committed",
                            fix="set auth.token_cache outside the repository, or leave it unset")
        self._file_lock = threading.Lock()  # msal's own `_lock` guards the entries
        if self.path.exists():
            if self.path.stat().st_mode & 0o077:
                os.chmod(self.path, 0o600)
            try:
                self.deserialize(self.path.read_text())
            except ValueError:  # a damaged cache only costs a new sign-in
                log.warning("ignoring the unreadable token cache %s", self.path)

    def save(self) -> None:
        """Write the cache if it changed (atomically, mode 0600)."""
        with self._file_lock:
            if not getattr(self, "has_state_changed", True):
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.serialize())
            os.replace(tmp, self.path)
            self.has_state_changed = False


class MsalHttp:
    """msal's `http_client` over an `httpx.Client`: token calls marked safe to repeat, and form values
    msal hands over as bytes (the certificate assertion) sent as text, not as "b'…'".

    msal.ConfidentialClientApplication(client_id, ..., http_client=MsalHttp(make_client(config)))
    """

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._client.post(url, extensions=SAFE, **_httpx_kwargs(kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._client.get(url, extensions=SAFE, **_httpx_kwargs(kwargs))

    def close(self) -> None:
        """The stack owns the client: nothing to close here."""


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # msal speaks `requests`; keep what httpx shares with it, drop what the stack configures itself.
    out = {k: v for k, v in kwargs.items() if k in ("params", "data", "headers", "json", "timeout")}
    if isinstance(out.get("data"), dict):
        # msal passes the certificate assertion as bytes, which httpx would send as "b'…'".
        out["data"] = {k: v.decode() if isinstance(v, bytes) else v for k, v in out["data"].items()}
    return out


class TokenProvider:
    """Access tokens for one identity, per scope; thread-safe; renewed before expiry.

    tokens = TokenProvider.from_params(params, make_client(HttpConfig.from_params(params)))
    tokens.token(scope_for(params.environments.dataverse_url))
    """

    def __init__(
        self,
        app: msal.ClientApplication,
        cache: TokenCacheFile,
        *,
        device_prompt: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._cache = cache
        self._prompt = device_prompt or _print_prompt
        self._clock = clock
        self._memo: dict[str, tuple[str, float]] = {}  # scope → (token, renew at)
        self._lock = threading.Lock()

    @classmethod
    def from_params(
        cls,
        params: Params,
        http: httpx.Client,
        *,
        device_prompt: Callable[[str], None] | None = None,
    ) -> TokenProvider:
        """The provider the parameters describe; `http` comes from `make_client` (no auth)."""
        auth = params.auth
        authority = params.environments.authority_url
        common: dict[str, Any] = {
            "authority": authority,
            "token_cache": TokenCacheFile(auth.token_cache or default_cache_path()),
            "http_client": MsalHttp(http),
        }
        if httpx.URL(authority).host not in _MICROSOFT_HOSTS:
            common["instance_discovery"] = False
        try:
            if auth.method == "device_code":
                app: msal.ClientApplication = msal.PublicClientApplication(auth.client_id, **common)
            else:
                app = msal.ConfidentialClientApplication(
                    auth.client_id, client_credential=_credential(auth), **common)
        except httpx.TransportError as exc:
            raise connection_lost(exc, method="GET", url=authority, repeatable=True) from None
        except ValueError as exc:  # msal: authority discovery failed
            raise AuthError(f"the sign-in authority {authority} did not answer as an identity provider "
                            f"({exc})",
                            fix="check environments.tenant_id and environments.authority") from None
        return cls(app, common["token_cache"], device_prompt=device_prompt)

    def token(self, scope: str, *, rejected: str | None = None) -> str:
        """A valid access token for `scope`; `rejected` (a token a service refused) forces a new one."""
        with self._lock:
            memo = self._memo.get(scope)
            if memo and memo[0] != rejected and self._clock() < memo[1]:
                return memo[0]
            force = memo is not None  # renewing a known token: skip msal's cache
            result = self._acquire(scope, force=force)
            token = str(result["access_token"])
            lifetime = float(result.get("expires_in", 3599))
            self._memo[scope] = (token, self._clock() + lifetime - min(_REFRESH_MARGIN_S, lifetime / 2))
            remember(token)
            self._cache.save()
            return token

    def claims(self, resource_url: str) -> dict[str, Any]:
        """What the access token for `resource_url` says about who signed in (`tid`, `upn`, `appid`
        …). Decoded without checking its signature: read only to say who this is, never trusted
        for access (the service checks the token). AuthError for a token that is not a JWT."""
        try:
            claims: dict[str, Any] = jwt.decode(self.token(scope_for(resource_url)),
                                                options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"the access token for {resource_url} is not a readable JWT ({exc})") from None
        return claims

    def signed_in_as(self, resource_url: str) -> str:
        """Who signed in for `resource_url`: a user's UPN or name, else the app's name or id."""
        c = self.claims(resource_url)
        return str(c.get("upn") or c.get("name") or c.get("app_displayname") or c.get("appid"))

    def auth_for(self, resource_url: str) -> BearerAuth:
        """An `httpx.Auth` for the resource at `resource_url` (scope `{url}/.default`)."""
        return BearerAuth(self, scope_for(resource_url))

    def _acquire(self, scope: str, *, force: bool) -> dict[str, Any]:
        app = self._app
        try:
            if isinstance(app, msal.ConfidentialClientApplication):
                if force:
                    app.remove_tokens_for_client()
                result = app.acquire_token_for_client(scopes=[scope])
            else:
                result = self._device_code(app, scope, force=force)
        except httpx.TransportError as exc:
            raise connection_lost(exc, method="POST", url=app.authority.token_endpoint,
                                  repeatable=True) from None
        if not result or "access_token" not in result:
            raise _auth_error(result or {}, scope, app.client_id)
        return dict(result)

    def _device_code(self, app: msal.ClientApplication, scope: str, *, force: bool) -> dict[str, Any]:
        assert isinstance(app, msal.PublicClientApplication)
        accounts = app.get_accounts()
        if accounts:
            result: dict[str, Any] | None = app.acquire_token_silent([scope], account=accounts[0],
                                                                     force_refresh=force)
            if result and "access_token" in result:
                return result
        flow: dict[str, Any] = app.initiate_device_flow(scopes=[scope])
        if "user_code" not in flow:
            return flow  # an error dict, explained by the caller
        self._prompt(flow["message"])
        answer: dict[str, Any] = app.acquire_token_by_device_flow(flow)
        return answer


def _print_prompt(message: str) -> None:
    print(message, flush=True)  # the consultant must see it, in a notebook or a terminal


def _credential(auth: Auth) -> str | dict[str, str]:
    if auth.method == "client_secret":
        assert auth.client_secret is not None  # params checked it
        return auth.client_secret.reveal()
    cert = auth.certificate
    assert cert is not None  # params checked it
    credential = {"private_key": cert.private_key.reveal(), "public_certificate": cert.path.read_text()}
    if cert.thumbprint:
        credential["thumbprint"] = cert.thumbprint
    if cert.passphrase:
        credential["passphrase"] = cert.passphrase.reveal()
    return credential


def _auth_error(result: dict[str, Any], scope: str, client_id: str) -> AuthError:
    codes = result.get("error_codes") or []
    description = str(result.get("error_description") or "").splitlines()
    summary = description[0] if description else "no description"
    fix = next((_FIXES[c] for c in codes if c in _FIXES), "check the auth and environments parameters")
    return AuthError(f"sign-in for app {client_id} (scope {scope}) failed: {result.get('error', 'error')}: "
                     f"{summary}", fix=fix)


class BearerAuth(httpx.Auth):
    """Adds `Authorization: Bearer …`; on a 401 asks once for a fresh token and resends.

    >>> BearerAuth.requires_response_body
    False
    """

    def __init__(self, provider: TokenProvider, scope: str) -> None:
        self.provider = provider
        self.scope = scope

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.provider.token(self.scope)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.provider.token(self.scope, rejected=token)}"
            yield request
