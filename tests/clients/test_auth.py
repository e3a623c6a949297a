"""Sign-in with msal over the stack: tokens per resource, renewal, the cache file, errors with fixes."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from client_fakes import FakeService

from dwlib.clients import AuthError, HttpConfig, Journal, TokenProvider, make_client, scope_for
from dwlib.params import Params, load_params

SECRET = "fake-secret-value-9f8e7d6c5b4a"
AUTHORITY = "https://login.example/tenant-1"
DV = "https://org.example/dataverse"
FO = "https://org.example/finops"


def params(**auth: object) -> Params:
    return load_params({
        "scenario": "existing-existing",
        "environments": {"tenant_id": "tenant-1", "authority": AUTHORITY, "dataverse_url": DV,
                         "finops_url": FO},
        "auth": {"client_id": "app-1", "client_secret": "env:DW_TEST_APP_SECRET", **auth},
        "legal_entities": ["USMF"],
    })


class Identity(FakeService):
    """An identity provider that issues numbered tokens, `lifetime` seconds long."""

    def __init__(self, lifetime: int = 3600) -> None:
        super().__init__()
        self.issued: list[tuple[str, str]] = []  # (scope, token)

        @self.on("GET", r"/tenant-1/v2\.0/\.well-known/openid-configuration")
        def discovery(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
            return httpx.Response(200, json={
                "issuer": f"{AUTHORITY}/v2.0", "authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize",
                "token_endpoint": f"{AUTHORITY}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/devicecode"})

        @self.on("POST", r"/tenant-1/oauth2/v2\.0/token")
        def token(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            if form.get("client_secret") != SECRET:
                return httpx.Response(401, json={
                    "error": "invalid_client", "error_codes": [7000215],
                    "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t"})
            token = f"token-{len(self.issued) + 1}"
            self.issued.append((form["scope"], token))
            return httpx.Response(200, json={"token_type": "Bearer", "expires_in": lifetime,
                                             "access_token": token})


@pytest.fixture(autouse=True)
def app_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DW_TEST_APP_SECRET", SECRET)


def provider(identity: Identity, p: Params | None = None, journal: Journal | None = None,
             **kw: object) -> TokenProvider:
    http = make_client(HttpConfig(), journal, transport=identity.transport)
    tokens = TokenProvider.from_params(p or params(), http)
    if "clock" in kw:
        tokens._clock = kw["clock"]  # type: ignore[assignment]
    return tokens


def test_one_token_per_resource_kept_in_memory() -> None:
    idp = Identity()
    tokens = provider(idp)
    dv, fo = tokens.token(scope_for(DV)), tokens.token(scope_for(FO))
    assert dv != fo
    assert [s for s, _ in idp.issued] == [f"{DV}/.default", f"{FO}/.default"]
    assert tokens.token(scope_for(DV)) == dv and len(idp.issued) == 2


def test_tokens_are_renewed_before_they_expire() -> None:
    now = [1000.0]
    idp = Identity(lifetime=3600)
    tokens = provider(idp, clock=lambda: now[0])
    first = tokens.token(scope_for(DV))
    now[0] += 3600 - 301  # still valid for 301 s: kept
    assert tokens.token(scope_for(DV)) == first
    now[0] += 2  # less than 5 minutes left: renewed although the token has not expired
    assert tokens.token(scope_for(DV)) != first
    assert len(idp.issued) == 2


def test_the_cache_file_is_private_outside_the_repo_and_reused(private_cache: Path) -> None:
    idp = Identity()
    token = provider(idp).token(scope_for(DV))
    path = private_cache / "dwlib" / "msal_cache.bin"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SECRET not in path.read_text()
    assert provider(idp).token(scope_for(DV)) == token  # a new process finds it in the cache
    assert len(idp.issued) == 1


def test_a_cache_inside_a_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(AuthError, match="inside the repository") as exc:
        provider(Identity(), params(token_cache=str(tmp_path / "repo" / "cache.bin")))
    assert "auth.token_cache" in exc.value.fix


def test_a_wrong_secret_is_one_clear_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DW_TEST_APP_SECRET", "wrong-secret-value-123456")
    journal = Journal()
    with pytest.raises(AuthError) as exc:
        provider(Identity(), journal=journal).token(scope_for(DV))
    text = str(exc.value)
    assert "invalid_client: AADSTS7000215: Invalid client secret provided." in text
    assert "fix: put the current secret value (not its ID) where auth.client_secret points" in text
    assert "wrong-secret-value-123456" not in text + repr(journal.as_dicts())
    assert "Trace ID" not in text


def test_bearer_auth_retries_a_401_once_with_a_fresh_token() -> None:
    idp = Identity()
    seen: list[str] = []

    @idp.on("GET", r"/dataverse/api/data/v9\.2/WhoAmI")
    def whoami(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if len(seen) == 1:
            return httpx.Response(401, json={"error": {"code": "0x8006088a", "message": "expired"}})
        return httpx.Response(200, json={"UserId": "u"})

    journal = Journal()
    tokens = provider(idp, journal=journal)
    api = make_client(HttpConfig(), journal, auth=tokens.auth_for(DV), transport=idp.transport)
    assert api.get(f"{DV}/api/data/v9.2/WhoAmI").json() == {"UserId": "u"}
    assert seen == ["Bearer token-1", "Bearer token-2"]
    statuses = [(e.method, e.status) for e in journal.entries()]
    assert statuses.count(("GET", 401)) == 1 and statuses[-1] == ("GET", 200)
    assert not any(tok in repr(journal.as_dicts()) for tok in ("token-1", "token-2", SECRET))


def test_a_damaged_or_too_open_cache_file_is_recovered(private_cache: Path) -> None:
    path = private_cache / "dwlib" / "msal_cache.bin"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    path.chmod(0o644)
    idp = Identity()
    assert provider(idp).token(scope_for(DV)) == "token-1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
