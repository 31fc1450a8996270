"""Each stage alone, against the fake server over a real socket (no Prefect engine needed)."""

from __future__ import annotations

import asyncio
import json
import time
from functools import cache

import pytest

from personaloom.llm.client import LLM
from personaloom.pipeline import STAGES
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.filtering import FilterConfig
from personaloom.schemas.records import PersonaRecord, Query
from personaloom.stages.base import StageContext
from personaloom.stages.catalogue import Catalogue, load_catalogue
from personaloom.stages.drift import active_changes
from personaloom.stages.filter import stage as filter_stage
from personaloom.stages.personas import merge_persona, session_times
from personaloom.stages.scenes import plan_counts
from personaloom.stages.seed import sample_skeleton, sample_skeletons
from personaloom.testing.fake_openai import FakeOpenAI


@cache
def catalogue() -> Catalogue:
    return load_catalogue()


def persona_record(index: int = 0, n_sessions: int = 6) -> PersonaRecord:
    cat = catalogue()
    seed = sample_skeletons(cat, range(index + 1), 7, n_sessions=n_sessions, n_changes=2)[index]
    return merge_persona(seed, None, cat)


def make_llm(fake: FakeOpenAI, **cfg) -> LLM:
    return LLM(LLMConfig(model="fake", **cfg), base_url=fake.base_url, api_key="sk-test", cache=None)


STAGE_OF = {s.name: s for s in STAGES}


def context(llm: LLM, rows: range = range(0), **config) -> StageContext:
    """What the pipeline hands a stage: a stage runs alone on its inputs, without Prefect or files."""
    return StageContext(BuildConfig(**config), llm, catalogue(), rows)


def seed_stage(llm: LLM, rows: range, **config):
    return STAGE_OF["seed"].run({}, context(llm, rows, **config))


def personas_stage(llm: LLM, seeds):
    return STAGE_OF["personas"].run({"seeds": seeds}, context(llm))


def scenes_stage(llm: LLM, seeds, personas, revisit_share: float):
    return STAGE_OF["scenes"].run(
        {"seeds": seeds, "personas": personas}, context(llm, revisit_share=revisit_share)
    )


def queries_stage(llm: LLM, scenes, personas):
    return STAGE_OF["queries"].run({"scenes": scenes, "personas": personas}, context(llm))


def answerability(queries, scenes, llm: LLM):
    return filter_stage.judge_each(filter_stage.ANSWERABILITY, queries, scenes, llm)


def drive(llm: LLM, coro):
    """Run one stage coroutine, then close the client inside the same event loop."""

    async def go():
        try:
            return await coro
        finally:
            await llm.aclose()

    return asyncio.run(go())


# ---------------------------------------------------------------- stage 1


def test_seed_tables_are_large_enough() -> None:
    cat = catalogue()
    assert len(cat.scenes) >= 50 and len(cat.apis) >= 25
    rows = sample_skeletons(cat, range(1000), 1, n_sessions=20, n_changes=2)
    assert len({(r.name, r.occupation, r.locale) for r in rows}) >= 990
    assert len({r.seed for r in rows}) == 1000


def test_one_persona_regenerates_alone_from_its_seed() -> None:
    cat = catalogue()
    rows = sample_skeletons(cat, range(30), 5, n_sessions=8, n_changes=2)
    again = sample_skeleton(cat, 17, rows[17].seed, n_sessions=8, n_changes=2)
    assert again == rows[17]
    assert sample_skeletons(cat, range(30), 6, n_sessions=8, n_changes=2)[17] != rows[17]


def test_skeletons_are_consistent() -> None:
    cat = catalogue()
    occupations = {o["occupation"]: o for o in cat.occupations}
    for r in sample_skeletons(cat, range(200), 3, n_sessions=10, n_changes=3):
        o = occupations[r.occupation]
        assert o["min_age"] <= r.age <= o["max_age"] or not any(
            x["min_age"] <= r.age <= x["max_age"] for x in cat.occupations
        )
        assert len(r.session_gaps_days) == 10 and r.session_gaps_days[0] == 0
        ats = [c.at_session for c in r.planned_changes]
        assert ats == sorted(set(ats)) and all(1 <= a < 10 for a in ats)


def test_hint_expansion_keeps_row_when_model_fails() -> None:
    with FakeOpenAI(responder=lambda body: "not json at all") as fake:
        out = drive(
            llm := make_llm(fake),
            STAGE_OF["seed"].run(
                {}, context(llm, rows=range(3), seed=0, scenes_per_persona=3, changes_per_persona=1)
            ),
        )
    assert len(out.records) == 3
    assert all(r.expanded_hint is None and r.fallback_fields == ["expanded_hint"] for r in out.records)
    assert all(r.raw_output == "not json at all" for r in out.records)


