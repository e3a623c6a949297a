"""The sandbox process: state directory, configuration, connection file, restart, request ids."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dwlib.errors import SandboxError
from dwlib.sandbox import control, server
from dwlib.sandbox.state import Paths, Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"
SECRETS = ("server_key", "client_secret", "client_key", "identity_key", "admin_key")


def test_credentials_are_private_and_kept(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    server.ensure_credentials(paths)
    for name in SECRETS:
        assert getattr(paths, name).stat().st_mode & 0o777 == 0o600, name
    files = ("ca", "server_cert", "client_cert", *SECRETS)
    before = {name: getattr(paths, name).read_bytes() for name in files}
    server.ensure_credentials(paths)
    assert {name: getattr(paths, name).read_bytes() for name in files} == before
    # The leaf is for 127.0.0.1 and chains to the CA clients are told to trust.
    ctx = ssl.create_default_context(cafile=str(paths.ca))
    ctx.load_cert_chain(paths.server_cert, paths.server_key)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"profile": "old-old"}, "unknown profile 'old-old': use one of new-new"),
        ({"profile": "new-new", "rows": -1}, "--rows must be 0 or more"),
        ({"profile": "new-new", "port": 70000}, "--port must be between 0 and 65535"),
        ({"profile": "new-new", "faults": "429=lots"}, "--faults: bad fault item '429=lots'"),
        ({"profile": "new-new", "limits": "requests=0"}, "--limits: bad limits value 'requests=0'"),
        ({}, "give --profile"),
    ],
)
def test_configure_refuses_bad_options(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(SandboxError, match=re.escape(message)):
        server.configure(tmp_path / "sbx", **options)
    assert not (tmp_path / "sbx" / "sandbox.json").exists()


def test_configure_keeps_profile_and_rows_of_a_directory(tmp_path: Path) -> None:
    first = server.configure(tmp_path, profile="new-existing", rows=7, faults="latency=5ms")
    again = server.configure(tmp_path, limits="requests=9")
    assert (again.tenant_id, again.profile, again.rows, again.faults) == (first.tenant_id, "new-existing", 7,
                                                                         "latency=5ms")
    assert Settings.load(Paths(tmp_path).settings).limits.requests == 9
    with pytest.raises(SandboxError, match="holds a sandbox of profile 'new-existing'"):
        server.configure(tmp_path, profile="new-new")
    with pytest.raises(SandboxError, match="was seeded with 7 rows"):
        server.configure(tmp_path, rows=8)


def test_bind_reports_a_taken_port() -> None:
    taken = server.bind(0)
    try:
        with pytest.raises(SandboxError, match=r"port \d+ on 127.0.0.1 is in use: choose another --port"):
            server.bind(taken.getsockname()[1])
    finally:
        taken.close()


def test_connection_file_has_the_documented_keys(sandbox: dict[str, Any]) -> None:
    documented = re.search(r"`connection.yaml` keys: (.*?)\. Paths", DOCS.read_text(), re.S)
    assert documented
    assert set(sandbox) == set(re.findall(r"`(\w+)`", documented.group(1)))
    for key in ("client_secret_file", "ca_bundle", "admin_key_file", "state_dir"):
        assert Path(sandbox[key]).is_absolute() and Path(sandbox[key]).exists()
    assert sandbox["dataverse_url"] == f"https://127.0.0.1:{sandbox['port']}/dataverse"


def test_every_response_has_a_request_id(sandbox: dict[str, Any]) -> None:
    with control.http_client(sandbox) as http:
        for url in (f"{sandbox['admin_url']}/health", f"{sandbox['dataverse_url']}/api/data/v9.2/WhoAmI",
                    f"{sandbox['authority']}/v2.0/.well-known/openid-configuration",
                    f"https://127.0.0.1:{sandbox['port']}/no/such/thing"):
            response = http.get(url)
            assert re.fullmatch(r"[0-9a-f-]{36}", response.headers["x-ms-service-request-id"]), url
            assert response.headers["req_id"] == response.headers["x-ms-service-request-id"]


def test_restart_keeps_data_ca_tenant_and_tokens(start_sandbox: Callable[..., dict[str, Any]],
                                                 sandbox_token: Callable[..., str]) -> None:
    conn = start_sandbox("existing-existing", rows=12, fresh=True)
    root = Path(conn["state_dir"])
    token = sandbox_token(conn)
    ca = Path(conn["ca_bundle"]).read_bytes()
    api = f"{conn['dataverse_url']}/api/data/v9.2"
    auth = {"Authorization": f"Bearer {token}"}
    with control.http_client(conn) as http:
        created = http.post(f"{api}/accounts", headers=auth, json={"name": "Kept", "accountnumber": "KEEP-1"})
    assert created.status_code == 204
    rows = control.table_rows(root)
    assert rows["accounts"] == 13
    assert control.stop(root)
    assert not (root / "connection.yaml").exists() and not (root / "sandbox.pid").exists()
    assert control.table_rows(root) == rows  # readable while stopped
    # Same port, same URLs: tokens are bound to the URL (audience), and the identity key is kept.
    again = control.start(root=root, port=conn["port"]).connection
    assert Path(again["ca_bundle"]).read_bytes() == ca
    assert (again["tenant_id"], again["client_id"]) == (conn["tenant_id"], conn["client_id"])
    assert control.table_rows(root) == rows  # not seeded twice
    with control.http_client(again) as http:  # the old CA still verifies, the old token still works
        response = http.get(f"{api}/accounts({created.headers['odata-entityid'].rsplit('(', 1)[1]}",
                            headers=auth)
    assert response.status_code == 200 and response.json()["name"] == "Kept"
    assert control.stop(root) and not control.stop(root)


def test_start_on_a_running_directory_changes_nothing(sandbox: dict[str, Any]) -> None:
    again = control.start(root=Path(sandbox["state_dir"]), faults="5xx=1")
    assert again.already_running and again.connection == sandbox
    assert control.admin(sandbox, "faults")["faults"]["server_error"] == 0.0
    with pytest.raises(SandboxError, match="already running"):
        control.serve(root=Path(sandbox["state_dir"]))


def test_a_dying_process_reports_its_log(tmp_path: Path) -> None:
    server.configure(tmp_path, profile="new-new", rows=0)
    server.ensure_credentials(Paths(tmp_path))
    Paths(tmp_path).client_cert.write_text("not a certificate")
    with pytest.raises(SandboxError, match=r"(?s)exited \(code 1\) before it answered.*last lines of"):
        control.start(root=tmp_path, timeout=60)
    assert not control.status(tmp_path).running


def test_status_of_a_running_sandbox(sandbox: dict[str, Any]) -> None:
    st = control.status(Path(sandbox["state_dir"]), with_rows=True)
    assert st.running and st.pid == sandbox["pid"] and st.connection == sandbox
    assert st.profile == "existing-existing" and st.rows["contacts"] == 50
    assert yaml.safe_load(Path(sandbox["state_dir"], "connection.yaml").read_text()) == sandbox


def test_a_sandbox_stops_when_its_owner_ends(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        control.start("new-new", root=tmp_path, rows=0, port=0, owner_pid=owner.pid)
        assert control.status(tmp_path).running
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 20
    while control.status(tmp_path).running:
        assert time.monotonic() < deadline, "the sandbox outlived its owner"
        time.sleep(0.2)
    assert not (tmp_path / "connection.yaml").exists()  # a graceful stop
    control.stop(tmp_path)
