"""The one LLM client: structured output, repair, cache, retries, limits, accounting, errors."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import BaseModel, Field

from personaloom.llm.cache import ResponseCache
from personaloom.llm.calls import CALL_HEADER, EMBEDDINGS_CALL
from personaloom.llm.client import LLM, LLMError, clamp_schema, endpoint_label
from personaloom.llm.limits import TokenBucket
from personaloom.llm.prompts import PromptLibrary
from personaloom.schemas.config import LLMConfig
from personaloom.testing.fake_openai import FakeOpenAI


class Answer(BaseModel):
    verdict: bool
    reason: str = Field(min_length=1, max_length=200)


def make(fake: FakeOpenAI, tmp_path=None, key: str = "sk-test", **cfg) -> LLM:
    cache = ResponseCache(tmp_path / "cache") if tmp_path is not None else None
    cfg.setdefault("max_retries", 3)
    return LLM(LLMConfig(model="fake", **cfg), base_url=fake.base_url, api_key=key, cache=cache)


def ask(llm: LLM, n: int = 1, **kw):
    kw.setdefault("language", "en")

    async def go():
        try:
            return await asyncio.gather(
                *(
                    llm.structured("filter/answerability", Answer, stage="t", query=_Q(i), scene=_S(), **kw)
                    for i in range(n)
                )
            )
        finally:
            await llm.aclose()

    return asyncio.run(go())


class _S:
    title, description, context, apis = "Plan a trip", "weekend away", "in May", []


LANG = {"language": "en"}
ASSIST_VARS = {"turns": [], **LANG}


class _Q:
    def __init__(self, i: int) -> None:
        self.personalized_query = f"Where should I go hiking this weekend, option {i}?"
        self.neutralized_query = self.personalized_query


def test_structured_output_is_validated(fake: FakeOpenAI) -> None:
    (res,) = ask(make(fake))
    assert res.ok and isinstance(res.value, Answer) and not res.cached
    body = fake.requests[-1]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["verdict", "reason"]


def test_llama_cpp_form_of_structured_output(fake: FakeOpenAI) -> None:
    (res,) = ask(make(fake, structured_output="json_object"))
    assert res.ok
    assert fake.requests[-1]["body"]["response_format"]["type"] == "json_object"
    assert "schema" in fake.requests[-1]["body"]["response_format"]


def test_identical_rerun_makes_zero_calls(fake: FakeOpenAI, tmp_path) -> None:
    first = ask(make(fake, tmp_path), n=5)
    calls = fake.stats.total
    second = ask(make(fake, tmp_path), n=5)
    assert fake.stats.total == calls == 5
    assert [r.value for r in first] == [r.value for r in second] and all(r.cached for r in second)


def test_cache_keys_of_earlier_runs_still_hit(fake: FakeOpenAI, tmp_path) -> None:
    """The pre-serialized response_format keys a call as the dict did: an older cache still answers."""
    from personaloom.llm.cache import cache_key

    llm = make(fake, tmp_path)
    ask(llm)
    (req,) = fake.requests
    body = req["body"]
    rendered = llm.prompts.render("filter/answerability", query=_Q(0), scene=_S(), language="en")
    old = cache_key(
        {
            "template": rendered.name,
            "template_hash": rendered.template_hash,
            "model": "fake",
            "messages": body["messages"],
            "temperature": body["temperature"],
            "max_tokens": body["max_tokens"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Answer", "schema": Answer.model_json_schema(), "strict": False},
            },
        }
    )
    assert old in ResponseCache(tmp_path / "cache")._index
    # the schema sent keeps the model's field order: a grammar-constrained server writes them in it
    assert list(body["response_format"]["json_schema"]["schema"]["properties"]) == ["verdict", "reason"]


def test_requests_carry_no_platform_telemetry_headers(fake: FakeOpenAI) -> None:
    ask(make(fake))
    headers = {k.lower() for k in fake.requests[-1].get("headers", {})}
    assert "authorization" in headers and not any(h.startswith("x-stainless-os") for h in headers)


def test_every_request_names_its_call_in_a_header_outside_the_body(fake: FakeOpenAI) -> None:
    """Chat and embeddings requests carry CALL_HEADER (the call's name, no secret); the body, and so the
    cache key and every answer, is what it was without it."""
    llm = make(fake)

    async def go() -> None:
        try:
            await llm.structured("filter/answerability", Answer, stage="t", query=_Q(0), scene=_S(), **LANG)
            await llm.text("queries/assist", stage="t", **ASSIST_VARS)
            await llm.embed(["a text"], "fake-embed")
        finally:
            await llm.aclose()

    asyncio.run(go())
    sent = [(r["path"], r["headers"].get(CALL_HEADER.lower())) for r in fake.requests]
    assert sent == [
        ("/v1/chat/completions", "filter/answerability"),
        ("/v1/chat/completions", "queries/assist"),
        ("/v1/embeddings", EMBEDDINGS_CALL),
    ]
    assert all(CALL_HEADER.lower() not in json.dumps(r["body"]).lower() for r in fake.requests)
    assert all(r["body"].call == name for r, (_, name) in zip(fake.requests, sent, strict=True))


def test_a_retry_resends_the_same_request_bytes() -> None:
    """A 200 without choices is retried with the very body first sent (it is serialized once)."""
    with FakeOpenAI() as fake:
        llm = make(fake, max_retries=2)
        sent: list[bytes] = []
        answer = json.dumps({"verdict": True, "reason": "fine"})
        replies = [b'{"choices": []}', json.dumps({"choices": [{"message": {"content": answer}}]}).encode()]

        async def request(url: str, payload: bytes, call: str) -> bytes:
            sent.append(payload)
            return replies[len(sent) - 1]

        llm._request = request  # type: ignore[method-assign]
        (res,) = ask(llm)
    assert res.ok and len(sent) == 2 and sent[0] == sent[1] and isinstance(sent[0], bytes)
    assert llm.usage["t"].calls == 2


def test_cache_key_covers_template_content(fake: FakeOpenAI, tmp_path) -> None:
    import shutil

    from personaloom.paths import PROMPTS_DIR

    shutil.copytree(PROMPTS_DIR, tmp_path / "prompts")
    llm = make(fake, tmp_path)
    llm.prompts = PromptLibrary(tmp_path / "prompts")
    ask(llm)
    path = tmp_path / "prompts" / "default" / "filter" / "answerability.j2"
    path.write_text(path.read_text() + "\n{# edited #}")
    llm = make(fake, tmp_path)
    llm.prompts = PromptLibrary(tmp_path / "prompts")
    ask(llm)
    assert fake.stats.total == 2


def test_a_torn_reply_is_asked_again_as_it_was() -> None:
    """Not JSON at all (a garbled body) is a transient fault: the same request again, no repair turn."""
    with FakeOpenAI(fault_schedule=["malformed", "ok"]) as fake:
        llm = make(fake)
        (res,) = ask(llm)
        assert res.ok and llm.usage["t"].repairs == 0 and llm.usage["t"].retries == 1
        assert fake.requests[0]["body"]["messages"] == fake.requests[1]["body"]["messages"]


def test_invalid_output_gets_one_repair_turn() -> None:
    answers = iter(['{"verdict": "maybe"}', json.dumps({"verdict": True, "reason": "fine"})])
    with FakeOpenAI(responder=lambda body: next(answers)) as fake:
        llm = make(fake)
        (res,) = ask(llm)
        assert res.ok and llm.usage["t"].repairs == 1
        repair = fake.requests[-1]["body"]["messages"]
        assert repair[-2]["role"] == "assistant" and "not valid" in repair[-1]["content"]


def test_raw_text_kept_when_repair_also_fails() -> None:
    with FakeOpenAI(responder=lambda body: '{"verdict": "maybe"}') as fake:
        llm = make(fake)
        (res,) = ask(llm)
    assert res.value is None and res.raw == '{"verdict": "maybe"}' and "verdict" in res.error
    assert llm.usage["t"].failures == 1 and llm.usage["t"].calls == 2


def test_truncated_output_is_not_accepted() -> None:
    with FakeOpenAI(fault_schedule=["length", "ok"]) as fake:
        llm = make(fake)
        (res,) = ask(llm)
    assert res.ok and llm.usage["t"].repairs == 1


def test_429_waits_for_retry_after_then_succeeds() -> None:
    with FakeOpenAI(fault_schedule=["429", "429", "ok"], retry_after=0.3) as fake:
        llm = make(fake)
        started = time.perf_counter()
        (res,) = ask(llm)
        elapsed = time.perf_counter() - started
    assert res.ok and llm.usage["t"].retries == 2 and elapsed >= 0.6


def test_server_errors_and_timeouts_are_retried() -> None:
    with FakeOpenAI(fault_schedule=["500", "hang", "ok"], hang_seconds=5) as fake:
        llm = make(fake, timeout=0.5)
        (res,) = ask(llm)
    assert res.ok and llm.usage["t"].retries == 2


def test_retries_run_out_into_a_failed_result() -> None:
    with FakeOpenAI(fault_schedule=["500"] * 10) as fake:
        llm = make(fake, max_retries=1)
        (res,) = ask(llm)
    assert not res.ok and res.error == "endpoint failed after retries"


@pytest.mark.parametrize(
    "kind,expect",
    [("key", "rejected the API key (401)"), ("model", "model 'fake' not found")],
)
def test_fatal_errors_are_one_line_without_the_key(kind: str, expect: str) -> None:
    secret = "sk-live-VERYSECRET123456"
    opts = {"api_key": "sk-right"} if kind == "key" else {"known_models": {"other"}}
    with FakeOpenAI(**opts) as fake:
        llm = make(fake, key=secret)
        with pytest.raises(LLMError) as err:
            ask(llm)
    msg = str(err.value)
    assert expect in msg and secret not in msg and "\n" not in msg


def test_concurrency_limit_holds() -> None:
    with FakeOpenAI(latency=0.2) as fake:
        llm = make(fake, concurrency=2)
        started = time.perf_counter()
        ask(llm, n=6)
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.6  # 6 calls, 2 at a time, 0.2 s each


def test_calls_run_concurrently_up_to_the_limit() -> None:
    with FakeOpenAI(latency=0.3) as fake:
        started = time.perf_counter()
        ask(make(fake, concurrency=16), n=16)
        assert time.perf_counter() - started < 1.5


def test_token_bucket_paces_requests() -> None:
    async def go() -> float:
        bucket = TokenBucket(per_minute=600)  # 10 per second, 600 at once
        bucket.level = 0
        started = time.perf_counter()
        for _ in range(5):
            await bucket.take(1)
        return time.perf_counter() - started

    assert 0.4 <= asyncio.run(go()) < 1.5


def test_rpm_limit_applies_to_calls(fake: FakeOpenAI) -> None:
    llm = make(fake, rpm=120)
    llm.limiter.requests.level = 0  # an empty bucket: 2 requests per second
    started = time.perf_counter()
    ask(llm, n=3)
    assert time.perf_counter() - started >= 1.2


def test_token_accounting_per_stage(fake: FakeOpenAI) -> None:
    llm = make(fake)
    ask(llm, n=3)
    u = llm.usage["t"]
    assert u.calls == 3 and u.prompt_tokens > 0 and u.completion_tokens > 0


def test_clamped_schema_tightens_bounds_only() -> None:
    schema = clamp_schema(Answer.model_json_schema(), 50, 2)
    assert schema["properties"]["reason"]["maxLength"] == 50
    assert json.dumps(schema).count("maxLength") == 1


def test_endpoint_label_strips_credentials() -> None:
    assert (
        endpoint_label("https://user:pw@api.example.com:8443/v1?key=abc") == "https://api.example.com:8443/v1"
    )


def test_raw_newlines_inside_strings_are_accepted() -> None:
    with FakeOpenAI(responder=lambda body: '{"verdict": true, "reason": "two\nlines"}') as fake:
        (res,) = ask(make(fake))
    assert res.ok and res.value.reason == "two\nlines"
