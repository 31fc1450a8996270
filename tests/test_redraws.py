"""An answer stage 5 would drop is drawn again: declared checks, seeds, the cache, and stage 5's agreement."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from personaloom.llm.cache import ResponseCache
from personaloom.llm.client import LLM
from personaloom.llm.prompts import PromptLibrary
from personaloom.schemas.config import LLMConfig
from personaloom.schemas.drafts import QueryDraft
from personaloom.schemas.filtering import FilterConfig
from personaloom.schemas.records import Persona, PersonaRecord, Query, Rejection
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.filter.checks import AnswerChecks
from personaloom.stages.filter.grounding import ExampleIndex
from personaloom.stages.filter.stage import cheap_filter, grounded
from personaloom.stages.queries import SIMULATE, SimulateJob, query_grounded
from personaloom.stages.samples import sample_records
from personaloom.testing.fake_openai import FakeOpenAI, call_of

# the small prompt set's first worked example: what Gemma 3 270M copies most
COPY = "Hi! I work nights at the hospital, can you give me a short list of easy meals for my shifts?"
OWN = "Could you suggest a quick dinner from what is left in my fridge tonight? I have about twenty minutes."
GERMAN = "Kannst du mir bitte ein schnelles Abendessen aus den Resten in meinem Kühlschrank vorschlagen?"


def _persona(language: str) -> Persona:
    p = sample_records(load_catalogue()).persona.persona
    demographics = p.Demographics.model_copy(update={"Interaction_Language": language})
    return p.model_copy(update={"Demographics": demographics})


def _job(language: str = "en") -> SimulateJob:
    return SimulateJob(sample_records(load_catalogue()).scene, _persona(language))


def _draft(text: str) -> str:
    return json.dumps({"personalized_query": text, "revealed_fields": []})


def _simulator(first: str, redrawn: str | None = None) -> Any:
    """The simulator's answer: `first` for a request without a seed, `redrawn` (default: `first`) with one."""

    def reply(body: dict[str, Any]) -> str | None:
        if call_of(body) != SIMULATE.name:
            return None
        return _draft(first if body.get("seed") is None else (redrawn or first))

    return reply


def _run(fake: FakeOpenAI, job: SimulateJob, cache: Path | None = None, **cfg: Any) -> tuple[Any, LLM]:
    config = LLMConfig(model="fake", prompt_set="small", max_retries=0, **cfg)
    llm = LLM(
        config,
        base_url=fake.base_url,
        api_key="sk-x",
        cache=ResponseCache(cache) if cache else None,
        checks=AnswerChecks(ExampleIndex(PromptLibrary(prompt_set="small").examples())),
    )

    async def go() -> Any:
        try:
            return await llm.run(SIMULATE, job)
        finally:
            await llm.aclose()

    return asyncio.run(go()), llm