# ---------------------------------------------------------------- stage 2


def test_persona_merges_draft_and_fixed_attributes(fake: FakeOpenAI) -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(4), 2, n_sessions=6, n_changes=2)
    out = drive(llm := make_llm(fake), STAGE_OF["personas"].run({"seeds": seeds}, context(llm)))
    for seed, rec in zip(seeds, out.records, strict=True):
        d = rec.persona.Demographics
        assert (d.Name, d.Age, d.Nationality, d.Language) == (
            seed.name,
            seed.age,
            seed.nationality,
            seed.languages,
        )
        assert rec.persona.Personality.Extraversion_or_Introversion[0] == seed.mbti[0]
        assert "Usage_Pattern" not in rec.fallback_fields  # the fake answered with valid JSON
        assert [c.effective_session for c in rec.persona.Changes] == [
            c.at_session for c in seed.planned_changes
        ]
        times = session_times(seed)
        assert [c.date for c in rec.persona.Changes] == [
            times[c.at_session].date() for c in seed.planned_changes
        ]


def test_persona_falls_back_to_seed_attributes_and_says_so() -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(2), 2, n_sessions=4, n_changes=1)
    with FakeOpenAI(responder=lambda body: '{"Career_Information": ""}') as fake:
        out = drive(llm := make_llm(fake), STAGE_OF["personas"].run({"seeds": seeds}, context(llm)))
        assert fake.stats.chat_ok == 4  # one call and one repair turn per persona
    rec = out.records[0]
    assert "Usage_Pattern" in rec.fallback_fields and "Changes[0].reason" in rec.fallback_fields
    assert rec.raw_output == '{"Career_Information": ""}'
    assert rec.persona.Pattern.Usage_Pattern in cat.attributes["usage"]
    assert rec.persona.Personality.Values_and_Interests == seeds[0].values_interests


# ---------------------------------------------------------------- stage 3


@pytest.mark.parametrize("n,share", [(20, 0.2), (4, 0.2), (1, 0.2), (10, 0.0)])
def test_scene_plan_counts(n: int, share: float) -> None:
    common, specific, revisit = plan_counts(n, share)
    assert common + specific + revisit == n and revisit < max(n, 1) and min(common, specific, revisit) >= 0


def test_scenes_are_ordered_sessions_with_revisits(fake: FakeOpenAI) -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(3), 4, n_sessions=10, n_changes=2)
    personas = [merge_persona(s, None, cat) for s in seeds]
    out = drive(
        llm := make_llm(fake),
        STAGE_OF["scenes"].run({"seeds": seeds, "personas": personas}, context(llm, revisit_share=0.2)),
    )
    assert len(out.records) == 30
    for pid in {s.persona_id for s in seeds}:
        mine = [s for s in out.records if s.persona_id == pid]
        assert [s.session_index for s in mine] == list(range(10))
        assert all(a.timestamp < b.timestamp for a, b in zip(mine, mine[1:], strict=False))
        kinds = [s.kind for s in mine]
        # the fake proposes 1-3 persona-specific ideas; catalogue scenes stand in for the rest, marked
        stand_ins = sum("kind" in s.fallback_fields for s in mine)
        assert (
            kinds.count("revisit") == 2
            and kinds.count("specific") + stand_ins == 4
            and kinds.count("specific") >= 1
        )
        for s in mine:
            assert s.apis and all(a.name in cat.apis for a in s.apis)
            if s.kind == "revisit":
                origin = next(o for o in mine if o.scene_id == s.revisits)
                assert origin.session_index < s.session_index and origin.kind != "revisit"
                assert s.title == f"Follow-up: {origin.title}"


def test_failed_scene_list_uses_catalogue_scenes_marked_as_fallback() -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(1), 4, n_sessions=6, n_changes=0)
    personas = [merge_persona(s, None, cat) for s in seeds]
    with FakeOpenAI(responder=lambda body: "{}") as fake:
        out = drive(
            llm := make_llm(fake),
            STAGE_OF["scenes"].run({"seeds": seeds, "personas": personas}, context(llm, revisit_share=0.2)),
        )
    assert len(out.records) == 6
    assert all(s.kind != "specific" for s in out.records)
    marked = [s for s in out.records if "kind" in s.fallback_fields]
    assert len(marked) == plan_counts(6, 0.2)[1]
    assert all("context" in s.fallback_fields and s.raw_output == "{}" for s in out.records)


# ---------------------------------------------------------------- stage 4


