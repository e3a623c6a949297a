"""Parameters: YAML + overrides, every problem at once with its path, secret references, sandbox dirs."""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import pytest
import yaml
from pydantic import BaseModel

from dwlib.params import Params, ParamsError, load_params
from dwlib.params import load as params_load
from dwlib.secrets import SecretError, SecretRef, scrub

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Zq8~not-a-real-secret-but-long-enough"


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scenario": "existing-existing",
        "environments": {"tenant_id": "contoso.onmicrosoft.com",
                         "dataverse_url": "https://contoso.crm.dynamics.com/",
                         "finops_url": "https://contoso.operations.dynamics.com"},
        "auth": {"client_id": "11111111-2222-3333-4444-555555555555", "client_secret": "env:DW_TEST_SECRET"},
        "legal_entities": ["DAT"],  # an existing F&O: the legal entities to keep are the file's to say
    }
    data.update(extra)
    return data


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[ParamsError]) -> dict[str, str]:
    return {re.sub(r" \(line \d+\)", "", path): msg for path, msg in exc.value.problems}


def test_minimal_parameters_get_defaults_and_normalised_urls() -> None:
    p = load_params(minimal())
    assert p.environments.dataverse_url == "https://contoso.crm.dynamics.com"
    assert p.environments.authority_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    assert p.auth.method == "client_secret"
    assert p.options.batch_size == 1000 and p.options.dry_run is None and p.dry_run is True
    assert p.bootstrap.tables == ["accounts", "contacts"]


