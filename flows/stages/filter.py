"""Stage 5 — dedup and quality filtering of the queries.

Cheap checks first (persona- and scene-level dedup, rules, exact and near-duplicate queries by the
text filter engine), then the paper's answerability check (and an optional quality score) by LLM on
the survivors only. It runs twice: `screen` per shard as soon as the shard's queries exist, so LLM
checks overlap other shards' generation, and `dedup_all` once over every screened row, for the
duplicates that cross shards. Every dropped row becomes a Rejection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import polars as pl
from pydantic import BaseModel
from rapidfuzz import fuzz
from rapidfuzz.process import cdist

from flows.filtering import filter_texts, find_near_duplicates
from flows.filtering.normalize import normalize
from flows.llm.client import LLM
from flows.stages.base import Progress, StageOutcome, map_async
from schemas.config import DedupLevels
from schemas.drafts import Answerability, QualityScore
from schemas.filtering import FilterConfig, NearDupConfig
from schemas.records import PersonaRecord, Query, Rejection, Scene

STAGE = "filter"
T = TypeVar("T", bound=BaseModel)


def persona_key(p: PersonaRecord) -> str:
    """What makes two personas the same user: name, occupation, locale and values."""
    d = p.persona.Demographics
    values = ", ".join(sorted(v.lower() for v in p.persona.Personality.Values_and_Interests))
    return f"{d.Name} | {d.Career_Information} | {d.Nationality} | {', '.join(d.Language)} | {values}"


def _groups(keys: list[str], ids: list[str], threshold: float) -> dict[str, tuple[str, float]]:
    """id → (id of the kept twin, similarity) for every near-duplicate in `keys` (earliest kept)."""
    if len(keys) < 2:
        return {}
    res = find_near_duplicates(keys, NearDupConfig(threshold=threshold, min_df=1))
    return {ids[i]: (ids[int(j)], float(res.dup_score[i])) for i, j in enumerate(res.dup_of) if j >= 0}


def duplicate_personas(personas: list[PersonaRecord], threshold: float) -> dict[str, tuple[str, float]]:
    return _groups([persona_key(p) for p in personas], [p.persona_id for p in personas], threshold)


def duplicate_scenes(scenes: list[Scene], threshold: float) -> dict[str, tuple[str, float]]:
    """Near-duplicate scenes within one persona; revisits repeat a topic on purpose and are exempt."""
    found: dict[str, tuple[str, float]] = {}
    by_persona: dict[str, list[Scene]] = {}
    for s in scenes:
        if s.kind != "revisit":
            by_persona.setdefault(s.persona_id, []).append(s)
    for mine in by_persona.values():
        mine.sort(key=lambda s: s.session_index)
        found |= _pairwise_groups([f"{s.title}. {s.description}" for s in mine], [s.scene_id for s in mine], threshold)
    return found


def _pairwise_groups(texts: list[str], ids: list[str], threshold: float) -> dict[str, tuple[str, float]]:
    """All pairs of one persona's few scenes scored directly: LSH blocking pays off only at scale."""
    norm = normalize(pl.Series(texts, dtype=pl.String)).to_list()
    scores = cdist(norm, norm, scorer=fuzz.ratio, dtype=np.float32)
    found: dict[str, tuple[str, float]] = {}
    for i in range(1, len(ids)):
        earlier = [j for j in range(i) if ids[j] not in found and scores[i, j] >= threshold]
        if earlier:
            j = max(earlier, key=lambda j: scores[i, j])
            found[ids[i]] = (ids[j], float(scores[i, j]))
    return found


def level_dedup(
    queries: list[Query], scenes: list[Scene], personas: list[PersonaRecord], levels: DedupLevels
) -> StageOutcome[Query]:
    """Persona-aware dedup: drop every session of a duplicate persona, and duplicate scenes of one persona."""
    twin_persona = duplicate_personas(personas, levels.persona_threshold)
    twin_scene = duplicate_scenes(scenes, levels.scene_threshold)
    out: StageOutcome[Query] = StageOutcome()
    for q in queries:
        if q.persona_id in twin_persona:
            kept, score = twin_persona[q.persona_id]
            reason = "persona_duplicate"
        elif q.scene_id in twin_scene:
            kept, score = twin_scene[q.scene_id]
            reason = "scene_duplicate"
        else:
            out.records.append(q)
            continue
        out.rejections.append(Rejection(stage=STAGE, row_id=q.query_id, persona_id=q.persona_id, reason=reason,
                                        dup_of=kept, dup_score=score, dup_method="near", raw_output=q.personalized_query))  # fmt: skip
    return out