def test_queries_reveal_fields_and_are_neutralized(fake: FakeOpenAI) -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(2), 9, n_sessions=4, n_changes=2)
    personas = [merge_persona(s, None, cat) for s in seeds]
    scenes = drive(
        llm := make_llm(fake),
        STAGE_OF["scenes"].run({"seeds": seeds, "personas": personas}, context(llm, revisit_share=0.25)),
    ).records
    out = drive(
        llm := make_llm(fake), STAGE_OF["queries"].run({"scenes": scenes, "personas": personas}, context(llm))
    )
    assert len(out.records) == len(scenes) and not out.rejections
    q = out.records[0]
    assert q.personalized_query and q.neutralized_query and q.neutralized_query != q.personalized_query
    assert all(f.count(".") == 1 for f in q.revealed_fields)


def test_query_reveals_found_in_text_even_if_model_omits_them() -> None:
    cat = catalogue()
    p = persona_record()
    interest = p.persona.Personality.Values_and_Interests[0]
    seeds = sample_skeletons(cat, range(1), 7, n_sessions=6, n_changes=2)

    def responder(body: dict) -> str | None:
        text = json.dumps(body["messages"])
        if "personalized_query" in text and "neutralized_query" not in text:
            return json.dumps(
                {"personalized_query": f"Any ideas for {interest} this weekend?", "revealed_fields": []}
            )
        return None

    with FakeOpenAI(responder=responder) as fake:
        scenes = drive(
            llm := make_llm(fake),
            STAGE_OF["scenes"].run({"seeds": seeds, "personas": [p]}, context(llm, revisit_share=0.2)),
        ).records[:1]
        (q,) = drive(
            llm := make_llm(fake), STAGE_OF["queries"].run({"scenes": scenes, "personas": [p]}, context(llm))
        ).records
    assert "Personality.Values_and_Interests" in q.revealed_fields


def test_query_rejected_with_raw_output_when_simulator_fails() -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(1), 1, n_sessions=3, n_changes=0)
    p = merge_persona(seeds[0], None, cat)
    with FakeOpenAI() as fake:
        scenes = drive(llm := make_llm(fake), scenes_stage(llm, seeds, [p], 0)).records
    with FakeOpenAI(responder=lambda body: "I refuse") as fake:
        out = drive(
            llm := make_llm(fake), STAGE_OF["queries"].run({"scenes": scenes, "personas": [p]}, context(llm))
        )
    assert not out.records and len(out.rejections) == 3
    assert {r.reason for r in out.rejections} == {"llm_invalid_output"} and out.rejections[
        0
    ].raw_output == "I refuse"


def test_active_changes_follow_the_time_line() -> None:
    p = persona_record(n_sessions=8).persona
    first = p.Changes[0].effective_session
    assert active_changes(p, first - 1) == [] and active_changes(p, first)[0] == p.Changes[0]


# ---------------------------------------------------------------- stage 5


def _q(i: int, text: str) -> Query:
    return Query(
        query_id=f"q{i}",
        scene_id=f"s{i}",
        persona_id="p0",
        session_index=i,
        personalized_query=text,
        neutralized_query=text,
        revealed_fields=[],
    )


def test_cheap_filter_rejects_with_reasons_and_never_drops_silently() -> None:
    qs = [
        _q(0, "Could you suggest a three day hiking route near Grenoble for early June with easy huts?"),
        _q(1, "Could you suggest a three day hiking route near Grenoble for early June with easy huts?"),
        _q(2, "As an AI language model I cannot help with that request today, sorry about it."),
        _q(3, "ok"),
        _q(4, "What should I cook tonight with leftover rice, two eggs and some spinach in the fridge?"),
    ]
    out = filter_stage.cheap_filter(qs, FilterConfig())
    reasons = {r.row_id: r.reason for r in out.rejections}
    assert [q.query_id for q in out.records] == ["q0", "q4"]
    assert (
        reasons["q1"] == "exact_duplicate"
        and next(r for r in out.rejections if r.row_id == "q1").dup_of == "q0"
    )
    assert reasons["q2"] == "refusal" and reasons["q3"] == "too_short"
    assert len(out.records) + len(out.rejections) == len(qs)


def test_answerability_rejects_only_unanswerable() -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(1), 1, n_sessions=2, n_changes=0)
    p = merge_persona(seeds[0], None, cat)
    with FakeOpenAI() as fake:
        scenes = drive(llm := make_llm(fake), scenes_stage(llm, seeds, [p], 0)).records
    qs = [_q(i, f"question number {i} about the plan") for i in range(2)]
    qs = [q.model_copy(update={"scene_id": s.scene_id}) for q, s in zip(qs, scenes, strict=False)]
    verdicts = iter(
        ['{"answerable": true, "reason": "fine"}', '{"answerable": false, "reason": "needs private data"}']
    )
    with FakeOpenAI(responder=lambda body: next(verdicts)) as fake:
        out = drive(
            llm := make_llm(fake, concurrency=1),
            answerability(qs, scenes, llm),
        )
    assert [q.query_id for q in out.records] == ["q0"]
    (rej,) = out.rejections
    assert rej.reason == "unanswerable" and rej.detail == "needs private data"


