"""The Prefect servers we start die with the process that started them, even on `kill -9`, and the
temporary one of a build is closed to other local users as the standing one is (issue 25)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from personaloom.llm.local import free_port
from personaloom.runtime.prefect_server import auth_header
from personaloom.testing.cli import EXE, start_server
from personaloom.testing.fake_openai import FakeOpenAI


def env_without_api(home: Path) -> dict[str, str]:
    drop = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PREFECT_HOME": str(home)}


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: no ps needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, NotADirectoryError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def listening_ports(pid: int | None = None) -> set[int]:
    """Ports in LISTEN on this machine (of `pid` only, when given: matched by socket inode)."""
    inodes = None
    if pid is not None:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # the fd closed between listing and reading: a live process does that
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            f = row.split()
            if f[3] == "0A" and (inodes is None or f[9] in inodes):
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def post(url: str, auth: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **(auth_header(auth) if auth else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, b"{}", headers), timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None


def status(url: str, auth: str | None = None) -> int:
    return post(url, auth)[0]


def task_run_events(api: str, auth: str) -> int:
    """Task-run events the build sent (over the events websocket, with its auth string) within 20 s."""
    deadline = time.monotonic() + 20
    while True:
        events = post(f"{api}/events/filter", auth)[1]["events"]
        n = sum(e["event"].startswith("prefect.task-run.") for e in events)
        if n or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def assert_gone_soon(pids: list[int], port: int) -> float:
    """Every process in `pids` ended and nothing listens on `port` within 5 s; returns the seconds taken."""
    started = time.monotonic()
    while any(alive(p) for p in pids) or port in listening_ports():
        assert time.monotonic() - started < 5, [p for p in pids if alive(p)]
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_killed_build_takes_its_closed_temporary_server_with_it(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    args = ["build", "--dataset", "k", "--personas", "4", "--scenes-per-persona", "3", "--no-progress"]
    with FakeOpenAI(latency=1.0) as fake:  # slow calls: the build is surely mid-run when it is killed
        started = time.monotonic()
        build = subprocess.Popen(
            [*EXE, *args, "--base-url", fake.base_url, "--out", str(tmp_path / "out")],
            env=env_without_api(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not fake.stats.by_path.get("/v1/chat/completions"):
                assert build.poll() is None and time.monotonic() - started < 120
                time.sleep(0.05)
            print(f"a build's first LLM call, temporary server started: {time.monotonic() - started:.1f} s")
            kids = children(build.pid)
            servers = [p for p in kids if "prefect.server.api.server:create_app" in cmdline(p)]
            assert len(servers) == 1, [cmdline(p) for p in kids]
            (port,) = listening_ports(servers[0])
            api = f"http://127.0.0.1:{port}/api"
            auth = environ(servers[0])["PREFECT_SERVER_API_AUTH_STRING"]
            assert status(f"{api}/flow_runs/filter") == 401 and status(f"{api}/logs/filter") == 401
            assert status(f"{api}/flow_runs/filter", auth) == 200
            assert task_run_events(api, auth) > 0  # the build itself talks to it with the auth string
            assert mode(home) == 0o700 and mode(home / "prefect.db") == mode(home / "prefect.db-wal") == 0o600
            assert build.poll() is None  # still mid-run
            os.kill(build.pid, signal.SIGKILL)  # the build only: no cleanup of any kind runs in it
            build.wait()
            seconds = assert_gone_soon(kids, port)
        finally:
            build.kill()
    print(f"temporary server gone {seconds:.2f} s after kill -9 of its build")


def test_a_killed_personaloom_server_takes_prefect_with_it(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(env_without_api(tmp_path / "prefect"), port)
    try:
        kids = children(server.pid)
        assert any(port in listening_ports(p) for p in kids)  # a child holds the port, no grandchild
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        seconds = assert_gone_soon(kids, port)
    finally:
        server.kill()
    print(f"standing server gone {seconds:.2f} s after kill -9 of personaloom server")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