def cheap_filter(queries: list[Query], config: FilterConfig) -> StageOutcome[Query]:
    """Rules + exact + near-duplicate dedup over the personalized queries of the whole dataset."""
    if not queries:
        return StageOutcome()
    df = pl.DataFrame(
        {"query_id": [q.query_id for q in queries], "text": [q.personalized_query for q in queries]},
        schema={"query_id": pl.String, "text": pl.String},
    )
    result = filter_texts(df, "text", config, id_column="query_id")
    kept_ids = set(result.kept["query_id"].to_list())
    by_id = {q.query_id: q for q in queries}
    rejections = [
        Rejection(
            stage=STAGE,
            row_id=r["query_id"],
            persona_id=by_id[r["query_id"]].persona_id,
            reason=r["drop_reason"],
            score=r["rule_score"],
            dup_of=r["dup_of"],
            dup_score=r["dup_score"],
            dup_method=r["dup_method"],
            raw_output=r["text"],
        )
        for r in result.rejected.iter_rows(named=True)
    ]
    return StageOutcome(records=[q for q in queries if q.query_id in kept_ids], rejections=rejections)


async def _judge_each(
    queries: list[Query], scenes: list[Scene], llm: LLM, prompt: str, schema: type[T], check: str,
    decide: Callable[[Query, T, str], Query | Rejection], progress: Progress | None,
) -> StageOutcome[Query]:  # fmt: skip
    """Ask an LLM judge about each query in its scene; an invalid judge answer keeps the row, marked.

    A flaky judge must never silently shrink the dataset: the row stays, with `check` in fallback_fields.
    """
    scene_of = {s.scene_id: s for s in scenes}

    async def one(q: Query) -> Query | Rejection:
        res = await llm.structured(prompt, schema, stage=STAGE, max_tokens=120, query=q, scene=scene_of[q.scene_id])
        if res.value is None:
            return q.model_copy(update={"fallback_fields": [*q.fallback_fields, check]})
        return decide(q, res.value, res.raw)

    return StageOutcome.split(await map_async(queries, one, progress))


async def answerability(
    queries: list[Query], scenes: list[Scene], llm: LLM, progress: Progress | None = None
) -> StageOutcome[Query]:
    """AI Persona's check: can an assistant answer this query in its scene? Unanswerable rows are rejected."""

    def decide(q: Query, v: Answerability, raw: str) -> Query | Rejection:
        if v.answerable:
            return q
        return Rejection(stage=STAGE, row_id=q.query_id, persona_id=q.persona_id, reason="unanswerable", detail=v.reason, raw_output=raw)

    return await _judge_each(queries, scenes, llm, "filter/answerability", Answerability, "answerability", decide, progress)


async def quality(
    queries: list[Query], scenes: list[Scene], llm: LLM, min_score: int, progress: Progress | None = None
) -> StageOutcome[Query]:
    """Optional LLM quality score (rubric in prompts/default/filter/quality.j2); below `min_score` is rejected."""

    def decide(q: Query, v: QualityScore, raw: str) -> Query | Rejection:
        if v.score >= min_score:
            return q
        return Rejection(stage=STAGE, row_id=q.query_id, persona_id=q.persona_id, reason="low_quality",
                         score=float(v.score), detail=v.reason, raw_output=raw)  # fmt: skip

    return await _judge_each(queries, scenes, llm, "filter/quality", QualityScore, "quality", decide, progress)


def dedup_all(queries: list[Query], scenes: list[Scene], personas: list[PersonaRecord], levels: DedupLevels,
              config: FilterConfig) -> StageOutcome[Query]:  # fmt: skip
    """The cheap checks: persona and scene levels, then rules and exact/near-duplicate queries."""
    by_level = level_dedup(queries, scenes, personas, levels)
    cheap = cheap_filter(by_level.records, config)
    return StageOutcome(records=cheap.records, rejections=by_level.rejections + cheap.rejections)


async def screen(
    queries: list[Query], scenes: list[Scene], personas: list[PersonaRecord], llm: LLM, *, levels: DedupLevels,
    config: FilterConfig, answerable: bool, quality_min: int | None, progress: Progress | None = None,
) -> StageOutcome[Query]:  # fmt: skip
    """One shard: cheap checks, then the LLM checks on what survives them."""
    out = dedup_all(queries, scenes, personas, levels, config)
    if progress is not None:
        progress(len(out.rejections) + (0 if answerable else len(out.records)))
    if answerable:
        judged = await answerability(out.records, scenes, llm, progress)
        out = StageOutcome(records=judged.records, rejections=out.rejections + judged.rejections)
    if quality_min is not None:
        scored = await quality(out.records, scenes, llm, quality_min)
        out = StageOutcome(records=scored.records, rejections=out.rejections + scored.rejections)
    return out
