"""Where a run's Prefect API comes from: a standing `personaloom server`, or a temporary one started early.

Without `PREFECT_API_URL` each process starts its own temporary Prefect server, 12–22 s on this kind of
machine (PREFECT_NOTES.md). Two ways to pay less:

- `personaloom server` keeps one server running and records its address in `$PREFECT_HOME`; every later
  `personaloom` command in any shell finds it there and starts in seconds.
- Otherwise the temporary server starts as a child process while the command does its own pre-flight
  (seed tables, endpoint check), instead of after it.

The machine may be shared: both servers listen on loopback only, require Prefect's basic auth string (a
random secret only this user can read), keep their database 0600 in a 0700 PREFECT_HOME, and die with the
process that started them, even on SIGKILL (Linux: a parent-death signal).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from personaloom.errors import UserError
from personaloom.runtime.prefect_env import (
    AUTH_FILE,
    STATE_FILE,
    new_auth_string,
    private_home,
    recorded_api_url,
    recorded_auth_string,
    use_api,
    write_private,
)

SERVER_LOG = "personaloom-server.log"
LOOPBACK = ("127.0.0.1", "localhost")
_PR_SET_PDEATHSIG = 1
# loaded before any fork: the child only calls it
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _healthy(api_url: str, timeout: float = 0.5) -> bool:
    try:  # /health needs no auth string
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:  # noqa: S310  # loopback
            return r.status == 200
    except (OSError, ValueError):
        return False


def _listeners_are_mine(port: int) -> bool:
    """No other user's socket listens on `port` (Linux: /proc/net/tcp*; elsewhere not checked).

    A recorded address whose server died can be taken over by another user's process, which would then
    receive this user's flow runs and auth string.
    """
    uids = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()  # local address (hex ip:port), remote, state (0A = LISTEN), ..., uid
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(f[7]))
    return uids <= {os.getuid()}


def _child_setup(parent: int, die_with_parent: bool) -> Callable[[], None]:
    """Run in the server's process before exec: files it creates are 0600/0700, and (Linux) it gets
    SIGKILL when the thread that started it ends, so a killed command leaves no ~220 MB server behind."""

    def setup() -> None:
        os.umask(0o077)
        if die_with_parent and _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
                os._exit(1)

    return setup


def _popen(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
    # PDEATHSIG fires when the *thread* that forked exits: only the main thread lives as long as the process
    main = threading.current_thread() is threading.main_thread()
    return subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=_child_setup(os.getpid(), main), **kw
    )


def auth_header(auth_string: str) -> dict[str, str]:
    """The header Prefect's clients send for an auth string (for plain HTTP clients, e.g. tests)."""
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def standing_server() -> str | None:
    """The API URL of a running `personaloom server` recorded in this PREFECT_HOME, if it answers."""
    url = recorded_api_url()
    port = urllib.parse.urlsplit(url).port if url else None
    # whose the port is, before connecting to it
    return url if url and port is not None and _listeners_are_mine(port) and _healthy(url) else None


def use_standing_server() -> str | None:
    """Point this process at a standing server when the user has not chosen one; returns the URL used.

    With the standing server's address in PREFECT_API_URL already (as its ready message suggests for other
    Prefect clients), only its auth string is added.
    """
    chosen = os.environ.get("PREFECT_API_URL")
    if chosen and (chosen != recorded_api_url() or os.environ.get("PREFECT_API_AUTH_STRING")):
        return chosen
    url = standing_server()
    if url:
        use_api(url, recorded_auth_string())
    return url or chosen


class EarlyServer:
    """A temporary Prefect server for this command: started now, `wait()` before the first flow run.

    Construct it on the main thread (the server dies with the thread that started it). It runs what
    Prefect's own ephemeral server runs (`SubprocessASGIServer`: uvicorn, the API without UI or services),
    on a loopback socket bound here and handed over, so no other process can take the port in between,
    with a secret auth string of this process's own. Stopped at exit; killed with this process.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.api_url = os.environ.get("PREFECT_API_URL", "")
        if self.api_url:
            return  # a server is already chosen: nothing to start
        private_home()
        auth = new_auth_string()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            self.api_url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                "PREFECT_SERVER_API_AUTH_STRING": auth,
            }
            # as SubprocessASGIServer._run_uvicorn_command, with --fd for --host/--port
            spec = importlib.util.find_spec("prefect")  # its folder, without importing it (1-2 s)
            site = Path(spec.origin).parent.parent if spec and spec.origin else Path.cwd()
            cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(site)]
            cmd += ["--factory", "prefect.server.api.server:create_app", "--fd", str(sock.fileno())]
            cmd += ["--log-level", "error", "--lifespan", "on"]
            # its own session: a Ctrl-C at the terminal is the command's to handle (one line), not uvicorn's
            # ("Aborted!"); it still dies with the command (parent-death signal) and is stopped at exit
            self._proc = _popen(cmd, env, pass_fds=[sock.fileno()], start_new_session=True)
        use_api(self.api_url, auth)
        atexit.register(self.close)  # after Prefect's own exit handlers (registered later): they still send

    def wait(self) -> None:
        proc = self._proc
        if proc is None:
            return
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        deadline = time.monotonic() + timeout
        while not _healthy(self.api_url):
            if proc.poll() is not None:
                raise UserError(f"the temporary Prefect server stopped (code {proc.returncode}; see above)")
            if time.monotonic() > deadline:
                raise UserError(f"the temporary Prefect server did not answer within {timeout:.0f} s")
            time.sleep(0.1)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def serve_forever(host: str, port: int, *, ready: Any = print) -> int:
    """Run `prefect server start` in the foreground until it stops."""
    if host not in LOOPBACK:
        raise UserError(f"--host {host}: the server listens on loopback only (127.0.0.1), for this machine")
    api_url = f"http://{host}:{port}/api"
    if running := standing_server():
        raise UserError(f"a personaloom server already runs at {running} (this PREFECT_HOME); use it")
    if _healthy(api_url):
        raise UserError(f"--port {port}: a Prefect server already answers at {api_url}; choose another port")
    home = private_home()
    state, auth_file = home / STATE_FILE, home / AUTH_FILE
    # kept across restarts, so a long-running `personaloom serve` still gets in after a restart; a new one if
    # the file was ever readable by others
    kept = auth_file.exists() and auth_file.stat().st_mode & 0o077 == 0
    auth = (kept and recorded_auth_string()) or new_auth_string()
    write_private(auth_file, auth)  # (again: 0600 even if someone loosened it)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # `kill`, a service manager, an ignored Ctrl-C: stop the same clean way

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # even when started in the background, where SIGINT is ignored
    # to a file, not a pipe: a pipe nobody reads fills up over a long life and stalls the server
    log = os.fdopen(os.open(home / SERVER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    os.fchmod(log.fileno(), 0o600)
    # `prefect server start` runs uvicorn in its own process (one worker): the process that holds the port
    proc = _popen(cmd, env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(api_url):
            if proc.poll() is not None:
                last = _tail(home / SERVER_LOG) or proc.returncode
                raise UserError(f"the Prefect server did not start: {last} (see {home / SERVER_LOG})")
            if time.monotonic() > deadline:
                raise UserError("the Prefect server did not answer within 180 s; try again")
            time.sleep(0.2)
        if not _listeners_are_mine(port):
            raise UserError(f"--port {port}: another user's process listens there too; choose another port")
        write_private(state, json.dumps({"api_url": api_url, "pid": proc.pid}))
        ready(api_url)
        while proc.poll() is None:
            time.sleep(0.5)
        return proc.returncode
    finally:
        state.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