def _chat(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [r["body"] for r in fake.requests if r["path"].endswith("/chat/completions")]


def test_a_copied_example_is_drawn_again_with_a_seed_and_the_redraw_is_cached(tmp_path: Path) -> None:
    with FakeOpenAI(responder=_simulator(COPY, OWN)) as fake:
        query, llm = _run(fake, _job(), tmp_path / "cache")
        seeds = [b.get("seed") for b in _chat(fake)]
    assert isinstance(query, Query) and query.personalized_query == OWN
    assert seeds == [None, 1]  # the first draw as always (its cache entry unchanged), then seed 1
    assert llm.usage["queries"].redraws == 1 and llm.usage["queries"].flagged == 0
    with FakeOpenAI(responder=_simulator(COPY, "a third answer")) as fake:  # a re-run replays both draws
        again, llm = _run(fake, _job(), tmp_path / "cache")
        assert not _chat(fake)
    assert again == query and llm.usage["queries"].cache_hits == 2


def test_redraws_stop_at_the_limit_and_stage_5_drops_what_is_still_flagged() -> None:
    with FakeOpenAI(responder=_simulator(COPY)) as fake:
        query, llm = _run(fake, _job(), redraws=3)
        assert [b.get("seed") for b in _chat(fake)] == [None, 1, 2, 3]
    assert llm.usage["queries"].redraws == 3 and llm.usage["queries"].flagged == 1
    assert isinstance(query, Query) and query.personalized_query == COPY
    scene = sample_records(load_catalogue()).scene
    (rejected,) = grounded([query], [scene], llm.checks.examples).rejections
    assert rejected.reason == "copied_example"


def test_no_redraw_when_the_answer_passes_when_disabled_or_at_temperature_zero() -> None:
    with FakeOpenAI(responder=_simulator(OWN, COPY)) as fake:
        _, llm = _run(fake, _job())
        assert len(_chat(fake)) == 1 and llm.usage["queries"].redraws == 0
    for cfg in ({"redraws": 0}, {"temperature": 0.0}):  # at temperature 0 a redraw repeats the answer
        with FakeOpenAI(responder=_simulator(COPY, OWN)) as fake:
            query, llm = _run(fake, _job(), **cfg)
            assert len(_chat(fake)) == 1, cfg
        assert query.personalized_query == COPY and llm.usage["queries"].flagged == 1


def test_an_invalid_redraw_keeps_the_valid_answer_before_it() -> None:
    def reply(body: dict[str, Any]) -> str | None:
        if call_of(body) != SIMULATE.name:
            return None
        return _draft(COPY) if body.get("seed") is None else "no JSON here"

    with FakeOpenAI(responder=reply) as fake:
        query, llm = _run(fake, _job(), redraws=1)
        # the redraw, asked afresh twice (not JSON at all: a torn reply), then its repair turn
        assert [b.get("seed") for b in _chat(fake)] == [None, 1, 1, 1, 1]
    assert isinstance(query, Query) and query.personalized_query == COPY
    assert llm.usage["queries"].repairs == 1 and llm.usage["queries"].flagged == 1


def test_an_answer_in_the_wrong_language_is_drawn_again() -> None:
    with FakeOpenAI(responder=_simulator(OWN, GERMAN)) as fake:
        query, llm = _run(fake, _job("de"))
    assert query.personalized_query == GERMAN and llm.usage["queries"].redraws == 1


@pytest.mark.parametrize(
    ("text", "language"),
    [
        (COPY, "en"),
        (COPY.lower().replace("hi! ", "hello, "), "en"),  # a copy with small edits
        (f"{COPY} Thanks a lot.", "en"),
        (OWN, "en"),
        (OWN, "de"),  # English for a German persona
        (GERMAN, "de"),
        (GERMAN, "en"),
        ("Hola, ¿me recomiendas una receta rápida para esta noche con lo que tengo en la nevera?", "es"),
    ],
)
def test_the_check_flags_exactly_what_stage_5_drops(text: str, language: str) -> None:
    """The check asks the very rules stage 5 applies: it passes a query iff stage 5 keeps it (for these
    reasons: a copied example, the wrong language)."""
    samples = sample_records(load_catalogue())
    job = _job(language)
    checks = AnswerChecks(ExampleIndex(PromptLibrary(prompt_set="small").examples()))
    flagged = query_grounded(job, QueryDraft(personalized_query=text, revealed_fields=[]), checks)
    query = SIMULATE.build(job, _result(text))
    assert isinstance(query, Query)
    record = PersonaRecord.model_validate(samples.persona.model_dump() | {"persona": job.persona})
    by_rules = cheap_filter([query], FilterConfig(), {record.persona_id: language})
    kept = by_rules.records and grounded(by_rules.records, [samples.scene], checks.examples).records
    dropped = [
        r.reason
        for r in [*by_rules.rejections, *grounded([query], [samples.scene], checks.examples).rejections]
    ]
    assert (flagged is None) == bool(kept), (flagged, dropped)
    assert flagged is None or set(dropped) & {"copied_example", "wrong_language"}


def _result(text: str) -> Any:
    from personaloom.llm.client import LLMResult

    return LLMResult(QueryDraft(personalized_query=text, revealed_fields=[]), _draft(text))


def test_every_generating_call_of_a_build_declares_its_check() -> None:
    from personaloom.stages.queries import NEUTRALIZE
    from personaloom.stages.scenes import ENRICH, LIST, REVISIT

    assert all(c.check is not None for c in (LIST, ENRICH, REVISIT, SIMULATE, NEUTRALIZE))
    assert SIMULATE.describe({})["check"] == "query_grounded"
    assert not isinstance(SIMULATE.build(_job(), _result(OWN)), Rejection)
