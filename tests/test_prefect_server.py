"""`personaloom server`: one standing Prefect server that later commands find on their own, closed to
other local users (auth string, private files)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets
from websockets.typing import Subprotocol

from personaloom.llm.local import free_port
from personaloom.runtime.prefect_env import AUTH_FILE
from personaloom.runtime.prefect_server import SERVER_LOG, STATE_FILE, auth_header
from personaloom.testing.cli import EXE, assert_one_line_error, run, start_server
from personaloom.testing.fake_openai import FakeOpenAI


def env_without_api(home: Path) -> dict[str, str]:
    """A user's shell: no PREFECT_API_URL (not even the test session's), its own PREFECT_HOME."""
    drop = ("PREFECT_API_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PREFECT_HOME": str(home)}


def post(api_url: str, path: str, auth: str | None = None) -> tuple[int, object]:
    """(status, body) of a plain POST of `{}`, as any local process can send it."""
    headers = {"Content-Type": "application/json", **(auth_header(auth) if auth else {})}
    req = urllib.request.Request(f"{api_url}{path}", data=b"{}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def assert_closed_without(api_url: str, auth: str) -> None:
    """Without the auth string nothing is read or written, over HTTP or Prefect's websockets (Prefect
    issue 17687: in 3.2.14 the event websockets skipped the check)."""
    for path in ("/flow_runs/filter", "/deployments/filter", "/logs/filter", "/events/filter"):
        assert post(api_url, path)[0] == 401 and post(api_url, path, "personaloom:guess")[0] == 401, path
        assert post(api_url, path, auth)[0] == 200, path
    for path in ("/events/in", "/events/out", "/logs/out"):
        for token in (None, "personaloom:guess", auth):
            assert asyncio.run(websocket_opens(api_url + path, token)) == (token == auth), (path, token)


async def websocket_opens(url: str, token: str | None) -> bool:
    url = url.replace("http://", "ws://")
    try:  # without the "prefect" subprotocol: Prefect's legacy mode, which has no auth at all
        async with websockets.connect(url, open_timeout=5):
            return True
    except websockets.InvalidStatus:
        pass
    try:  # Prefect's handshake: the first message carries the auth string
        async with websockets.connect(url, subprotocols=[Subprotocol("prefect")], open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            return json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "auth_success"}
    except websockets.ConnectionClosed:
        return False


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def flow_run_names(api_url: str, auth: str) -> list[str]:
    status, runs = post(api_url, "/flow_runs/filter", auth)
    assert status == 200 and isinstance(runs, list)
    return [run["name"] for run in runs]


def test_a_standing_server_is_found_by_later_commands(tmp_path: Path) -> None:
    home, port = tmp_path / "prefect", free_port()
    env = env_without_api(home)
    server = start_server(env, port)
    try:
        api_url = f"http://127.0.0.1:{port}/api"
        assert json.loads((home / STATE_FILE).read_text())["api_url"] == api_url
        auth = (home / AUTH_FILE).read_text()
        assert auth.startswith("personaloom:") and len(auth) > 40
        assert_closed_without(api_url, auth)
        # only this user reads the address, the secret, the database, the server's log
        assert mode(home) == 0o700
        for name in (STATE_FILE, AUTH_FILE, SERVER_LOG, "prefect.db", "prefect.db-wal"):
            assert mode(home / name) == 0o600, name

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
        assert flow_run_names(api_url, auth), "the build's flow run is recorded on the standing server"
        events = post(api_url, "/events/filter", auth)[1]  # they came in over the events websocket
        assert isinstance(events, dict)
        assert any(e["event"].startswith("prefect.task-run.") for e in events["events"]), events
        print(f"build of 1 persona on a standing server: {seconds:.1f} s")

        # a shell that exported the address (as the ready line suggests) and holds a Prefect Cloud key
        exported = {**env, "PREFECT_API_URL": api_url, "PREFECT_API_KEY": "pnu_not-for-this-server"}
        res = subprocess.run([sys.executable, "-c", COUNT_RUNS], env=exported, capture_output=True, text=True)
        assert res.returncode == 0 and int(res.stdout) >= 1, res.stderr[-2000:]

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


COUNT_RUNS = """
from personaloom.runtime.prefect_server import use_standing_server
use_standing_server()
from prefect import get_client
with get_client(sync_client=True) as client:
    print(len(client.read_flow_runs()))
"""


def test_server_help_says_what_it_is_for() -> None:
    res = subprocess.run([*EXE, "server", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "starts in seconds" in " ".join(res.stdout.split())


def test_server_listens_on_loopback_only() -> None:
    res = run("server", "--host", "0.0.0.0", "--port", str(free_port()))
    assert_one_line_error(res, "--host 0.0.0.0", "loopback only")
