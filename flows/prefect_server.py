"""Where a run's Prefect API comes from: a standing `personaloom server`, or a temporary one started early.

Without `PREFECT_API_URL` each process starts its own temporary Prefect server, 12–22 s on this kind of
machine (PREFECT_NOTES.md). Two ways to pay less:

- `personaloom server` keeps one server running and records its address in `$PREFECT_HOME`; every later
  `personaloom` command in any shell finds it there and starts in seconds.
- Otherwise the temporary server starts on a thread while the command does its own pre-flight (seed
  tables, endpoint check), instead of after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from personaloom.errors import UserError
from personaloom.prefect_env import STATE_FILE, prefect_home, recorded_api_url


def _healthy(api_url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:  # noqa: S310  # loopback
            return r.status == 200
    except (OSError, ValueError):
        return False


def standing_server() -> str | None:
    """The API URL of a running `personaloom server` recorded in this PREFECT_HOME, if it answers."""
    url = recorded_api_url()
    return url if url and _healthy(url) else None


def use_standing_server() -> str | None:
    """Point this process at a standing server when the user has not chosen one; returns the URL used."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    url = standing_server()
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url


class EarlyServer:
    """Starts Prefect's temporary server on a thread now; `wait()` before the first flow run."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if os.environ.get("PREFECT_API_URL"):
            return  # a server is already chosen: nothing to start
        self._thread = threading.Thread(target=self._start, name="prefect-server-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            # the same singleton Prefect's client starts lazily, so the flow run reuses this process
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()
        except BaseException as e:  # reported by wait(), on the main thread
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error


def serve_forever(host: str, port: int, *, ready: Any = print) -> int:
    """Run `prefect server start` in the foreground until it stops."""
    api_url = f"http://{host}:{port}/api"
    if running := standing_server():
        raise UserError(f"a personaloom server already runs at {running} (this PREFECT_HOME); use it")
    if _healthy(api_url):
        raise UserError(f"--port {port}: a Prefect server already answers at {api_url}; choose another port")
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    state = home / STATE_FILE
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # `kill`, a service manager, an ignored Ctrl-C: stop the same clean way

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # even when started in the background, where SIGINT is ignored
    # to a file, not a pipe: a pipe nobody reads fills up over a long life and stalls the server
    log = (home / SERVER_LOG).open("ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(api_url):
            if proc.poll() is not None:
                last = _tail(home / SERVER_LOG) or proc.returncode
                raise UserError(f"the Prefect server did not start: {last} (see {home / SERVER_LOG})")
            if time.monotonic() > deadline:
                raise UserError("the Prefect server did not answer within 180 s; try again")
            time.sleep(0.2)
        state.write_text(json.dumps({"api_url": api_url, "pid": proc.pid}))
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


SERVER_LOG = "personaloom-server.log"


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
