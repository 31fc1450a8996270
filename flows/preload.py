"""Preloaded commands: while `personaloom server` runs, a command skips its ~2 s of imports.

A `personaloom build` on a standing server spends two thirds of its 3 s importing Prefect, the OpenAI SDK,
pydantic models and the stages, before it does anything. So `personaloom server` also keeps one
*preloaded* process (`main` below): everything imported, single-threaded, waiting on a Unix socket in
$PREFECT_HOME. The `personaloom` entry point (`launch`, standard library only) finds the socket and sends
its arguments, environment, working directory, umask and its stdin/stdout/stderr; the preloaded process
forks and the child *becomes* that command, on the caller's own files and terminal. The parent reports
the exit status; the caller passes Ctrl-C, SIGTERM and SIGHUP on to the child.

The command runs the ordinary way (imports everything itself) when no server runs, when
PERSONALOOM_PRELOAD=0, for `server` and `serve` (long-lived), when the interpreter differs (executable,
flags, PYTHON* and locale variables), when its Prefect variables or $HOME differ from the server's, or when
a source file the preloaded process imported has changed since (it then exits; the server starts a fresh
one). In the child Prefect re-reads its settings (profiles, a prefect.toml or .env in the caller's folder)
and sets up logging on the caller's terminal. Only the same user can connect (socket mode 0600, and the
peer's uid is checked).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from personaloom.prefect_env import DEFAULTS, prefect_home, recorded_api_url

SOCKET_FILE = "personaloom-preload.sock"
LOG_FILE = "personaloom-preload.log"
# long-lived commands keep their own process: they would hold a preloaded child for hours
NOT_PRELOADED = frozenset({"server", "serve"})
# what a command imports on its own; the child finds them loaded (`python -X importtime` on a build)
PRELOAD = (
    "personaloom.cli",
    "personaloom.build",
    "personaloom.replay",
    "personaloom.evaluate",
    "personaloom.catalogue",
    "personaloom.stages.filter",
    "personaloom.filtering.langid",
    "personaloom.display",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.logging.configuration",
    "prefect.utilities.visualization",
    "fastapi.encoders",
    "pyarrow.dataset",
    "pandas",
)
_LOCALE_VARS = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "HOME")
MAX_REQUEST = 1 << 20


# ---------------------------------------------------------------- the caller (standard library only)


def socket_path() -> Path:
    return prefect_home() / SOCKET_FILE


def interpreter_key(env: dict[str, str]) -> dict[str, Any]:
    """What must match for a forked child to behave as this command's own process would.

    The interpreter and how it was started, and the variables read while importing (Prefect's settings
    and logging, the locale); everything else the command reads at run time, from the environment it sends.
    """
    return {
        "executable": os.path.realpath(sys.executable),  # bin/python or bin/python3: the same one
        "prefix": sys.prefix,  # and the same virtualenv
        "flags": list(sys.flags),
        "warnoptions": list(sys.warnoptions),
        "xoptions": {k: str(v) for k, v in sys._xoptions.items()},
        "env": sorted(
            (k, v) for k, v in env.items() if k.startswith(("PREFECT_", "PYTHON")) or k in _LOCALE_VARS
        ),
    }


def command_env() -> dict[str, str]:
    """The environment the command would run with: ours, plus the defaults and standing server the CLI
    applies before Prefect is imported (so the comparison with the server's is like for like)."""
    env = dict(os.environ)
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
    if not env.get("PREFECT_API_URL") and (url := recorded_api_url()):
        env["PREFECT_API_URL"] = url
    return env


def _stdio() -> dict[str, bool]:
    """Line buffering follows whether stdout/stderr is a terminal; the encodings follow the locale
    variables, which the interpreter key already compares."""
    return {
        name: s.line_buffering
        for name, s in (("stdout", sys.stdout), ("stderr", sys.stderr))
        if s is not None and hasattr(s, "line_buffering")
    }


def run_preloaded(args: list[str]) -> int | None:
    """Run `personaloom ARGS` in a preloaded child; its exit code, or None to run the ordinary way."""
    if os.environ.get("PERSONALOOM_PRELOAD", "1") == "0" or (args and args[0] in NOT_PRELOADED):
        return None
    path = socket_path()
    if len(os.fsencode(path)) > 100 or not path.exists():
        return None
    try:
        fds = [sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()]
    except (AttributeError, ValueError, OSError):
        return None  # a caller without real standard files (embedded interpreter)
    env = command_env()
    request = {
        "argv": [sys.argv[0], *args],
        "env": env,
        "cwd": os.getcwd(),
        "umask": _umask(),
        "key": interpreter_key(env),
        "stdio": _stdio(),
        # `personaloom` or `python -m personaloom`: how usage lines name the program
        "main_package": getattr(sys.modules["__main__"], "__package__", None),
        "path0": sys.path[0] if sys.path else "",  # the script's folder, or the caller's cwd with -m
    }
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(10)
        conn.connect(str(path))
        socket.send_fds(conn, [json.dumps(request).encode()], fds)
        reply = _message(conn)
    except (OSError, ValueError):
        conn.close()
        return None  # not running, too busy, or gone: nothing was started
    if "pid" not in reply:
        conn.close()
        return None  # declined (reason in the preload log): run the ordinary way
    return _wait(conn, int(reply["pid"]))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _message(conn: socket.socket) -> dict[str, Any]:
    data = conn.recv(65536)
    if not data:
        raise ValueError("closed")
    return json.loads(data)


def _wait(conn: socket.socket, pid: int) -> int:
    """Forward signals to the child until the preloaded process reports how it ended."""

    def forward(signum: int, frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:  # ignored here (`cmd &` in a script): ignored there
            signal.signal(sig, forward)
    conn.settimeout(None)
    try:
        return int(_message(conn)["exit"])
    except (OSError, ValueError, KeyError):
        pass
    finally:
        conn.close()
    # the preloaded process went away first (its server stopped): wait out the child, status unknown
    while _alive(pid):
        time.sleep(0.2)
    print("error: the preloaded process ended before the command did; see the output above", file=sys.stderr)
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return True


def launch() -> None:
    """The `personaloom` entry point: a preloaded child when a server offers one, else the CLI here."""
    code = run_preloaded(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from personaloom.cli import main as cli_main

    cli_main()


# ---------------------------------------------------------------- `personaloom server`'s side


class Supervisor:
    """Starts the preloaded process beside the Prefect server, and a fresh one whenever it exits (after
    a source change, say); gives up after repeated failures to start, and commands then run as usual."""

    STARTUP_SECONDS = 60.0
    MAX_QUICK_EXITS = 3

    def __init__(self, api_url: str, log_path: Path) -> None:
        self.api_url = api_url
        self.log_path = log_path
        self.proc: Any = None
        self.started = 0.0
        self.quick_exits = 0
        # Linux only: SOCK_SEQPACKET Unix sockets and SO_PEERCRED; elsewhere commands import as usual
        self.enabled = sys.platform == "linux" and os.environ.get("PERSONALOOM_PRELOAD", "1") != "0"

    def start(self, wait: bool = True) -> None:
        """Start it; with `wait`, until its socket accepts commands (so the very next command is fast)."""
        import subprocess

        if not self.enabled:
            return
        env = {**os.environ, "PREFECT_API_URL": self.api_url}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "personaloom.preload"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C meant for the server reaches it through stop(), once
            )
        self.started = time.monotonic()
        path = socket_path()
        while wait and self.proc.poll() is None and time.monotonic() - self.started < self.STARTUP_SECONDS:
            if _accepting(path):
                return
            time.sleep(0.1)

    def keep_running(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        self.quick_exits = self.quick_exits + 1 if time.monotonic() - self.started < 30 else 0
        if self.quick_exits >= self.MAX_QUICK_EXITS:
            self.proc = None  # keeps failing (see the log): commands import on their own
            return
        self.start(wait=False)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        import subprocess

        self.proc.terminate()  # stops accepting; commands still running finish on their own
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _accepting(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- the preloaded process


class _Preloaded:
    """The accept loop: one forked child per command, exit statuses sent back as children end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.parent = os.getppid()
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.sources = _Sources()
        self.key: dict[str, Any] = json.loads(json.dumps(interpreter_key(dict(os.environ))))  # as sent
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def serve(self) -> dict[str, Any] | None:
        """Returns in a forked child (with its request), or None when the preloaded process should exit."""
        import selectors

        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)  # the socket file: this user only
        try:
            self.listener.bind(str(self.path))
        finally:
            os.umask(old)
        self.listener.listen(16)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        _log(f"ready: {len(self.sources)} source files preloaded")
        while True:
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj == wake_r:
                    os.read(wake_r, 512)
                elif not self.stopping:
                    request = self._accept()
                    if request is not None and os.getpid() != self.pid:
                        signal.set_wakeup_fd(-1)
                        sel.close()
                        os.close(wake_r)
                        os.close(wake_w)
                        return request  # the child: become the command
            self._reap()
            if os.getppid() != self.parent:
                self._stop()  # the server is gone
            if self.stopping and not self.children:
                return None  # _stop removed the socket file

    def _stop(self, *_: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.listener.close()
            if os.getpid() == self.pid:
                self.path.unlink(missing_ok=True)

    def _accept(self) -> dict[str, Any] | None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return None  # closed by a stop between select and accept
        fds: list[int] = []
        try:
            conn.settimeout(10)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(creds[4:8], sys.byteorder) != os.getuid():
                raise PermissionError("another user")
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
            if not data and not fds:
                conn.close()
                return None  # the server checking that this process accepts
            request = json.loads(data)
            reason = self._decline(request, fds)
            if reason:
                _log(f"declined {_command(request)}: {reason}")
                conn.send(json.dumps({"declined": reason}).encode())
                raise _Declined
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except (OSError, ValueError, _Declined) as e:
            if not isinstance(e, _Declined):
                _log(f"bad request: {type(e).__name__}: {e}")
            for fd in fds:
                os.close(fd)
            conn.close()
            return None
        if pid == 0:
            self.listener.close()
            for other in self.children.values():
                other.close()
            conn.close()
            request["fds"] = fds
            return request
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"pid": pid}).encode())
        self.children[pid] = conn
        _log(f"pid {pid}: {_command(request)}")
        return None

    def _decline(self, request: dict[str, Any], fds: list[int]) -> str | None:
        if len(fds) != 3:
            return "no standard files"
        differ = _differences(self.key, request.get("key") or {})
        if differ:
            return f"differs from the server's: {', '.join(differ)}"
        if self.sources.changed():
            self._stop()  # stale: exit once running commands end; the server starts a fresh one
            return "source files changed since the preload"
        return None

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            conn = self.children.pop(pid, None)
            if conn is not None:
                try:
                    conn.send(json.dumps({"exit": code if code >= 0 else 128 - code}).encode())
                except OSError:
                    pass  # the caller is gone
                conn.close()


def _command(request: dict[str, Any]) -> str:
    """The subcommand only: later arguments may hold what the log should not (paths, a URL with a token)."""
    argv = request.get("argv") or []
    return str(argv[1]) if len(argv) > 1 else "(no arguments)"


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Names of what differs, never values: a variable's value may be a secret (PREFECT_API_KEY)."""
    names = {k for k in ours.keys() | theirs.keys() if k != "env" and ours.get(k) != theirs.get(k)}
    env_ours = {tuple(item) for item in ours.get("env", [])}
    env_theirs = {tuple(item) for item in theirs.get("env", [])}
    return sorted(names | {name for name, _ in env_ours ^ env_theirs})


class _Declined(Exception):
    pass


class _Sources:
    """Modification times of every imported source file: an edit or upgrade makes the preload stale."""

    def __init__(self) -> None:
        self.mtimes: dict[str, int] = {}
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                try:
                    self.mtimes[path] = os.stat(path).st_mtime_ns
                except OSError:
                    pass

    def __len__(self) -> int:
        return len(self.mtimes)

    def changed(self) -> bool:
        for path, mtime in self.mtimes.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False


def _log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _become(request: dict[str, Any]) -> int:
    """In the forked child: take on the caller's files, folder, environment and terminal, then run."""
    import random

    os.setsid()  # out of the server's process group: its Ctrl-C is not this command's
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    for target, fd in enumerate(request["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = request["argv"]
    sys.path.insert(0, request.get("path0", ""))
    sys.modules["__main__"].__package__ = request.get("main_package")
    for name, line_buffering in request.get("stdio", {}).items():
        getattr(sys, name).reconfigure(line_buffering=line_buffering)
    random.seed()  # each command its own random state, not a copy of the preloaded one
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()  # this caller's profile, prefect.toml, .env
    setup_logging(incremental=False)  # console handlers on this terminal, at this caller's level
    from personaloom.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"): printed and 1, as the interpreter does
        return 1
    return 0


def main() -> int:
    """`python -m personaloom.preload`: import, then serve commands until the server stops."""
    import gc
    import importlib

    from personaloom import collector

    del sys.path[0]  # `-m` put the server's working folder first; each command puts back its own
    collector.for_command()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:  # an optional package not installed: the command imports what it has
            _log(f"not preloaded: {name} ({e})")
    try:
        from personaloom.filtering.langid import load_model

        load_model()
    except ImportError as e:
        _log(f"not preloaded: the language ID model ({e})")
    gc.collect()
    gc.freeze()  # what the imports made stays shared with the children, untouched by their collections
    request = _Preloaded(socket_path()).serve()
    if request is None:
        _log("stopped")
        return 0
    return _become(request)


if __name__ == "__main__":
    sys.exit(main())
