"""The sandbox's persisted settings and the paths of its state directory.

Example:
    >>> from pathlib import Path
    >>> paths = Paths(Path("/tmp/sbx"))
    >>> paths.connection.name
    'connection.yaml'
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROFILES = (
    "new-new",
    "new-existing",
    "new-data-new",
    "new-data-existing",
    "existing-new",
    "existing-existing",
    # The operations runbooks' sandboxes: F&O with data, already linked (`dwlib.sandbox.prepare`).
    "refresh-relink",
    "maintenance",
    "add-legal-entity",
)


@dataclass(frozen=True)
class Paths:
    """Where each file of a sandbox state directory lives (see docs/sandbox.md)."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "state.sqlite"

    @property
    def settings(self) -> Path:
        return self.root / "sandbox.json"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def client_secret(self) -> Path:
        return self.root / "client_secret"

    @property
    def client_cert(self) -> Path:
        return self.root / "client_cert.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key.pem"

    @property
    def identity_key(self) -> Path:
        return self.root / "identity.key"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin.key"

    @property
    def pid(self) -> Path:
        return self.root / "sandbox.pid"

    @property
    def log(self) -> Path:
        return self.root / "sandbox.log"

    @property
    def connection(self) -> Path:
        return self.root / "connection.yaml"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"


@dataclass
class Limits:
    """Dataverse service protection limits per user (documented defaults) and F&O throttling."""

    requests: int = 6000
    window_s: float = 300.0
    execution_s: float = 1200.0
    concurrency: int = 52
    # F&O resource-based throttling has no published number: concurrent F&O OData requests allowed.
    finops_concurrency: int = 32
    # x-ms-dop-hint, the degree of parallelism the service recommends (8 in a captured response);
    # answered no higher than `concurrency`, whose limit a client following the hint "should rarely hit".
    dop: int = 8

    @classmethod
    def parse(cls, spec: str) -> Limits:
        """Parse `requests=100,window=10,exec=5,concurrency=4,finops=8,dop=4` (any subset) over the
        defaults.

        >>> Limits.parse("requests=100,window=10").requests
        100
        """
        names = {"requests": "requests", "window": "window_s", "exec": "execution_s",
                 "concurrency": "concurrency", "finops": "finops_concurrency", "dop": "dop"}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, raw = part.partition("=")
            if not sep or key not in names:
                raise ValueError(
                    f"bad limits item {part!r}: use requests=N,window=SECONDS,exec=SECONDS,concurrency=N,"
                    "finops=N,dop=N"
                )
            attr = names[key]
            try:
                counts = ("requests", "concurrency", "finops_concurrency", "dop")
                values[attr] = int(raw) if attr in counts else float(raw)
            except ValueError:
                raise ValueError(f"bad limits value {part!r}: {key} takes a number") from None
            if values[attr] <= 0:
                raise ValueError(f"bad limits value {part!r}: {key} must be greater than 0")
        return cls(**values)


@dataclass
class Settings:
    """What a sandbox keeps across restarts (`sandbox.json`)."""

    profile: str
    rows: int
    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    finops_environment_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    lcs_project_id: int = field(default_factory=lambda: 1_000_000 + secrets.randbelow(9_000_000))
    port: int = 0
    faults: str = ""
    limits: Limits = field(default_factory=Limits)
    token_lifetime_s: int = 3599
    device_code_approve_after_s: float = 1.0
    # Language locale of the DMF source data formats when seeded (e.g. nl-NL: decimal commas and
    # day-month-year dates in packages); a runbook reads it from F&O, a consultant can change it there.
    dmf_locale: str = "en-us"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Settings:
        data = json.loads(path.read_text())
        data["limits"] = Limits(**data.get("limits", {}))
        return cls(**data)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (secrets, keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def new_secret() -> str:
    """A client-secret-like random string (the shape Entra ID issues)."""
    return secrets.token_urlsafe(30)
