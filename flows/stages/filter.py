"""Stage 5 — dedup and quality filtering of the queries.

Cheap checks first (rules, exact and near-duplicate removal by the text filter engine), then the
paper's answerability check by LLM on the survivors only. Every dropped row becomes a Rejection.
"""

from __future__ import annotations

import polars as pl

from flows.filtering import filter_texts
from flows.llm.client import LLM
from flows.stages.base import Progress, StageOutcome, map_async
from schemas.drafts import Answerability
from schemas.filtering import FilterConfig
from schemas.records import Query, Rejection, Scene

STAGE = "filter"


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


async def answerability(
    queries: list[Query], scenes: list[Scene], llm: LLM, progress: Progress | None = None
) -> StageOutcome[Query]:
    """AI Persona's check: can an assistant answer this query in its scene? Unanswerable rows are rejected.

    An invalid judge answer keeps the row (the check could not decide) and says so in the rejection-free
    fallback_fields, so a flaky judge never silently shrinks the dataset.
    """
    scene_of = {s.scene_id: s for s in scenes}

    async def one(q: Query) -> Query | Rejection:
        res = await llm.structured("filter/answerability", Answerability, stage=STAGE, max_tokens=120,
                                   query=q, scene=scene_of[q.scene_id])  # fmt: skip
        if res.value is None:
            return q.model_copy(update={"fallback_fields": [*q.fallback_fields, "answerability"]})
        if not res.value.answerable:
            return Rejection(stage=STAGE, row_id=q.query_id, persona_id=q.persona_id, reason="unanswerable",
                             detail=res.value.reason, raw_output=res.raw)  # fmt: skip
        return q

    out: StageOutcome[Query] = StageOutcome()
    for item in await map_async(queries, one, progress):
        (out.rejections if isinstance(item, Rejection) else out.records).append(item)  # type: ignore[arg-type]
    return out
