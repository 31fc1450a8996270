"""A hostile endpoint on a real loopback socket: malformed envelopes, a drip, an echo of the key, an
outage. Nothing crashes, nothing invalid is cached, nothing is published from a failing endpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from personaloom.llm.cache import ResponseCache
from personaloom.llm.client import LLM, LLMError, LLMResult
from personaloom.schemas.config import LLMConfig
from personaloom.testing.cli import TEST_KEY
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.hostile import ENVELOPES, HostileEndpoint


class Answer(BaseModel):
    verdict: bool
    reason: str = Field(min_length=1, max_length=400)


class _S:
    title, description, context, apis = "Plan a trip", "weekend away", "in May", []


class _Q:
    def __init__(self, i: int) -> None:
        self.personalized_query = self.neutralized_query = f"Where should I go hiking, option {i}?"


def _llm(url: str, cache: Path | None = None, **cfg: object) -> LLM:
    cfg = {"max_retries": 2, **cfg}
    return LLM(
        LLMConfig(model="fake", **cfg),  # type: ignore[arg-type]
        base_url=url,
        api_key=TEST_KEY,
        cache=ResponseCache(cache) if cache else None,
    )


def _ask(llm: LLM, n: int = 1) -> list[LLMResult[Answer]]:
    async def go() -> list[LLMResult[Answer]]:
        try:
            return list(
                await asyncio.gather(
                    *(
                        llm.structured(
                            "filter/answerability", Answer, stage="t", query=_Q(i), scene=_S(), language="en"
                        )
                        for i in range(n)
                    )
                )
            )
        finally:
            await llm.aclose()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def upstream() -> FakeOpenAI:
    with FakeOpenAI() as fake:
        yield fake


@pytest.mark.parametrize("shape", sorted(ENVELOPES))
def test_a_malformed_envelope_is_retried_never_raised(upstream: FakeOpenAI, shape: str) -> None:
    with HostileEndpoint(upstream, [shape]) as hostile:
        llm = _llm(hostile.base_url)
        (res,) = _ask(llm)
    assert res.ok and hostile.chat_requests == 2 and llm.usage["t"].retries == 1


@pytest.mark.parametrize("shape", ["array", "content_int", "usage_str", "bad_utf8"])
def test_an_endpoint_that_only_answers_garbage_fails_the_call_in_one_result(
    upstream: FakeOpenAI, shape: str
) -> None:
    with HostileEndpoint(upstream, then=shape) as hostile:
        llm = _llm(hostile.base_url, max_retries=1)
        (res,) = _ask(llm)
    assert not res.ok and res.error and llm.usage["t"].errors == 1
    assert "malformed reply" in (llm.breaker.last_error or "")


def test_a_drip_is_bounded_by_the_timeout_as_a_whole(upstream: FakeOpenAI) -> None:
    """One byte every 2 s restarts no timer: the request ends at `timeout`, and the retry succeeds."""
    with HostileEndpoint(upstream, ["drip"]) as hostile:
        llm = _llm(hostile.base_url, timeout=1.5)
        started = time.monotonic()
        (res,) = _ask(llm)
        took = time.monotonic() - started
    assert res.ok and took < 6, took
    assert "no reply within 1.5 s" not in (llm.breaker.last_error or "")  # recovered: no failed call


def test_an_answer_that_is_not_json_is_never_cached(upstream: FakeOpenAI, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HostileEndpoint(upstream, then="broken_json") as hostile:
        (res,) = _ask(_llm(hostile.base_url, cache, max_retries=0))
    assert not res.ok and len(ResponseCache(cache)) == 0  # the repair turn's reply was torn too
    with HostileEndpoint(upstream) as healthy:
        (res,) = _ask(_llm(healthy.base_url, cache))
        assert res.ok and healthy.chat_requests == 1
    with HostileEndpoint(upstream, then="500") as down:  # now cached: no call is made at all
        (res,) = _ask(_llm(down.base_url, cache))
        assert res.ok and res.cached and down.chat_requests == 0


def test_an_echoed_key_is_scrubbed_before_it_is_stored(upstream: FakeOpenAI, tmp_path: Path) -> None:
    with HostileEndpoint(upstream, then="echo_auth") as hostile:
        (res,) = _ask(_llm(hostile.base_url, tmp_path / "cache"))
    assert res.ok and "[redacted]" in res.raw and TEST_KEY not in res.raw
    for seg in (tmp_path / "cache").iterdir():
        assert TEST_KEY not in seg.read_text()


def test_the_circuit_breaker_stops_a_run_whose_calls_keep_failing(upstream: FakeOpenAI) -> None:
    with HostileEndpoint(upstream, then="500") as hostile:
        llm = _llm(hostile.base_url, max_retries=0)
        with pytest.raises(LLMError) as e:
            _ask(llm, n=40)
    msg = str(e.value)
    assert hostile.base_url in msg and "HTTP 500" in msg and "resume" in msg and TEST_KEY not in msg
    assert hostile.chat_requests < 40  # stopped early: the rest were never sent


def test_damaged_cache_entries_are_misses_and_counted(upstream: FakeOpenAI, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _ask(_llm(upstream.base_url, cache), n=8)
    (seg,) = cache.iterdir()
    data = bytearray(seg.read_bytes())
    lines = data.split(b"\n")
    for i in range(4):  # flip one bit inside the value of four entries
        at = lines[i].index(b'"v":') + 12
        lines[i][at] ^= 0x01
    seg.write_bytes(b"\n".join(lines))
    before = upstream.stats.total
    llm = _llm(upstream.base_url, cache)
    results = _ask(llm, n=8)
    assert all(r.ok for r in results)
    assert upstream.stats.total - before == 4 and llm.cache is not None and llm.cache.damaged == 4
    assert llm.usage["t"].cache_hits == 4


def test_an_unwritable_cache_keeps_the_answers_for_the_run(
    upstream: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = tmp_path / "full"
    full.write_text("not a folder")  # the cache cannot be created: every put fails
    llm = _llm(upstream.base_url, full / "cache")
    cache = llm.cache
    assert cache is not None
    _ask(llm, n=3)
    assert cache.unwritten == 3 and len(cache) == 3
    warnings = [
        r.getMessage() for r in caplog.records if "cannot write the LLM response cache" in r.getMessage()
    ]
    assert len(warnings) == 1 and str(full / "cache") in warnings[0]


def test_a_full_disk_truncates_the_torn_line(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: the answer is kept in memory, the segment stays whole."""
    cache = ResponseCache(tmp_path / "c")
    cache.put("a", {"content": "first"})
    cache._segment = open("/dev/full", "ab", buffering=0)  # noqa: SIM115  # the disk fills up now
    cache.put("b", {"content": "second"})
    cache.put("c", {"content": "third"})
    assert cache.get("b") == {"content": "second"} and cache.unwritten == 2
    assert "No space left" in (cache.write_error or "")
    again = ResponseCache(tmp_path / "c")
    assert again.get("a") == {"content": "first"} and again.get("b") is None and again.damaged == 0


def test_url_credentials_are_refused_without_echoing_them() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        LLMConfig(base_url=f"http://user:{TEST_KEY}@127.0.0.1:9/v1")
    assert "OPENAI_API_KEY" in e.value.errors()[0]["msg"] and TEST_KEY not in e.value.errors()[0]["msg"]
