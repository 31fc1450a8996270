"""`personaloom server`: one standing Prefect server that later commands find on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from personaloom.llm.local import free_port
from personaloom.prefect_server import STATE_FILE
from personaloom.testing.cli import EXE, start_server
from personaloom.testing.fake_openai import FakeOpenAI


def env_without_api(home: Path) -> dict[str, str]:
    """A user's shell: no PREFECT_API_URL (not even the test session's), its own PREFECT_HOME."""
    drop = ("PREFECT_API_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PREFECT_HOME": str(home)}


def flow_run_names(api_url: str) -> list[str]:
    req = urllib.request.Request(
        f"{api_url}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return [run["name"] for run in json.load(r)]


def test_a_standing_server_is_found_by_later_commands(tmp_path: Path) -> None:
    home, port = tmp_path / "prefect", free_port()
    env = env_without_api(home)
    server = start_server(env, port)
    try:
        api_url = f"http://127.0.0.1:{port}/api"
        assert json.loads((home / STATE_FILE).read_text())["api_url"] == api_url

        out = tmp_path / "out"
        with FakeOpenAI() as fake:
            args = [
                "build",
                "--dataset",
                "s",
                "--personas",
                "1",
                "--scenes-per-persona",
                "2",
                "--no-progress",
            ]
            started = time.monotonic()
            res = subprocess.run(
                [*EXE, *args, "--base-url", fake.base_url, "--out", str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            seconds = time.monotonic() - started
        assert res.returncode == 0, res.stderr[-2000:]
        assert flow_run_names(api_url), "the build's flow run is recorded on the standing server"
        print(f"build of 1 persona on a standing server: {seconds:.1f} s")

        second = subprocess.run(
            [*EXE, "server", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 2 and f"already runs at {api_url}" in second.stderr
    finally:
        server.send_signal(signal.SIGTERM)  # as a service manager stops it
        server.wait(timeout=60)
    assert server.returncode == 0 and "Prefect server stopped" in (
        server.stdout.read() if server.stdout else ""
    )
    assert not (home / STATE_FILE).exists()  # stopped: later commands start their own again


def test_server_help_says_what_it_is_for() -> None:
    res = subprocess.run([*EXE, "server", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "starts in seconds" in " ".join(res.stdout.split())