def test_persona_aware_dedup_levels() -> None:
    from personaloom.schemas.config import DedupLevels

    cat = catalogue()
    seeds = sample_skeletons(cat, range(3), 11, n_sessions=4, n_changes=0)
    p0, p1, p2 = (merge_persona(s, None, cat) for s in seeds)
    twin = p0.model_copy(update={"persona_id": "p-twin"})  # same user under another id
    with FakeOpenAI() as fake:
        scenes = drive(llm := make_llm(fake), scenes_stage(llm, seeds[:2], [p0, p1], 0.25)).records
    a, b = [s for s in scenes if s.persona_id == p0.persona_id and s.kind != "revisit"][:2]
    scenes = [
        s
        if s.scene_id != b.scene_id
        else s.model_copy(update={"title": a.title, "description": a.description})
        for s in scenes
    ]
    # a scene of another persona that equals one of p0's is NOT a duplicate: it is another user's session
    other = next(s for s in scenes if s.persona_id == p1.persona_id)
    scenes = [
        s
        if s.scene_id != other.scene_id
        else s.model_copy(update={"title": a.title, "description": a.description})
        for s in scenes
    ]
    qs = [
        _q(i, f"query text number {i}").model_copy(
            update={"scene_id": s.scene_id, "persona_id": s.persona_id}
        )
        for i, s in enumerate(scenes)
    ]
    qs.append(_q(99, "twin query").model_copy(update={"scene_id": "p-twin-s000", "persona_id": "p-twin"}))
    out = filter_stage.level_dedup(qs, scenes, [p0, p1, p2, twin], DedupLevels())
    why = {r.row_id: (r.reason, r.dup_of) for r in out.rejections}
    assert why["q99"] == ("persona_duplicate", p0.persona_id)
    b_query = next(q.query_id for q in qs if q.scene_id == b.scene_id)
    assert why[b_query] == ("scene_duplicate", a.scene_id)
    assert len(out.rejections) == 2 and len(out.records) == len(qs) - 2


def test_quality_score_rejects_below_the_bar() -> None:
    cat = catalogue()
    seeds = sample_skeletons(cat, range(1), 1, n_sessions=3, n_changes=0)
    p = merge_persona(seeds[0], None, cat)
    with FakeOpenAI() as fake:
        scenes = drive(llm := make_llm(fake), scenes_stage(llm, seeds, [p], 0)).records
    qs = [_q(i, f"question {i}").model_copy(update={"scene_id": s.scene_id}) for i, s in enumerate(scenes)]
    scores = {"question 0": 9, "question 1": 3, "question 2": "garbage"}

    def responder(body: dict) -> str:
        text = json.dumps(body["messages"])  # the repair turn carries the original query too
        score = next(v for k, v in scores.items() if k in text)
        return '{"score": "x"}' if score == "garbage" else f'{{"score": {score}, "reason": "r"}}'

    with FakeOpenAI(responder=responder) as fake:
        out = drive(
            llm := make_llm(fake), filter_stage.judge_each(filter_stage.QUALITY, qs, scenes, llm, min_score=6)
        )
    assert [q.query_id for q in out.records] == ["q0", "q2"]
    assert out.records[1].fallback_fields == ["quality"]  # the judge failed: kept, and marked
    (rej,) = out.rejections
    assert (rej.row_id, rej.reason, rej.score) == ("q1", "low_quality", 3.0)


def test_a_shard_samples_only_its_own_rows() -> None:
    """Each row has its own seed: a shard's slice equals the same rows of the whole sample."""
    cat = catalogue()
    whole = sample_skeletons(cat, range(40), 3, n_sessions=5, n_changes=2)
    assert sample_skeletons(cat, range(25, 40), 3, n_sessions=5, n_changes=2) == whole[25:]
    assert [r.index for r in whole[25:]] == list(range(25, 40))


def test_100k_skeletons_in_seconds_wherever_they_sit() -> None:
    """The last 100,000 of a million personas cost what any 100,000 cost (the sampler used to start at 0)."""
    started = time.perf_counter()
    rows = sample_skeletons(catalogue(), range(900_000, 1_000_000), 3, n_sessions=20, n_changes=2)
    elapsed = time.perf_counter() - started
    assert len(rows) == 100_000 and rows[0].persona_id == "p900000"
    assert elapsed < 45, f"{elapsed:.1f} s for 100,000 skeletons"
