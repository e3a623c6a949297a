"""Entra ID emulation: OpenID discovery, the v2 token endpoint, device code, token validation.

What msal needs (api-surface §1.4): `{authority}/v2.0/.well-known/openid-configuration` with
`authorization_endpoint`, `token_endpoint` and `device_authorization_endpoint`, all over https.
Grants: client credentials with the app's secret or a certificate assertion (RS256 + `x5t`, or
PS256 + `x5t#S256` as msal ≥ 1.35 sends when given the public certificate), the device code flow
(approved automatically for a consultant user after `settings.device_code_approve_after_s`), and
refresh tokens (msal's silent renewal). Access tokens are HS256 JWTs signed with `identity.key`;
`authenticate` checks them for the service that receives them.

Example:
    >>> from dwlib.sandbox.state import Settings
    >>> s = Settings(profile="new-new", rows=0)
    >>> app_principal(s).kind, consultant(s).kind
    ('app', 'user')
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .context import AuthError, Principal, Sandbox
from .state import Paths, Settings

INTEGRATOR_APP = "https://IntegratorApp.com"  # audience of the dual-write management gateway
LCS_RESOURCE = "https://lcsapi.lcs.dynamics.com"  # audience of the LCS API (environment metadata)
BAP_RESOURCE = "https://service.powerapps.com"  # audience of the Power Platform admin API
DUALWRITE_CLIENT_ID = "2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b"  # first-party app of the dual-write UI
APP_NAME = "Dual-write runbooks (sandbox)"
CONSULTANT_UPN = "consultant@dwsandbox.onmicrosoft.com"
DEVICE_CODE_TTL_S = 900
REFRESH_TOKEN_TTL_S = 90 * 24 * 3600
_OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}
_NS = uuid.UUID("5b0c8f59-3d4e-4a57-9c5e-4f1f3b7a2d10")  # fixed: object ids must survive restarts


def app_principal(settings: Settings) -> Principal:
    """The service principal of the sandbox's app registration (stable for a state directory).

    >>> from dwlib.sandbox.state import Settings
    >>> s = Settings(profile="new-new", rows=0)
    >>> app_principal(s).app_id == s.client_id
    True
    """
    oid = str(uuid.uuid5(_NS, f"{settings.tenant_id}/sp/{settings.client_id}"))
    return Principal(oid=oid, tenant_id=settings.tenant_id, kind="app", app_id=settings.client_id,
                     name=APP_NAME)


def consultant(settings: Settings, app_id: str = "") -> Principal:
    """The user who signs in with the device code flow (a consultant of the tenant).

    >>> from dwlib.sandbox.state import Settings
    >>> consultant(Settings(profile="new-new", rows=0)).name
    'consultant@dwsandbox.onmicrosoft.com'
    """
    oid = str(uuid.uuid5(_NS, f"{settings.tenant_id}/user/{CONSULTANT_UPN}"))
    return Principal(oid=oid, tenant_id=settings.tenant_id, kind="user",
                     app_id=app_id or settings.client_id, name=CONSULTANT_UPN)


class TokenError(Exception):
    """A token request Entra ID would refuse; rendered as an AADSTS-style JSON error.

    >>> TokenError("invalid_client", 7000215, "Invalid client secret provided.", 401).status
    401
    """

    def __init__(self, error: str, aadsts: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error, self.aadsts, self.message, self.status = error, aadsts, message, status


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _DeviceCode:
    client_id: str
    resource: str
    scopes: tuple[str, ...]
    issued_at: float


class EntraIdentity:
    """The sandbox tenant: issues tokens and checks them (implements `context.Identity`).

    >>> import tempfile, pathlib
    >>> from dwlib.sandbox.state import Settings
    >>> from dwlib.sandbox.server import ensure_credentials
    >>> paths = Paths(pathlib.Path(tempfile.mkdtemp())); ensure_credentials(paths)
    >>> ident = EntraIdentity(paths, Settings(profile="new-new", rows=0), "https://127.0.0.1:1")
    >>> ident.token_endpoint.endswith("/oauth2/v2.0/token")
    True
    """

    def __init__(self, paths: Paths, settings: Settings, base_url: str) -> None:
        self.settings = settings
        self.base_url = base_url
        self._key = paths.identity_key.read_bytes()
        self._secret = paths.client_secret.read_text().strip()
        cert = x509.load_pem_x509_certificate(paths.client_cert.read_bytes())
        self._cert_key = cert.public_key()
        # The thumbprints Entra keeps for a registered certificate credential.
        self._thumbprints = {_b64url(cert.fingerprint(hashes.SHA1())),
                             _b64url(cert.fingerprint(hashes.SHA256()))}
        self._device_codes: dict[str, _DeviceCode] = {}

    # --- URLs -------------------------------------------------------------------------------------

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.settings.tenant_id}"

    @property
    def issuer(self) -> str:
        return f"{self.authority}/v2.0"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def resources(self) -> tuple[str, ...]:
        """The resources (audiences) this tenant issues tokens for."""
        return (f"{self.base_url}/dataverse", f"{self.base_url}/finops", INTEGRATOR_APP, LCS_RESOURCE,
                BAP_RESOURCE)

    def openid_configuration(self) -> dict[str, Any]:
        """The discovery document msal reads before its first token request."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.authority}/oauth2/v2.0/authorize",
            "token_endpoint": self.token_endpoint,
            "device_authorization_endpoint": f"{self.authority}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{self.authority}/discovery/v2.0/keys",
            "userinfo_endpoint": f"{self.authority}/openid/userinfo",
            "end_session_endpoint": f"{self.authority}/oauth2/v2.0/logout",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "grant_types_supported": ["client_credentials", "refresh_token",
                                      "urn:ietf:params:oauth:grant-type:device_code"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["HS256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "name", "oid", "tid",
                                 "preferred_username"],
            "tenant_region_scope": "EU",
        }

    # --- issuing ----------------------------------------------------------------------------------

    def issue(self, principal: Principal, audience: str) -> dict[str, Any]:
        """A token response (`access_token`, `expires_in`, …) for `principal` and `audience`.

        Users also get `scope`, `refresh_token`, `id_token` and `client_info`, as from Entra.
        """
        now = int(time.time())
        lifetime = int(self.settings.token_lifetime_s)
        claims: dict[str, Any] = {
            "aud": audience, "iss": self.issuer, "iat": now, "nbf": now, "exp": now + lifetime,
            "tid": principal.tenant_id, "oid": principal.oid, "sub": principal.oid,
            "appid": principal.app_id, "azp": principal.app_id, "idtyp": principal.kind,
            "ver": "2.0", "uti": secrets.token_urlsafe(16),
        }
        if principal.is_app:
            claims["app_displayname"] = principal.name
        else:
            claims.update(name="Sandbox Consultant", upn=principal.name,
                          preferred_username=principal.name, scp="user_impersonation")
        body: dict[str, Any] = {
            "token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
            "access_token": jwt.encode(claims, self._key, algorithm="HS256"),
        }
        if not principal.is_app:
            body["scope"] = f"{audience}/user_impersonation"
            body["refresh_token"] = jwt.encode(
                {"typ": "refresh", "oid": principal.oid, "tid": principal.tenant_id,
                 "appid": principal.app_id, "exp": now + REFRESH_TOKEN_TTL_S, "iat": now},
                self._key, algorithm="HS256")
            body["id_token"] = jwt.encode(
                {"aud": principal.app_id, "iss": self.issuer, "iat": now, "nbf": now,
                 "exp": now + lifetime, "sub": principal.oid, "oid": principal.oid,
                 "tid": principal.tenant_id, "name": "Sandbox Consultant",
                 "preferred_username": principal.name, "ver": "2.0"},
                self._key, algorithm="HS256")
            body["client_info"] = _b64url(
                json.dumps({"uid": principal.oid, "utid": principal.tenant_id}).encode())
        return body

    # --- validating -------------------------------------------------------------------------------

    def authenticate(self, request: Request, audience: str) -> Principal:
        """The principal of the request's bearer token for `audience`, or raise AuthError.

        in a route: principal = sbx.identity.authenticate(request, sbx.dataverse_url)
        """
        header = request.headers.get("authorization", "")
        if not header:
            raise AuthError("missing", "The request has no 'Authorization: Bearer <token>' header.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip().count(".") != 2:
            raise AuthError("malformed", "The Authorization header is not 'Bearer <JWT>'.")
        try:
            claims = jwt.decode(token.strip(), self._key, algorithms=["HS256"], audience=audience,
                                issuer=self.issuer, options={"require": ["exp", "aud", "oid", "tid"]})
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "The token's signature is not valid.") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "The token is expired: acquire a new one.") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong_audience", f"The token is not for this service: request scope "
                                              f"'{audience}/.default'.") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong_tenant", "The token was issued by another tenant.") from None
        except jwt.PyJWTError:
            raise AuthError("malformed", "The bearer token is not a valid access token.") from None
        if claims["tid"] != self.settings.tenant_id:
            raise AuthError("wrong_tenant", "The token was issued by another tenant.")
        user = claims.get("idtyp") == "user"
        return Principal(
            oid=claims["oid"], tenant_id=claims["tid"], kind="user" if user else "app",
            app_id=claims.get("appid", ""), name=claims.get("upn" if user else "app_displayname", ""),
            audience=claims["aud"], scopes=tuple(claims.get("scp", "").split()),
        )

    # --- token endpoint grants --------------------------------------------------------------------

    def _resource(self, scope: str, *, app_only: bool) -> tuple[str, tuple[str, ...]]:
        """The single resource a scope string asks for, and the requested scopes."""
        scopes = tuple(scope.split())
        resource_scopes = [s for s in scopes if s.lower() not in _OIDC_SCOPES]
        if len(resource_scopes) != 1 or "/" not in resource_scopes[0]:
            raise TokenError("invalid_scope", 70011,
                             f"The provided value for the input parameter 'scope' is not valid. "
                             f"The scope {scope} is not valid.")
        resource, _, permission = resource_scopes[0].rpartition("/")
        if app_only and permission != ".default":
            raise TokenError("invalid_scope", 1002012,
                             f"The provided value for scope {scope} is not valid. Client credential flows "
                             "must have a scope value with /.default suffixed to the resource identifier "
                             "(application ID URI).")
        known = {r.lower(): r for r in self.resources}
        canonical = known.get(resource.rstrip("/").lower())
        if canonical is None:
            raise TokenError("invalid_resource", 500011,
                             f"The resource principal named {resource} was not found in the tenant named "
                             f"{self.settings.tenant_id}. This can happen if the application has not been "
                             "installed by the administrator of the tenant or consented to by any user in "
                             "the tenant. You might have sent your authentication request to the wrong "
                             "tenant.")
        return canonical, scopes

    def _check_client(self, client_id: str, *, public: bool) -> None:
        allowed = {self.settings.client_id, DUALWRITE_CLIENT_ID} if public else {self.settings.client_id}
        if client_id not in allowed:
            raise TokenError("unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in the directory "
                             f"'{self.settings.tenant_id}'. This can happen if the application has not been "
                             "installed by the administrator of the tenant or consented to by any user in "
                             "the tenant. You may have sent your authentication request to the wrong tenant.")

    def _check_assertion(self, assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise TokenError("invalid_client", 50027, "JWT token is invalid or malformed.", 401) from None
        # msal pads its base64url thumbprints; compare without padding.
        thumbprint = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
        if thumbprint not in self._thumbprints:
            raise TokenError("invalid_client", 700027,
                             "The certificate with identifier used to sign the client assertion is not "
                             f"registered on application. [Reason - The key was not found., Thumbprint of "
                             f"key used by client: '{thumbprint}']", 401)
        try:
            jwt.decode(assertion, self._cert_key, algorithms=["RS256", "PS256"],  # type: ignore[arg-type]
                       audience=self.token_endpoint, issuer=self.settings.client_id,
                       options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.InvalidSignatureError:
            raise TokenError("invalid_client", 700027,
                             "Client assertion failed signature validation.", 401) from None
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise TokenError("invalid_client", 700024,
                             "Client assertion is not within its valid time range.", 401) from None
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_client", 50027,
                             f"JWT token is invalid or malformed: {exc}.", 401) from None

    def client_credentials(self, form: dict[str, str]) -> dict[str, Any]:
        """Grant `client_credentials` with `client_secret` or a certificate `client_assertion`."""
        client_id = form.get("client_id", "")
        self._check_client(client_id, public=False)
        if "client_assertion" in form:
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                raise TokenError("invalid_request", 50027, "The client_assertion_type is not supported.")
            self._check_assertion(form["client_assertion"])
        elif "client_secret" in form:
            if not secrets.compare_digest(form["client_secret"].encode(), self._secret.encode()):
                raise TokenError("invalid_client", 7000215,
                                 "Invalid client secret provided. Ensure the secret being sent in the "
                                 "request is the client secret value, not the client secret ID, for a "
                                 f"secret added to app '{client_id}'.", 401)
        else:
            raise TokenError("invalid_client", 7000218,
                             "The request body must contain the following parameter: 'client_assertion' or "
                             "'client_secret'.", 401)
        resource, _ = self._resource(form.get("scope", ""), app_only=True)
        return self.issue(app_principal(self.settings), resource)

    def device_authorization(self, form: dict[str, str]) -> dict[str, Any]:
        """Start a device code flow (`/oauth2/v2.0/devicecode`)."""
        client_id = form.get("client_id", "")
        self._check_client(client_id, public=True)
        resource, scopes = self._resource(form.get("scope", ""), app_only=False)
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
        self._device_codes[device_code] = _DeviceCode(client_id, resource, scopes, time.monotonic())
        uri = f"{self.base_url}/devicelogin"
        return {
            "user_code": user_code, "device_code": device_code, "verification_uri": uri,
            "expires_in": DEVICE_CODE_TTL_S, "interval": 1,
            "message": f"To sign in, use a web browser to open the page {uri} and enter the code "
                       f"{user_code} to authenticate.",
        }

    def device_code(self, form: dict[str, str]) -> dict[str, Any]:
        """Poll a device code flow: pending until the (automatic) approval, then a user token."""
        flow = self._device_codes.get(form.get("device_code", ""))
        if flow is None or flow.client_id != form.get("client_id"):
            raise TokenError("invalid_grant", 70000, "Provided grant is invalid or malformed.")
        age = time.monotonic() - flow.issued_at
        if age > DEVICE_CODE_TTL_S:
            del self._device_codes[form["device_code"]]
            raise TokenError("expired_token", 70020,
                             "The provided value for the input parameter 'device_code' is not valid. "
                             "This device code has expired.")
        if age < self.settings.device_code_approve_after_s:
            raise TokenError("authorization_pending", 70016,
                             "OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
        del self._device_codes[form["device_code"]]
        return self.issue(consultant(self.settings, flow.client_id), flow.resource)

    def refresh(self, form: dict[str, str]) -> dict[str, Any]:
        """Grant `refresh_token` (msal's silent renewal of a user token)."""
        try:
            claims = jwt.decode(form.get("refresh_token", ""), self._key, algorithms=["HS256"])
        except jwt.PyJWTError:
            claims = {}
        if claims.get("typ") != "refresh" or claims.get("appid") != form.get("client_id"):
            raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        resource, _ = self._resource(form.get("scope", ""), app_only=False)
        return self.issue(consultant(self.settings, claims["appid"]), resource)

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        """Dispatch a token request on its `grant_type`."""
        grants = {
            "client_credentials": self.client_credentials,
            "urn:ietf:params:oauth:grant-type:device_code": self.device_code,
            "refresh_token": self.refresh,
        }
        grant = form.get("grant_type")
        if not grant:
            raise TokenError("invalid_request", 900144,
                             "The request body must contain the following parameter: 'grant_type'.")
        if grant not in grants:
            raise TokenError("unsupported_grant_type", 70003,
                             f"The app requested an unsupported grant type '{grant}'.")
        return grants[grant](form)


# --- HTTP -----------------------------------------------------------------------------------------


def _error(exc: TokenError, request: Request) -> JSONResponse:
    now = datetime.now(UTC)
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    description = (f"AADSTS{exc.aadsts}: {exc.message}\r\nTrace ID: {trace_id}\r\n"
                   f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}")
    return JSONResponse(
        {"error": exc.error, "error_description": description, "error_codes": [exc.aadsts],
         "timestamp": stamp, "trace_id": trace_id, "correlation_id": correlation_id},
        status_code=exc.status, headers={"Cache-Control": "no-store"})


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def routes(sbx: Sandbox) -> list[BaseRoute]:
    """The identity endpoints of the tenant `sbx.settings.tenant_id` (mounted at the root).

    Starlette(routes=[*identity.routes(sbx), ...])  # sbx.identity is an EntraIdentity
    """
    ident = sbx.identity
    assert isinstance(ident, EntraIdentity), "server.py gives the sandbox an EntraIdentity"

    def tenant_ok(request: Request) -> None:
        tenant = request.path_params["tenant"]
        if tenant != sbx.settings.tenant_id:
            raise TokenError("invalid_request", 90002,
                             f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant "
                             "ID and are signing into the correct cloud.")

    async def discovery(request: Request) -> Response:
        try:
            tenant_ok(request)
        except TokenError as exc:
            return _error(exc, request)
        return JSONResponse(ident.openid_configuration())

    async def keys(request: Request) -> Response:
        # Access tokens are HMAC-signed: there is no public key to publish.
        return JSONResponse({"keys": []})

    def endpoint(handler: Any) -> Any:
        async def run(request: Request) -> Response:
            try:
                tenant_ok(request)
                result = handler(await _form(request))
            except TokenError as exc:
                return _error(exc, request)
            return JSONResponse(result, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
        return run

    async def devicelogin(request: Request) -> Response:
        wait = sbx.settings.device_code_approve_after_s
        return HTMLResponse(f"<p>The sandbox approves device codes by itself after {wait:g} s "
                            f"for {CONSULTANT_UPN}.</p>")

    return [
        Route("/{tenant}/v2.0/.well-known/openid-configuration", discovery, methods=["GET"]),
        Route("/{tenant}/discovery/v2.0/keys", keys, methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", endpoint(ident.token), methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/devicecode", endpoint(ident.device_authorization), methods=["POST"]),
        Route("/devicelogin", devicelogin, methods=["GET"]),
    ]
