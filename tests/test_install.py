"""The package as a user gets it: the wheel ships the top-level notebooks/ and params/ (one source)
and the data files of dwlib/; installed with its extras in a clean virtualenv outside the
checkout, it runs an engagement's quick start from a directory of its own.

The clean install takes a few minutes (about 70 s for `pip install` from a warm cache, then a demo
and a sandbox run); it runs in `make test` and is marked `install` (`-m "not install"` skips it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("dwlib-*.whl")
    return built


def _tracked(folder: str) -> list[str]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", folder], capture_output=True, text=True,
                            check=True).stdout.split()
    return [name for name in listed if (ROOT / name).is_file()]


def test_the_wheel_ships_the_top_level_notebooks_and_params_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        shipped = {name.removeprefix("dwlib/_data/"): whl.read(name) for name in whl.namelist()
                   if name.startswith("dwlib/_data/")}
        names = set(whl.namelist())
        data = [n for n in _tracked("dwlib") if not n.endswith(".py")]
        assert data and all(whl.read(n) == (ROOT / n).read_bytes() for n in data if n in names)
    top = _tracked("notebooks") + _tracked("params")
    assert {"notebooks/existing-new.ipynb", "notebooks/review.ipynb", "params/template.yaml"} <= set(top)
    assert shipped == {n: (ROOT / n).read_bytes() for n in top}
    missing = [n for n in data if n not in names]
    assert missing == [], "data files of dwlib/ left out of the wheel"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.install
@pytest.mark.timeout(2400)
def test_a_clean_install_runs_an_engagement_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # its own site-packages only: nothing of this checkout's venv
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    work = tmp_path / "work"
    work.mkdir()
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[all]"], work, env, 1500)
    where = _run([str(bin_dir / "python"), "-c", "import dwlib; print(dwlib.__file__)"], work, env)
    assert Path(where.strip()).resolve().is_relative_to(env_dir.resolve())

    _run(["dw", "init", "eng"], work, env)
    eng = work / "eng"
    demo = _run(["dw", "demo", "--rows", "1000"], eng, env)
    assert "run " in demo and (eng / "runs").is_dir()
    ran = _run(["dw", "run", "existing-new", "-f", "params/sandbox-existing-new.yaml", "--sandbox",
                "--rows", "200"], eng, env)
    assert ": passed" in ran
    review = _run(["dw", "review", "runs"], eng, env)
    assert "existing-existing" in review and "existing-new" in review and "\n2 runs: " in review
    reports = sorted((eng / "runs").glob("*.html"))
    assert len(reports) == 2  # the review extra wrote each run's report
