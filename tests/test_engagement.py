"""`dw init` (an engagement folder), where a run finds its notebook, and the optional extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dwlib import cli, packaged
from dwlib.engagement import init
from dwlib.errors import DwError
from dwlib.extras import MissingExtra, require
from dwlib.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_init_makes_an_engagement_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "contoso"
    assert cli.main(["init", str(folder), "--scenario", "existing-new", "--scenario", "new-new"]) == 0
    params = sorted(p.name for p in (folder / "params").iterdir())
    assert params == ["existing-new.yaml", "new-new.yaml", "sandbox-existing-new.yaml",
                      "sandbox-new-new.yaml", "template.yaml"]
    assert "scenario: existing-new\n" in (folder / "params" / "existing-new.yaml").read_text()
    template = (ROOT / "params" / "template.yaml").read_bytes()
    assert (folder / "params" / "template.yaml").read_bytes() == template
    shipped = sorted(p.relative_to(ROOT / "notebooks") for p in (ROOT / "notebooks").rglob("*.ipynb"))
    copied = sorted(p.relative_to(folder / "notebooks") for p in (folder / "notebooks").rglob("*.ipynb"))
    assert copied == shipped and shipped
    for name in copied:
        assert (folder / "notebooks" / name).read_bytes() == (ROOT / "notebooks" / name).read_bytes()
    assert (folder / "notebooks" / packaged.VERSION_FILE).read_text().strip() == packaged.version()
    ignored = (folder / ".gitignore").read_text().split()
    assert {"runs/", ".dw/", "*.pem", ".env"} <= set(ignored)
    # nbstripout is the git filter of the folder's own repository
    assert Path(_git(folder, "rev-parse", "--show-toplevel")).resolve() == folder.resolve()
    assert _git(folder, "check-attr", "filter", "notebooks/new-new.ipynb").endswith("filter: nbstripout")
    assert "nbstripout" in _git(folder, "config", "--local", "filter.nbstripout.clean")
    readme = (folder / "README.md").read_text()
    assert "dw run existing-new -f params/sandbox-existing-new.yaml --sandbox" in readme
    assert "dw demo" in readme and "dw review runs" in readme
    assert "made the engagement folder" in capsys.readouterr().out


def test_init_defaults_to_every_scenario(tmp_path: Path) -> None:
    init(tmp_path / "all", list(SCENARIOS), say=lambda _line: None)
    assert {p.stem for p in (tmp_path / "all" / "params").glob("*.yaml")} >= {*SCENARIOS, "batch-sandbox"}
    assert cli.build_parser().parse_args(["init", "x"]).scenario is None  # None: all of them


def test_init_refuses_a_non_empty_folder_unless_forced(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["init", str(tmp_path)]) == 1
    assert f"{tmp_path} is not empty" in capsys.readouterr().err and not (tmp_path / "params").exists()
    assert cli.main(["init", str(tmp_path), "--force", "--scenario", "new-new"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "params" / "new-new.yaml").is_file()


def test_a_run_uses_the_working_directorys_notebooks_first(tmp_path: Path) -> None:
    assert packaged.notebook("new-new.ipynb", tmp_path) == packaged.notebooks_dir() / "new-new.ipynb"
    own = tmp_path / "notebooks" / "new-new.ipynb"
    own.parent.mkdir()
    own.write_text("{}")
    assert packaged.notebook("new-new.ipynb", tmp_path) == own
    with pytest.raises(DwError, match=r"no notebook nothing\.ipynb"):
        packaged.notebook("nothing.ipynb", tmp_path)


def test_notebooks_of_another_version_are_noted(tmp_path: Path) -> None:
    own = tmp_path / "new-new.ipynb"
    own.write_text("{}")
    assert packaged.pinned_note(own) == ""  # not an engagement's copy
    (tmp_path / packaged.VERSION_FILE).write_text(packaged.version() + "\n")
    assert packaged.pinned_note(own) == ""
    (tmp_path / packaged.VERSION_FILE).write_text("0.0.1\n")
    assert "copied from dwlib 0.0.1" in packaged.pinned_note(own)


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nbconvert", None)
    with pytest.raises(MissingExtra) as caught:
        require("nbconvert", "review", "a run's HTML report")
    assert str(caught.value) == ("a run's HTML report needs nbconvert (not installed): "
                                 "pip install 'dwlib[review]'")


def test_the_sandbox_commands_without_the_sandbox_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['starlette'] = None; from dwlib.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    for args in (["sandbox", "start", "--profile", "new-new"], ["demo"],
                 ["run", "new-new", "-f", str(ROOT / "params" / "sandbox-new-new.yaml"), "--sandbox"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.strip() == ("dw: error: the local sandbox needs starlette, uvicorn and trustme "
                                       "(not installed): pip install 'dwlib[sandbox]'"), args
