"""The installable package: a wheel (not the editable checkout) gives a working `personaloom` anywhere.

The wheel is built from this checkout and installed, without dependencies, into a new virtualenv; the
dependencies are borrowed from the test environment by a path entry (a `.pth` line, which adds the
folder but runs none of its own `.pth` hooks — so the editable install is *not* visible there). Then
the installed command builds a dataset against the fake server from another working directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from personaloom.testing.cli import TEST_KEY
from personaloom.testing.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # built from a copy of what the wheel is made of, so the build leaves nothing in the checkout
    src = tmp_path_factory.mktemp("src")
    for folder in ("flows", "schemas", "prompts", "seeds"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, src / file)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(dist), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = dist.glob("personaloom-*.whl")
    return built


def test_wheel_holds_one_import_package_with_prompts_and_seeds(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"personaloom", dist_info}  # nothing else at the top
    # every module of every package folder ships (a folder missing from pyproject's list would not)
    modules = {f"personaloom/{p.relative_to(ROOT / 'flows')}" for p in (ROOT / "flows").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
    for needed in (
        "personaloom/cli/__init__.py",
        "personaloom/schemas/records.py",
        "personaloom/testing/fake_openai.py",
        "personaloom/prompts/default/queries/simulate.j2",
        "personaloom/prompts/small/personas/synthesize.j2",
        "personaloom/seeds/locales.csv",
        "personaloom/seeds/attributes.json",
    ):
        assert needed in names, needed
    shipped = {n.removeprefix("personaloom/prompts/") for n in names if n.endswith(".j2")}
    assert shipped == {str(p.relative_to(ROOT / "prompts")) for p in (ROOT / "prompts").rglob("*.j2")}
    assert not any(n.startswith(("flows/", "schemas/", "tests/")) for n in names)


def test_installed_wheel_builds_from_any_directory(
    wheel: Path, tmp_path: Path, prefect_harness: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "PYTHONPATH", "PERSONALOOM_HOME")
    }
    env |= {"OPENAI_API_KEY": TEST_KEY, "PREFECT_API_URL": str(PREFECT_API_URL.value())}

    def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(c) for c in cmd], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )

    where = run(
        py,
        "-c",
        "import personaloom, personaloom.paths as p; print(personaloom.__file__, p.PROMPTS_DIR, p.SEEDS_DIR)",
    )
    assert where.returncode == 0, where.stderr
    assert all(str(site) in part for part in where.stdout.split()), where.stdout
    assert run(py, "-m", "personaloom", "--help").returncode == 0
    listed = run(venv / "bin" / "personaloom", "prompts")
    assert listed.returncode == 0 and "queries/simulate" in listed.stdout, listed.stderr

    with FakeOpenAI(api_key=TEST_KEY) as fake:
        args = "build --dataset wheel --personas 2 --scenes-per-persona 2 --out out --no-progress".split()
        built = run(venv / "bin" / "personaloom", *args, "--base-url", fake.base_url)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "wheel@v0001" in built.stdout
    manifest = (elsewhere / "out" / "wheel" / "v0001" / "manifest.json").read_text()
    assert '"code_version": "0.1.0"' in manifest  # the wheel's version, no git commit of the checkout
    assert run(venv / "bin" / "personaloom", "verify", "wheel", "--out", "out").returncode == 0
