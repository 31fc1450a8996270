"""Run the `personaloom` command as a user does, in a real process, and check its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

# A key shaped like a real one, so tests can assert it never reaches logs, manifests or files.
TEST_KEY = "sk-test-SECRET-0123456789abcdef"
EXE = [sys.executable, "-m", "personaloom"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`personaloom ARGS` with the caller's environment minus any ambient endpoint, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    full_env.update(env or {})
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, no traceback anywhere, exactly one `error: ...` line on stderr holding every needle."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    """`personaloom server --port PORT` as a user starts it, returned once it printed its ready line."""
    server = subprocess.Popen(
        [*EXE, "server", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline() if server.stdout else ""
    if not line.startswith(f"Prefect server at http://127.0.0.1:{port}/api"):
        server.kill()
        raise AssertionError(
            f"personaloom server did not start: {line!r} {server.stderr and server.stderr.read()}"
        )
    return server