def test_misspelt_key_gets_did_you_mean_with_path_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(minimal()) + "options:\n  concurency: 3\n")
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    (where, msg), = exc.value.problems
    line = path.read_text().splitlines().index("  concurency: 3") + 1
    assert where == f"options.concurency (line {line})"
    assert msg == "unknown key; did you mean 'concurrency'?"
    assert str(path) in str(exc.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
scenario: existing-existng
environments:
  tenant_id: t
  dataverse_url: http://plain.example
  finops_url: https://fo.example
auth:
  client_id: abc
  client_secert: env:X
legal_entities: [USMF, TOOLONG]
table_maps:
  - Customers V3
  - {name: Contacts, initial_sync_master: crm}
options:
  http: {timeout_s: 0}
"""
    with pytest.raises(ParamsError) as exc:
        load_params(write(tmp_path, text))
    found = problems(exc)
    assert set(found) == {"scenario", "environments.dataverse_url", "auth.client_secert", "legal_entities[1]",
                          "table_maps[1].name", "table_maps[1].initial_sync_master", "options.http.timeout_s"}
    assert "did you mean 'existing-existing'" in found["scenario"]
    assert "https" in found["environments.dataverse_url"]
    assert "did you mean 'client_secret'" in found["auth.client_secert"]


def test_duplicate_keys_are_reported_with_the_rest(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "options: {dry_run: true}\noptions: {concurency: 2}\n"
    with pytest.raises(ParamsError) as exc:
        load_params(write(tmp_path, text))
    found = problems(exc)
    assert found["options"] == "duplicate key; keep one"
    assert "options.concurency" in found


def test_a_pasted_secret_is_refused_and_never_echoed(tmp_path: Path) -> None:
    data = minimal()
    data["auth"]["client_secret"] = SECRET
    with pytest.raises(ParamsError) as exc:
        load_params(data)
    assert problems(exc)["auth.client_secret"].startswith("must be a secret reference (env:NAME")
    assert SECRET not in "".join(traceback.format_exception(exc.value))


def test_credential_required_for_the_chosen_method() -> None:
    data = minimal()
    data["auth"] = {"method": "certificate", "client_id": "x"}
    with pytest.raises(ParamsError) as exc:
        load_params(data)
    assert problems(exc) == {"auth.certificate": "required when method is 'certificate'"}
    data["auth"] = {"method": "device_code", "client_id": "x"}
    assert load_params(data).auth.client_secret is None


def test_company_codes_accept_1_to_4_alphanumerics_and_warn_unless_3() -> None:
    p = load_params(minimal(legal_entities=["dat", "usmf", "A1"], bootstrap={"mapping": {"Sales BU": "Dat"}}))
    assert p.legal_entities == ["DAT", "USMF", "A1"]
    assert p.bootstrap.mapping == {"Sales BU": "DAT"}
    assert len(p.warnings) == 2
    assert p.warnings[0].startswith("company code USMF has 4 characters (legal_entities[1]);")
    assert p.warnings[1].startswith("company code A1 has 2 characters (legal_entities[2]);")
    for bad in ["", "US-MF", "USMFX"]:
        with pytest.raises(ParamsError) as exc:
            load_params(minimal(legal_entities=[bad]))
        assert "1-4 letters or digits" in problems(exc)["legal_entities[0]"]


def test_bootstrap_mapping_must_name_a_listed_legal_entity() -> None:
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(legal_entities=["DAT"], bootstrap={"mapping": {"France": "FRRT", "": "DAT",
                                                                          "Sales BU": "GBSI"}}))
    assert problems(exc) == {"bootstrap.mapping.France": "company FRRT is not in legal_entities",
                             'bootstrap.mapping["Sales BU"]': "company GBSI is not in legal_entities"}


def test_the_bootstrap_method_is_one_of_the_two_documented_ones() -> None:
    assert load_params(minimal()).bootstrap.method == "business-unit"  # the FAQ sample's method
    p = load_params(minimal(bootstrap={"method": "account-number", "customer_group": "30"}))
    assert (p.bootstrap.method, p.bootstrap.customer_group) == ("account-number", "30")
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(bootstrap={"method": "owner"}))
    assert "'business-unit' or 'account-number'" in problems(exc)["bootstrap.method"]


def test_overrides_take_dotted_paths_and_are_validated_too() -> None:
    p = load_params(minimal(), {"options.dry_run": True, "options.http.retry_attempts": 2})
    assert p.options.dry_run is True and p.options.http.retry_attempts == 2
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(), {"options.dryrun": True})
    assert problems(exc) == {"options.dryrun": "unknown key; did you mean 'dry_run'?"}


def test_the_run_retry_budget_has_a_default_and_must_cover_a_5_minute_retry_after() -> None:
    from dwlib.clients.http import HttpConfig

    p = load_params(minimal())
    assert p.options.http.retry_budget_s == 3600 and HttpConfig.from_params(p).retry_budget_s == 3600
    raised = load_params(minimal(), {"options.http.retry_budget_s": 900})
    assert HttpConfig.from_params(raised).retry_budget_s == 900
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(), {"options.http.retry_budget_s": 120})
    assert problems(exc)["options.http.retry_budget_s"].startswith(
        "must be 300 or more: a run must be able to wait out one 5-minute service protection window")
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(), {"options.http.retry_total_s": 1200, "options.http.retry_budget_s": 600})
    (where, message), = problems(exc).items()
    assert where == "options.http" and "retry_total_s (1200) is the waiting of one call" in message


def test_table_maps_accept_a_plain_name() -> None:
    p = load_params(minimal(table_maps=["Customers V3", {"name": "Vendors V2 (msdyn_vendors)",
                                                          "skip_initial_sync": True}]))
    found = [(m.name, m.skip_initial_sync) for m in p.table_maps]
    assert found == [("Customers V3", False), ("Vendors V2 (msdyn_vendors)", True)]


def test_a_table_map_name_must_name_a_map_of_the_catalogue(tmp_path: Path) -> None:
    typo = "  - {name: Customer grops, skip_initial_sync: true}"
    text = yaml.safe_dump(minimal()) + ("table_maps:\n  - customers-v3-accounts\n  - Customers V3\n"
                                        f"  - Contacts V2\n{typo}\n"
                                        "  - {name: Customers V3, defaults: {CUSTOMERGROUPID: '30'}}\n")
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    lines = path.read_text().splitlines()
    assert exc.value.problems == [
        (f"table_maps[2].name (line {lines.index('  - Contacts V2') + 1})",
         "no table map 'Contacts V2' in the catalogue; did you mean 'CDS Contacts V2 (contacts)'?"),
        (f"table_maps[3].name (line {lines.index(typo) + 1})",
         "no table map 'Customer grops' in the catalogue; did you mean 'Customer groups "
         "(msdyn_customergroups)'?"),
        (f"table_maps[4].name (line {len(lines)})",
         "Customers V3 stands for 2 maps; defaults belong to one: name it (Customers V3 (accounts) or "
         "Customers V3 (contacts))")]


def test_a_file_that_is_not_utf8_is_one_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    latin = "bootstrap:\n  mapping: {Société: DAT}\n".encode("latin-1")
    path.write_bytes(yaml.safe_dump(minimal()).encode() + latin)
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    line = yaml.safe_dump(minimal()).count("\n") + 2
    ((where, msg),) = exc.value.problems
    assert where == f"(line {line})" and msg.startswith("the file is not UTF-8 text: byte 0xe9 in column 17")
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(minimal()).encode())  # a byte order mark is UTF-8
    assert load_params(path).scenario == "existing-existing"


def test_company_references_the_file_gets_wrong_are_problems() -> None:
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(legal_entities=[], verify={"company": "USMF"}))
    assert list(problems(exc)) == ["legal_entities"]  # an existing F&O: which ones to keep?
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(scenario="new-existing", legal_entities=["USMF"]))
    assert "scenario new-existing creates a company" in problems(exc)["companies"]
    with pytest.raises(ParamsError) as exc:
        load_params(minimal(legal_entities=["USMF"], verify={"company": "GBSI"}))
    assert problems(exc) == {"verify.company": "company GBSI is not in the run's scope (USMF): choose one of "
                                               "them, or null"}
    new = load_params(minimal(scenario="new-existing", legal_entities=["USMF"], verify={"company": "DAT"},
                              companies=[{"code": "USMF", "name": "Contoso US"}]))
    assert new.verify.company == "DAT"  # a new F&O is connected for DAT


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    data = minimal()
    data["environments"]["ca_bundle"] = "ca.pem"
    assert load_params(data, base_dir=tmp_path).environments.ca_bundle == tmp_path / "ca.pem"
    with pytest.raises(ParamsError) as exc:
        load_params(data, base_dir=tmp_path / "elsewhere")
    assert problems(exc)["environments.ca_bundle"].startswith("no such file")


def fake_sandbox(root: Path) -> Path:
    root.mkdir()
    (root / "ca.pem").write_text("ca")
    (root / "client_secret").write_text(SECRET)
    (root / "client_cert.pem").write_text("cert")
    conn = {"tenant_id": "tid", "authority": "https://127.0.0.1:9/tid", "client_id": "cid",
            "client_secret_file": str(root / "client_secret"),
            "client_certificate_file": str(root / "client_cert.pem"),
            "client_private_key_file": str(root / "client_key.pem"), "ca_bundle": str(root / "ca.pem"),
            "dataverse_url": "https://127.0.0.1:9/dataverse", "finops_url": "https://127.0.0.1:9/finops"}
    (root / "connection.yaml").write_text(yaml.safe_dump(conn))
    return root


def test_a_sandbox_dir_supplies_urls_ca_and_a_secret_reference(tmp_path: Path) -> None:
    fake_sandbox(tmp_path / "sbx")
    p = load_params({"scenario": "new-new", "sandbox": {"dir": "sbx"}}, base_dir=tmp_path)
    assert p.environments.dataverse_url == "https://127.0.0.1:9/dataverse"
    assert p.environments.authority_url == "https://127.0.0.1:9/tid"
    assert p.environments.ca_bundle == tmp_path / "sbx" / "ca.pem"
    assert p.auth.client_id == "cid"
    assert str(p.auth.client_secret) == f"file:{tmp_path / 'sbx' / 'client_secret'}"
    assert p.auth.client_secret is not None and p.auth.client_secret.reveal() == SECRET
    cert = load_params({"scenario": "new-new", "sandbox": {"dir": "sbx"}, "auth": {"method": "certificate"}},
                       base_dir=tmp_path).auth.certificate
    assert cert is not None and cert.path == tmp_path / "sbx" / "client_cert.pem"
    own = load_params({"scenario": "new-new", "sandbox": {"dir": "sbx"},
                       "environments": {"finops_url": "https://fo.example"}}, base_dir=tmp_path)
    assert own.environments.finops_url == "https://fo.example"  # the file's own value wins


def test_a_sandbox_dir_without_connection_yaml_says_to_start_it(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as exc:
        load_params({"scenario": "new-new", "sandbox": {"dir": "nowhere"}}, base_dir=tmp_path)
    assert list(problems(exc)) == ["sandbox.dir"]
    assert "start the sandbox first (`dw sandbox start --dir nowhere`)" in str(exc.value)


def test_secrets_resolve_at_use_and_never_show_in_repr_or_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    p = load_params(minimal())
    monkeypatch.setenv("DW_TEST_SECRET", SECRET)
    assert p.auth.client_secret is not None
    assert p.auth.client_secret.reveal() == SECRET
    for text in (repr(p), str(p), p.model_dump_json(), str(p.model_dump())):
        assert SECRET not in text
        assert "env:DW_TEST_SECRET" in text
    assert scrub(f"oops {SECRET}") == "oops ***"


def test_secret_reference_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_text(SECRET + "\n")
    assert SecretRef.parse(f"file:{secret_file}").reveal() == SECRET

    class MemoryKeyring(keyring.backend.KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def get_password(self, service: str, username: str) -> str | None:
            return {("dwlib", "app"): SECRET}.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            raise NotImplementedError

        def delete_password(self, service: str, username: str) -> None:
            raise NotImplementedError

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        assert SecretRef.parse("keyring:dwlib/app").reveal() == SECRET
        with pytest.raises(SecretError, match="keyring set dwlib other"):
            SecretRef.parse("keyring:dwlib/other").reveal()
    finally:
        keyring.set_keyring(previous)
    monkeypatch.delenv("DW_TEST_UNSET", raising=False)
    with pytest.raises(SecretError, match="DW_TEST_UNSET is not set"):
        SecretRef.parse("env:DW_TEST_UNSET").reveal()
    with pytest.raises(SecretError, match="cannot read"):
        SecretRef.parse(f"file:{tmp_path / 'missing'}").reveal()
    for bad in ("plain-value", "vault:x", "keyring:no-slash", "env:"):
        with pytest.raises(SecretError):
            SecretRef.parse(bad)


def test_the_template_loads_and_documents_every_key() -> None:
    template = ROOT / "params" / "template.yaml"
    p = load_params(template, base_dir=ROOT)
    assert isinstance(p, Params)
    text = template.read_text()
    missing = [name for name in _field_names(Params) if not re.search(rf"(?m)^[ #-]*{name}:", text)]
    assert missing == []


def with_examples(text: str) -> tuple[str, int]:
    """The template with every commented example enabled, and how many there were. An example is the
    run of comment lines after a comment ending "Example:", at its indentation; uncommented, it
    replaces the active key it documents (the line after it, when that sets the same key)."""
    lines, out, examples, i = text.splitlines(), [], 0, 0
    while i < len(lines):
        out.append(lines[i])
        if not (lines[i].lstrip().startswith("#") and lines[i].rstrip().endswith("Example:")):
            i += 1
            continue
        indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
        i += 1
        block = []
        while i < len(lines) and lines[i].startswith(indent + "# "):
            block.append(indent + lines[i][len(indent) + 2:])
            i += 1
        key = block[0].strip().split(":")[0]
        if i < len(lines) and lines[i].startswith(f"{indent}{key}:"):
            i += 1  # the active value the example stands in for
        out += block
        examples += 1
    return "\n".join(out) + "\n", examples


def test_the_template_runs_with_its_commented_examples_enabled(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".secrets").mkdir(parents=True)
    (tmp_path / "home" / ".secrets" / "dw-app-cert.pem").write_text("the example's certificate")
    (tmp_path / ".dw" / "sandbox").mkdir(parents=True)
    fake_sandbox(tmp_path / ".dw" / "sandbox" / "existing-existing")  # the example's sandbox, started
    text, examples = with_examples((ROOT / "params" / "template.yaml").read_text())
    assert examples == 4  # certificate, companies, a map's defaults, sandbox
    p = load_params(write(tmp_path, text), base_dir=tmp_path)
    assert p.auth.certificate is not None and p.companies[0].code == "USMF"
    assert p.column_defaults("Customers V3 (accounts)") == {"CUSTOMERGROUPID": "30"}
    assert p.sandbox is not None and p.environments.dataverse_url == "https://contoso.crm.dynamics.com"


def _field_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for sub in _models_in(info.annotation):
            names |= _field_names(sub)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_a_sandbox_not_started_is_one_problem_among_the_others(tmp_path: Path) -> None:
    text = ("scenario: existing-existing\nsandbox: {dir: nowhere}\nlegal_entities: [USMF]\n"
            "bootstrap: {mapping: {Contoso UK: GBSI}}\ntable_maps: [Contacts V2]\noptions: {concurency: 2}\n")
    with pytest.raises(ParamsError) as exc:
        load_params(write(tmp_path, text), base_dir=tmp_path, scenario="new-new")
    assert [p for p, _ in exc.value.problems] == [
        "scenario (line 1)", "sandbox.dir (line 2)", 'bootstrap.mapping["Contoso UK"] (line 4)',
        "table_maps[0].name (line 5)", "options.concurency (line 6)"]
    assert "start the sandbox first" in problems(exc)["sandbox.dir"]
    assert problems(exc)["scenario"].startswith("the parameters are for existing-existing, not new-new")


def test_a_sandbox_about_to_start_is_stood_in_for_but_environments_of_its_own_are_not(tmp_path: Path) -> None:
    p = load_params({"scenario": "new-new", "sandbox": {"dir": "nowhere"}}, base_dir=tmp_path,
                    sandbox_pending=True)
    assert p.environments.dataverse_url.startswith("https://sandbox.invalid")  # only to check, never to call
    text = ("scenario: new-new\nsandbox: {dir: nowhere}\nenvironments: {finops_url: https://fo.example}\n"
            "verify: {company: USMF}\n")
    with pytest.raises(ParamsError) as exc:
        load_params(write(tmp_path, text), base_dir=tmp_path, sandbox_pending=True)
    assert exc.value.problems == [
        ("environments.finops_url (line 3)", "dw run --sandbox runs against a fresh sandbox, whose "
                                             "connection.yaml supplies it: remove it, or run without "
                                             "--sandbox"),
        ("verify.company (line 4)", "company USMF is not in the run's scope (DAT): choose one of them, "
                                    "or null")]


def test_company_references_are_checked_when_another_part_of_the_file_is_wrong(tmp_path: Path) -> None:
    data = minimal(legal_entities=["USMF"], bootstrap={"mapping": {"Contoso UK": "GBSI"}})
    data["environments"]["dataverse_url"] = "http://not-tls.example"
    data["options"] = {"batch_size": 5000}
    with pytest.raises(ParamsError) as exc:
        load_params(data)
    assert set(problems(exc)) == {"environments.dataverse_url", "options.batch_size",
                                  'bootstrap.mapping["Contoso UK"]'}


def test_a_warning_is_said_once_per_place_however_often_the_file_is_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(params_load, "_said", set())
    data = minimal(legal_entities=["USMF", "DEMF"], bootstrap={"mapping": {"": "USMF", "Contoso US": "USMF"}})
    shuffled = minimal(legal_entities=["USMF", "DEMF"],
                       bootstrap={"mapping": {"Contoso US": "USMF", "": "USMF"}})
    with caplog.at_level(logging.WARNING, logger="dwlib.params"):
        for source in (data, shuffled, data):  # dw run, the form (which may reorder keys), the runbook
            p = load_params(source)
    assert p.warnings[0].startswith('company code USMF has 4 characters (legal_entities[0], '
                                    'bootstrap.mapping[""], bootstrap.mapping["Contoso US"]);')
    assert [r.getMessage() for r in caplog.records] == p.warnings and len(p.warnings) == 2
