"""The sandbox's Entra ID: discovery, msal's grants (secret, certificate, device code), errors, validation."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from starlette.requests import Request

from dwlib.clients.auth import MsalHttp
from dwlib.sandbox import control
from dwlib.sandbox.context import AuthError
from dwlib.sandbox.identity import (
    CONSULTANT_UPN,
    DUALWRITE_CLIENT_ID,
    INTEGRATOR_APP,
    EntraIdentity,
    app_principal,
    consultant,
)
from dwlib.sandbox.server import ensure_credentials
from dwlib.sandbox.state import Paths, Settings

BASE = "https://127.0.0.1:4443"


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _app(conn: dict[str, Any], credential: Any, http: httpx.Client | MsalHttp
         ) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(conn["client_id"], authority=conn["authority"],
                                              client_credential=credential, http_client=http,
                                              instance_discovery=False)


def _token_post(conn: dict[str, Any], form: dict[str, str], path: str = "token") -> httpx.Response:
    with control.http_client(conn) as http:
        return http.post(f"{conn['authority']}/oauth2/v2.0/{path}", data=form)


# --- in-process: issuing and validating -----------------------------------------------------------


@pytest.fixture
def ident(tmp_path: Path) -> EntraIdentity:
    paths = Paths(tmp_path)
    ensure_credentials(paths)
    return EntraIdentity(paths, Settings(profile="new-new", rows=0), BASE)


def _request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_authenticate_accepts_a_token_for_its_audience(ident: EntraIdentity) -> None:
    token = ident.issue(app_principal(ident.settings), f"{BASE}/dataverse")["access_token"]
    principal = ident.authenticate(_request(f"Bearer {token}"), f"{BASE}/dataverse")
    assert principal == replace(app_principal(ident.settings), audience=f"{BASE}/dataverse")


def test_authenticate_reports_a_user_with_scopes(ident: EntraIdentity) -> None:
    token = ident.issue(consultant(ident.settings), f"{BASE}/finops")["access_token"]
    principal = ident.authenticate(_request(f"Bearer {token}"), f"{BASE}/finops")
    assert (principal.kind, principal.name) == ("user", CONSULTANT_UPN)
    assert principal.scopes == ("user_impersonation",)


def _forged(ident: EntraIdentity, key: bytes, **changes: Any) -> str:
    token = ident.issue(app_principal(ident.settings), f"{BASE}/dataverse")["access_token"]
    claims = {**_claims(token), **changes}
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer not-a-jwt", "malformed"),
        ("Bearer a.b.c", "malformed"),
    ],
)
def test_authenticate_refuses_bad_headers(ident: EntraIdentity, header: str | None, code: str) -> None:
    with pytest.raises(AuthError) as info:
        ident.authenticate(_request(header), f"{BASE}/dataverse")
    assert info.value.code == code


def test_authenticate_refuses_forged_expired_foreign_tokens(ident: EntraIdentity, tmp_path: Path) -> None:
    key = Paths(tmp_path).identity_key.read_bytes()
    cases = {
        "bad_signature": _forged(ident, b"another sandbox's key, 32 bytes!"),
        "expired": _forged(ident, key, exp=int(time.time()) - 5),
        "wrong_audience": _forged(ident, key, aud=f"{BASE}/finops"),
        "wrong_tenant": _forged(ident, key, tid="00000000-0000-0000-0000-000000000000"),
    }
    for code, token in cases.items():
        with pytest.raises(AuthError) as info:
            ident.authenticate(_request(f"Bearer {token}"), f"{BASE}/dataverse")
        assert info.value.code == code, code


def test_issued_claims(ident: EntraIdentity) -> None:
    before = int(time.time())
    body = ident.issue(app_principal(ident.settings), f"{BASE}/dataverse")
    claims = _claims(body["access_token"])
    assert claims["aud"] == f"{BASE}/dataverse"
    assert claims["iss"] == f"{BASE}/{ident.settings.tenant_id}/v2.0"
    assert claims["tid"] == ident.settings.tenant_id
    assert claims["appid"] == claims["azp"] == ident.settings.client_id
    assert claims["idtyp"] == "app"
    assert claims["exp"] - before >= ident.settings.token_lifetime_s
    assert body["expires_in"] == ident.settings.token_lifetime_s
    assert "refresh_token" not in body  # client credentials never get one


# --- msal against a running sandbox ------------------------------------------------------------------


def test_discovery_document(sandbox: dict[str, Any]) -> None:
    with control.http_client(sandbox) as http:
        doc = http.get(f"{sandbox['authority']}/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{sandbox['authority']}/v2.0"
    assert doc["token_endpoint"] == f"{sandbox['authority']}/oauth2/v2.0/token"
    assert doc["device_authorization_endpoint"] == f"{sandbox['authority']}/oauth2/v2.0/devicecode"
    for key in ("authorization_endpoint", "jwks_uri"):
        assert doc[key].startswith(sandbox["authority"])


def test_discovery_of_another_tenant_fails(sandbox: dict[str, Any]) -> None:
    other = sandbox["authority"].rsplit("/", 1)[0] + "/11111111-2222-3333-4444-555555555555"
    with control.http_client(sandbox) as http:
        response = http.get(f"{other}/v2.0/.well-known/openid-configuration")
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_msal_client_secret(sandbox: dict[str, Any]) -> None:
    secret = Path(sandbox["client_secret_file"]).read_text().strip()
    with control.http_client(sandbox) as http:
        result = _app(sandbox, secret, http).acquire_token_for_client(
            scopes=[f"{sandbox['dataverse_url']}/.default"])
    claims = _claims(result["access_token"])
    assert (claims["aud"], claims["appid"], claims["idtyp"]) == (sandbox["dataverse_url"],
                                                                 sandbox["client_id"], "app")
    assert claims["tid"] == sandbox["tenant_id"]


def _certificate(conn: dict[str, Any]) -> tuple[str, str]:
    pem = Path(conn["client_certificate_file"]).read_text()
    return Path(conn["client_private_key_file"]).read_text(), pem


@pytest.mark.parametrize("style", ["thumbprint", "public_certificate"])
def test_msal_certificate(sandbox: dict[str, Any], style: str) -> None:
    key, pem = _certificate(sandbox)
    if style == "thumbprint":  # RS256 with x5t (SHA-1)
        sha1 = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA1()).hex()
        credential = {"private_key": key, "thumbprint": sha1}
    else:  # PS256 with x5t#S256, as msal >= 1.35 does given the certificate
        credential = {"private_key": key, "public_certificate": pem}
    with control.http_client(sandbox) as client:
        http = MsalHttp(client)
        result = _app(sandbox, credential, http).acquire_token_for_client(
            scopes=[f"{sandbox['finops_url']}/.default"])
    assert _claims(result["access_token"])["aud"] == sandbox["finops_url"], result


def test_msal_with_plain_httpx_sends_a_broken_assertion(sandbox: dict[str, Any]) -> None:
    # msal passes the assertion as bytes and httpx sends "b'...'": Entra answers AADSTS50027; so does
    # the sandbox.
    key, pem = _certificate(sandbox)
    with control.http_client(sandbox) as http:
        app = _app(sandbox, {"private_key": key, "public_certificate": pem}, http)
        result = app.acquire_token_for_client(scopes=[f"{sandbox['finops_url']}/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [50027]


def test_assertion_signed_by_another_key_is_refused(sandbox: dict[str, Any], tmp_path: Path) -> None:
    other = Paths(tmp_path)
    ensure_credentials(other)
    _, pem = _certificate(sandbox)  # the registered certificate's thumbprint, another key
    credential = {"private_key": other.client_key.read_text(), "public_certificate": pem}
    with control.http_client(sandbox) as client:
        http = MsalHttp(client)
        result = _app(sandbox, credential, http).acquire_token_for_client(
            scopes=[f"{sandbox['finops_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_client", [700027])


def test_wrong_secret_is_an_aadsts_error(sandbox: dict[str, Any]) -> None:
    response = _token_post(sandbox, {"grant_type": "client_credentials", "client_id": sandbox["client_id"],
                                     "client_secret": "not-the-secret",
                                     "scope": f"{sandbox['dataverse_url']}/.default"})
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    assert "not-the-secret" not in response.text


@pytest.mark.parametrize(
    ("form", "status", "error", "code"),
    [
        ({"scope": "https://nowhere.example/.default"}, 400, "invalid_resource", 500011),
        ({"client_id": "00000000-0000-0000-0000-00000000000a"}, 400, "unauthorized_client", 700016),
        ({"scope": "{dataverse_url}/user_impersonation"}, 400, "invalid_scope", 1002012),
        ({"client_secret": None}, 401, "invalid_client", 7000218),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ],
)
def test_token_request_errors(sandbox: dict[str, Any], form: dict[str, Any], status: int, error: str,
                              code: int) -> None:
    base = {"grant_type": "client_credentials", "client_id": sandbox["client_id"],
            "client_secret": Path(sandbox["client_secret_file"]).read_text().strip(),
            "scope": f"{sandbox['dataverse_url']}/.default"}
    merged = {k: v.format(**sandbox) for k, v in {**base, **form}.items() if v is not None}
    response = _token_post(sandbox, merged)
    assert (response.status_code, response.json()["error"], response.json()["error_codes"]) == (
        status, error, [code])


def test_integrator_app_scope(sandbox: dict[str, Any], sandbox_token: Callable[..., str]) -> None:
    assert _claims(sandbox_token(sandbox, INTEGRATOR_APP))["aud"] == INTEGRATOR_APP


def test_msal_device_code_flow(start_sandbox: Callable[..., dict[str, Any]]) -> None:
    conn = start_sandbox("new-new", rows=0, device_code_approve_after_s=1.5)
    with control.http_client(conn) as client:
        http = MsalHttp(client)
        app = msal.PublicClientApplication(DUALWRITE_CLIENT_ID, authority=conn["authority"], http_client=http,
                                           instance_discovery=False)
        flow = app.initiate_device_flow(scopes=[f"{INTEGRATOR_APP}/.default"])
        assert flow["user_code"] in flow["message"] and flow["verification_uri"] in flow["message"]
        first = _token_post(conn, {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                   "client_id": DUALWRITE_CLIENT_ID, "device_code": flow["device_code"]})
        assert (first.status_code, first.json()["error"]) == (400, "authorization_pending")
        result = app.acquire_token_by_device_flow(flow)  # msal polls until approved
        claims = _claims(result["access_token"])
        assert (claims["aud"], claims["idtyp"], claims["upn"]) == (INTEGRATOR_APP, "user", CONSULTANT_UPN)
        assert claims["appid"] == DUALWRITE_CLIENT_ID
        # msal keeps the account; a forced silent call renews through the refresh token.
        account = app.get_accounts()[0]
        assert account["username"] == CONSULTANT_UPN
        renewed = app.acquire_token_silent([f"{INTEGRATOR_APP}/.default"], account=account,
                                           force_refresh=True)
        assert renewed["access_token"] != result["access_token"]
        assert json.loads(base64.urlsafe_b64decode(result["client_info"] + "==")) == {
            "uid": claims["oid"], "utid": conn["tenant_id"]}


def test_expired_token_is_refused(start_sandbox: Callable[..., dict[str, Any]],
                                  sandbox_token: Callable[..., str]) -> None:
    conn = start_sandbox("new-new", rows=0, token_lifetime_s=3)
    token = sandbox_token(conn)
    url = f"{conn['dataverse_url']}/api/data/v9.2/WhoAmI"
    statuses = []
    with control.http_client(conn) as http:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and 401 not in statuses:
            statuses.append(http.get(url, headers={"Authorization": f"Bearer {token}"}).status_code)
            time.sleep(0.2)
    assert statuses[0] == 200 and statuses[-1] == 401
    assert _claims(token)["exp"] <= time.time()


def test_tokens_are_bound_to_their_service(sandbox: dict[str, Any],
                                              sandbox_token: Callable[..., str]) -> None:
    with control.http_client(sandbox) as http:
        url = f"{sandbox['dataverse_url']}/api/data/v9.2/WhoAmI"
        wrong = http.get(url, headers={"Authorization": f"Bearer {sandbox_token(sandbox, 'finops')}"})
        right = http.get(url, headers={"Authorization": f"Bearer {sandbox_token(sandbox, 'dataverse')}"})
        missing = http.get(url)
        entities = f"{sandbox['finops_url']}/data/LegalEntities"
        dv_token = sandbox_token(sandbox, "dataverse")
        dataverse_on_finops = http.get(entities, headers={"Authorization": f"Bearer {dv_token}"})
    assert (wrong.status_code, right.status_code, missing.status_code) == (401, 200, 401)
    assert dataverse_on_finops.status_code == 401
