"""Documented reads of the platforms around the two environments: Lifecycle Services (the F&O
environment's metadata: application and platform build, type) and the Power Platform admin API
(environments: SKU, location, linked apps). The preflight's version, trial and geography checks
read them.

LCS answers "always 200 OK" unless unauthenticated: `IsSuccess` false carries the error
(api-surface.md §6.1). Its API needs a delegated token for the LCS resource; the Power Platform
admin API a token for `https://service.powerapps.com/` (§6.2).

Example:
    >>> PlatformClient(None, "https://lcsapi.lcs.dynamics.com", None, BAP_URL).lcs_configured
    False
    >>> release_of("10.0.1935.92"), release_of("10.0.38")
    ((10, 0, 1935, 92), (10, 0, 38))
"""

from __future__ import annotations

from typing import Any

import httpx

from .errors import ClientError, HttpError, connection_lost

LCS_URL = "https://lcsapi.lcs.dynamics.com"
LCS_RESOURCE = LCS_URL  # the LCS API is its own resource (user_impersonation)
LCS_VERSION = "2017-09-15"  # x-ms-version, required
BAP_URL = "https://api.bap.microsoft.com"
BAP_RESOURCE = "https://service.powerapps.com"
BAP_ENVIRONMENTS = "providers/Microsoft.BusinessAppPlatform/scopes/admin/environments"
BAP_VERSION = "2020-10-01"


def release_of(version: str) -> tuple[int, ...]:
    """A dotted version as numbers (ClientError when it is not one)."""
    try:
        return tuple(int(p) for p in version.strip().split("."))
    except ValueError:
        raise ClientError(f"not a version: {version!r}",
                          fix="read the version in LCS (Environment details) or F&O (Help > About)") from None


class PlatformClient:
    """LCS environment metadata and Power Platform admin environments (each optional: a client is
    None when the run has no access to that API, and its reads then raise ClientError saying so)."""

    def __init__(self, lcs: httpx.Client | None, lcs_url: str, bap: httpx.Client | None,
                 bap_url: str) -> None:
        self.lcs = lcs
        self.lcs_url = lcs_url.rstrip("/")
        self.bap = bap
        self.bap_url = bap_url.rstrip("/")

    @property
    def lcs_configured(self) -> bool:
        return self.lcs is not None

    def _get(self, http: httpx.Client | None, url: str, what: str, fix: str, **kwargs: Any) -> Any:
        if http is None:
            raise ClientError(f"{what} cannot be read: no access configured", fix=fix)
        try:
            response = http.get(url, **kwargs)
        except httpx.TransportError as exc:
            raise connection_lost(exc, method="GET", url=url, repeatable=True) from None
        if response.status_code >= 300:
            try:
                error = response.json().get("error") or {}
                code, message = str(error.get("code", "")), str(error.get("message", response.text[:300]))
            except ValueError:
                code, message = "", response.text[:300]
            raise HttpError(response.status_code, code, message, method="GET", url=url,
                            request_id=response.headers.get("x-ms-request-id", ""), fix=fix)
        return response.json()

    def finops_environment(self, project_id: int, environment_id: str) -> dict[str, Any]:
        """LCS `environmentinfo/v1/detail` of one environment (`CurrentApplicationBuildVersion`,
        `CurrentPlatformVersion`, `EnvironmentType`, …); ClientError when LCS reports a failure."""
        url = f"{self.lcs_url}/environmentinfo/v1/detail/project/{project_id}/"
        fix = ("set environments.lcs_project_id and lcs_environment_id, and sign in with a user who is "
               "Project Owner or Environment Manager in the LCS project")
        body = self._get(self.lcs, url, "the F&O environment's LCS metadata", fix,
                         params={"environmentId": environment_id, "page": 1},
                         headers={"x-ms-version": LCS_VERSION})
        if not body.get("IsSuccess"):
            raise ClientError(f"LCS answered: {body.get('ErrorMessage') or 'IsSuccess false'}", fix=fix)
        found = [e for e in body.get("Data") or [] if str(e.get("EnvironmentId")) == environment_id]
        if not found:
            raise ClientError(f"LCS project {project_id} has no environment {environment_id}", fix=fix)
        return dict(found[0])

    def environments(self) -> list[dict[str, Any]]:
        """Every Power Platform environment the admin API shows (`properties.environmentSku`,
        `location`, `linkedEnvironmentMetadata`, `linkedAppMetadata`)."""
        url = f"{self.bap_url}/{BAP_ENVIRONMENTS}"
        fix = ("sign in with a Power Platform administrator (or an app registered as a Power Platform "
               "management app)")
        body = self._get(self.bap, url, "the Power Platform environments", fix,
                         params={"api-version": BAP_VERSION})
        return list(body.get("value") or [])
