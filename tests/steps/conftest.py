"""Shared fixtures of the step tests: a `StepContext` wired to a running sandbox.

- `step_context(connection, *, params=None, consultant=None, timeout_s=5.0, poll_s=0.05, **fields)
  -> SandboxContext` builds the clients with `dw_helpers.session_for(connection)`, a `PortalAdmin`
  with a short `timeout_s`/`poll_s` whose `notify` appends each portal instruction to
  `ctx.instructions` and then calls `consultant(instruction)` if given (a test does the portal
  action there, e.g. with `dw_helpers.Consultant`, before the admin polls), and a fresh temporary
  evidence dir; `dry_run=False`. `params` are extra parameter keys merged over
  `{scenario: <profile>, sandbox: {dir: …}}` (dotted keys allowed, e.g. `{"legal_entities": ["USMF"]}`);
  `fields` set any other `StepContext` field (`dry_run=True`, `confirm=lambda what: True`, …).
  Sessions are closed at the end of the test. msal's token cache goes to a temporary
  XDG_CACHE_HOME (autouse), never the real home.
- `portal_player(connection) -> PortalPlayer`: a `consultant` that does every portal gate at once
  through the sandbox portal (`/_portal/…`) with `dwlib.sandbox.consultant.perform`, as
  `dw sandbox consultant` does: LCS link, legal entities and the table-map gates.
- `gateway_admin(ctx) -> GatewayAdmin`: the opt-in gateway admin for the context's sandbox (it reads
  the initial-sync errors the portal adapter cannot), signed in as the consultant (device code).

Example:
    def test_link(start_sandbox, step_context, portal_player):
        sandbox = start_sandbox("new-new", fresh=True)
        ctx = step_context(sandbox, consultant=portal_player(sandbox))
        assert STEPS["power-platform-integration"]().execute(ctx).status == StepStatus.PASSED
        assert ctx.instructions[0].title.startswith("Set up the Power Platform integration")
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dw_helpers import Consultant, run_basics, run_companies_map, session_for

from dwlib.clients import HttpConfig, make_client
from dwlib.clients.dualwrite import INTEGRATOR_APP, GatewayAdmin, Instruction, PortalAdmin
from dwlib.clients.session import Session
from dwlib.params import load_params
from dwlib.sandbox.consultant import perform
from dwlib.steps.base import StepContext


@dataclass
class SandboxContext(StepContext):
    """A `StepContext` that also keeps the portal instructions the admin showed."""

    instructions: list[Instruction] = field(default_factory=list)


MakeContext = Callable[..., SandboxContext]


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """msal token caches go to a temporary XDG_CACHE_HOME, never the real home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def step_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeContext]:
    """Factory of step contexts for sandbox connections (see the module docstring)."""
    sessions: list[Session] = []

    def make(connection: dict[str, Any], *, params: Mapping[str, Any] | None = None,
             consultant: Callable[[Instruction], None] | None = None,
             timeout_s: float = 5.0, poll_s: float = 0.05, **fields: Any) -> SandboxContext:
        root = Path(connection["ca_bundle"]).parent
        run_params = load_params({"scenario": connection["profile"], "sandbox": {"dir": str(root)},
                                  **run_basics(connection["profile"], params)}, params)
        session = session_for(connection)
        sessions.append(session)
        instructions: list[Instruction] = []

        def notify(instruction: Instruction) -> None:
            instructions.append(instruction)
            if consultant is not None:
                consultant(instruction)

        admin = PortalAdmin(session.dataverse, session.finops, notify=notify, timeout_s=timeout_s,
                            poll_s=poll_s)
        return SandboxContext(params=run_params, session=session, admin=admin,
                              evidence_dir=tmp_path_factory.mktemp("evidence"),
                              instructions=instructions, **{"dry_run": False, **fields})

    yield make
    for session in sessions:
        session.close()


class PortalPlayer:
    """Does what a portal instruction says, synchronously, as `dw sandbox consultant` does (`perform`)."""

    def __init__(self, consultant: Consultant) -> None:
        self.c = consultant

    def __call__(self, ins: Instruction) -> None:
        perform(self.c.connection, asdict(ins))


@pytest.fixture
def portal_player() -> Iterator[Callable[[dict[str, Any]], PortalPlayer]]:
    """Factory of `PortalPlayer`s for sandbox connections (closed after the test)."""
    consultants: list[Consultant] = []

    def make(connection: dict[str, Any]) -> PortalPlayer:
        consultants.append(Consultant(connection))
        return PortalPlayer(consultants[-1])

    yield make
    for c in consultants:
        c.close()


@pytest.fixture
def gateway_admin() -> Iterator[Callable[[SandboxContext], GatewayAdmin]]:
    """`gateway_admin(ctx)`: a `GatewayAdmin` for the context's sandbox (a consultant signed in
    with device code for the dual-write gateway), with the context's clients; closed after the test."""
    opened: list[Any] = []

    def make(ctx: SandboxContext) -> GatewayAdmin:
        assert ctx.params is not None and ctx.params.sandbox is not None and ctx.session is not None
        connection = yaml.safe_load((ctx.params.sandbox.dir / "connection.yaml").read_text())
        user = session_for(connection, method="device_code")
        http = make_client(HttpConfig(ca_bundle=Path(connection["ca_bundle"])),
                           auth=user.tokens.auth_for(INTEGRATOR_APP))
        opened.extend([user, http])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "unsupported by Microsoft": known here
            return GatewayAdmin(ctx.session.dataverse, ctx.session.finops, http=http,
                                gateway_url=connection["gateway_url"], timeout_s=30, poll_s=0.05)

    yield make
    for thing in opened:
        thing.close()


@pytest.fixture
def linked_sandbox(start_sandbox: Callable[..., dict[str, Any]]) -> Iterator[Callable[..., dict[str, Any]]]:
    """`linked_sandbox(profile, *, rows=50, legal_entities=None, **options)`: a fresh sandbox in the
    state the link steps leave: Power Platform integration set up, dual-write configured and linked
    for `legal_entities` (default: every F&O legal entity), the Legal entities (cdm_companies) map
    run with its initial sync (it brings the companies to Dataverse), no other map started.
    `options` go to `start_sandbox` (faults, limits)."""
    consultants: list[Consultant] = []

    def make(profile: str, *, rows: int = 50, legal_entities: list[str] | None = None,
             **options: Any) -> dict[str, Any]:
        connection = start_sandbox(profile, rows=rows, fresh=True, **options)
        consultants.append(Consultant(connection))
        c = consultants[-1]
        c.portal("POST", "/lcs/power-platform-integration")
        c.portal("POST", "/lcs/dual-write/configure")
        c.portal("POST", "/lcs/dual-write/link",
                 {"start_maps": False, **({"legal_entities": legal_entities} if legal_entities else {})})
        run_companies_map(c)
        return connection

    yield make
    for c in consultants:
        c.close()
