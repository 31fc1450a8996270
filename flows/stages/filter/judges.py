"""Stage 5's LLM judges: answerability (AI Persona's check) and the optional quality score.

Declared here, apart from the stage, so the judge calibration (personaloom.stages.calibration) can declare
its jobs with the same calls without importing the stage that asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLM, LLMResult
from personaloom.schemas.drafts import Answerability, QualityScore
from personaloom.schemas.records import Query, Rejection, Scene
from personaloom.stages.base import Advance, StageOutcome, map_async
from personaloom.stages.filter import NAME


class JudgeJob(NamedTuple):
    query: Query
    scene: Scene
    min_score: int = 0  # the quality bar (quality only)
    language: str = "en"  # ISO 639-1 code of the language the query is meant to be in


def unjudged(q: Query, check: str) -> Query:
    """The row, kept and marked: the judge gave it no verdict."""
    return q.model_copy(update={"fallback_fields": [*q.fallback_fields, check]})


def _judged(check: str, decide: Callable[[JudgeJob, Any, str], Query | Rejection]) -> Callable[..., Any]:
    """An invalid judge answer keeps the row, marked: a flaky judge must never silently shrink the dataset."""

    def build(job: JudgeJob, res: LLMResult[Any]) -> Query | Rejection:
        if res.value is None:
            return unjudged(job.query, check)
        return decide(job, res.value, res.raw)

    return build


def _answerable(job: JudgeJob, v: Answerability, raw: str) -> Query | Rejection:
    q = job.query
    if v.answerable:
        return q
    return Rejection(
        stage=NAME,
        row_id=q.query_id,
        persona_id=q.persona_id,
        reason="unanswerable",
        detail=v.reason,
        raw_output=raw,
    )


def _good_enough(job: JudgeJob, v: QualityScore, raw: str) -> Query | Rejection:
    q = job.query
    if v.score >= job.min_score:
        return q
    return Rejection(
        stage=NAME,
        row_id=q.query_id,
        persona_id=q.persona_id,
        reason="low_quality",
        score=float(v.score),
        detail=v.reason,
        raw_output=raw,
    )


# AI Persona's check: can an assistant answer this query in its scene? Unanswerable rows are rejected.
ANSWERABILITY: LLMCall[JudgeJob, Query | Rejection] = LLMCall(
    name="filter/answerability",
    variables=("query", "scene", "language"),
    render=lambda job: {"query": job.query, "scene": job.scene, "language": job.language},
    build=_judged("answerability", _answerable),
    response=Answerability,
    max_tokens=120,
    role="judge",
    temperature=0.0,
    sample=lambda s: JudgeJob(s.query, s.scene, 0, s.seed.interaction_language or "en"),
)
# Optional quality score (rubric in prompts/default/filter/quality.j2); below `min_score` is rejected.
QUALITY: LLMCall[JudgeJob, Query | Rejection] = LLMCall(
    name="filter/quality",
    variables=("query", "scene", "language"),
    render=lambda job: {"query": job.query, "scene": job.scene, "language": job.language},
    build=_judged("quality", _good_enough),
    response=QualityScore,
    max_tokens=120,
    role="judge",
    temperature=0.0,
    sample=lambda s: JudgeJob(s.query, s.scene, 6, s.seed.interaction_language or "en"),
)


async def judge_each(
    call: LLMCall[JudgeJob, Query | Rejection],
    queries: list[Query],
    scenes: list[Scene],
    llm: LLM,
    min_score: int = 0,
    advance: Advance | None = None,
    languages: Mapping[str, str] | None = None,
) -> StageOutcome[Query]:
    """Ask an LLM judge about each query in its scene (in its persona's language, from `languages`)."""
    scene_of = {s.scene_id: s for s in scenes}
    lang = languages or {}
    jobs = [JudgeJob(q, scene_of[q.scene_id], min_score, lang.get(q.persona_id, "en")) for q in queries]
    return StageOutcome.split(await map_async(jobs, lambda job: llm.run(call, job), advance))
