"""Preloaded commands: with `personaloom server` running, a command forks from a process that has already
imported everything, and behaves as its own process would (folder, environment, files, exit code, Ctrl-C).

One real standing server for the module (a Prefect server and the preloaded process), real `personaloom`
processes talking to it, the fake OpenAI server on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from personaloom.llm.local import free_port
from personaloom.preload import LOG_FILE, SOCKET_FILE, _differences, interpreter_key
from personaloom.testing.cli import EXE, assert_one_line_error, start_server
from personaloom.testing.fake_openai import FakeOpenAI

TABLES = ("seeds", "personas", "scenes", "queries", "rejections", "dataset", "probes")


@dataclass
class Standing:
    home: Path
    env: dict[str, str]

    def log(self) -> str:
        return (self.home / LOG_FILE).read_text()

    def served(self) -> list[str]:
        """The commands the preloaded process forked for, in order (`pid N: SUBCOMMAND`)."""
        return re.findall(r"pid \d+: (.*)", self.log())

    def run(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EXE, *args], env={**self.env, **env}, cwd=cwd, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="module")
def standing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standing]:
    home = tmp_path_factory.mktemp("preload") / "prefect"
    drop = ("PREFECT_API_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "PERSONALOOM_PRELOAD")
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, "PREFECT_HOME": str(home)}
    server = start_server(env, free_port())
    try:
        yield Standing(home, env)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert not (home / SOCKET_FILE).exists()  # stopped: nothing left for a command to connect to


def digest(root: Path) -> dict[str, str]:
    out = {}
    for t in TABLES:
        rows = pq.read_table(root / t).to_pylist()
        lines = sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode() for r in rows)
        out[t] = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return out


def test_the_socket_is_this_users_only(standing: Standing) -> None:
    mode = (standing.home / SOCKET_FILE).stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert "ready:" in standing.log()


def test_a_preloaded_build_is_the_build_a_fresh_process_makes(standing: Standing, tmp_path: Path) -> None:
    """Relative --out lands in the caller's folder; the endpoint comes from the caller's environment."""
    args = ("build", "--dataset", "same", "--personas", "2", "--scenes-per-persona", "2", "--no-progress")
    digests = {}
    for mode in ("1", "0"):
        folder = tmp_path / f"preload-{mode}"
        folder.mkdir()
        before = len(standing.served())
        with FakeOpenAI() as fake:
            res = standing.run(
                *args, "--out", "out", cwd=folder, OPENAI_BASE_URL=fake.base_url, PERSONALOOM_PRELOAD=mode
            )
        assert res.returncode == 0, res.stderr[-2000:]
        assert "same@v0001" in res.stdout
        served = standing.served()[before:]
        assert served == (["build"] if mode == "1" else []), served
        digests[mode] = digest(folder / "out" / "same" / "v0001")
    assert digests["1"] == digests["0"]


def test_exit_codes_and_one_line_errors_pass_through(standing: Standing, tmp_path: Path) -> None:
    before = len(standing.served())
    res = standing.run("build", "--personas", "0", "--out", str(tmp_path))
    assert_one_line_error(res, "--personas")
    res = standing.run("show", "nowhere", "--out", str(tmp_path))
    assert_one_line_error(res, "nowhere")
    ok = standing.run("--help")
    assert ok.returncode == 0 and "Usage: python -m personaloom " in ok.stdout  # named as the caller ran it
    assert standing.served()[before:] == ["build", "show", "--help"]
    assert "nowhere" not in standing.log()  # the subcommand only: arguments stay out of the log


def test_ctrl_c_reaches_the_preloaded_command_and_a_rerun_resumes(standing: Standing, tmp_path: Path) -> None:
    args = ["build", "--dataset", "stop", "--personas", "6", "--scenes-per-persona", "3", "--no-progress"]
    with FakeOpenAI(latency=0.3) as fake:
        before = len(standing.served())
        cmd = [*EXE, *args, "--base-url", fake.base_url, "--out", str(tmp_path)]
        proc = subprocess.Popen(
            cmd, env=standing.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while fake.stats.chat_ok < 5 and time.monotonic() < deadline:  # generating: stop it mid-run
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert standing.served()[before:] == ["build"]
        again = standing.run(*args, "--base-url", fake.base_url, "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stop@v0001" in again.stdout


def test_different_prefect_settings_run_the_ordinary_way(standing: Standing) -> None:
    secret = "pnu_SECRET-value-0123456789"
    before = len(standing.served())
    res = standing.run("--help", PREFECT_LOGGING_LEVEL="ERROR", PREFECT_API_KEY=secret)
    assert res.returncode == 0 and "Usage:" in res.stdout
    off = standing.run("--help", PERSONALOOM_PRELOAD="0")
    assert off.returncode == 0 and "Usage:" in off.stdout
    assert standing.served()[before:] == []  # neither was forked
    last = standing.log().strip().splitlines()[-1]
    assert "declined" in last and "PREFECT_API_KEY" in last and "PREFECT_LOGGING_LEVEL" in last, last
    assert secret not in standing.log()  # names, never values


def test_a_changed_source_file_restarts_the_preloaded_process(standing: Standing) -> None:
    import personaloom.display as edited

    path = Path(edited.__file__)
    times = path.stat()
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000_000))
    try:
        before = len(standing.served())
        res = standing.run("--help")  # runs the ordinary way; the preloaded process exits
        assert res.returncode == 0
        assert "source files changed" in standing.log()
        deadline = time.monotonic() + 120
        while standing.log().count("ready:") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)  # the server starts a fresh one
        assert standing.log().count("ready:") == 2, standing.log()
        assert standing.run("--help").returncode == 0
        assert standing.served()[before:] == ["--help"]
    finally:
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_differences_name_what_differs_never_values() -> None:
    ours = json.loads(
        json.dumps(interpreter_key({"PREFECT_API_KEY": "a", "PREFECT_HOME": "/h", "PATH": "x"}))
    )
    theirs = json.loads(
        json.dumps(interpreter_key({"PREFECT_API_KEY": "b", "PREFECT_HOME": "/h", "PATH": "y"}))
    )
    assert _differences(ours, ours) == []
    assert _differences(ours, theirs) == ["PREFECT_API_KEY"]  # PATH is read at run time: not compared
    theirs["executable"] = "/other/python"
    assert _differences(ours, theirs) == ["PREFECT_API_KEY", "executable"]
