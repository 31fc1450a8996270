"""The LLM judge: helpfulness and personalization of a first answer, and persona similarity.

Ratings use the paper's format `<analysis>…</analysis><rating>solution_score; persona_score</rating>`
(0–10, anchored at 10/7/5/3/0 in the prompt). Both judges run at temperature 0 on the judge's model
(`--judge-model`). Judges drift from any format, so parsing is lenient and never raises: what cannot
be read becomes a null score with the raw text kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from personaloom.agent.calls import Caller
from personaloom.agent.persona import FlatPersona, golden_at, initial_persona, language_of, persona_lines
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.records import DatasetRow

RATING = re.compile(r"<\s*rating\s*>(.*?)(?:<\s*/\s*rating\s*>|\Z)", re.DOTALL | re.IGNORECASE)
NUMBER = re.compile(r"\d+(?:\.\d+)?")
OUT_OF_TEN = re.compile(r"/\s*10(?:\.0+)?\b")


@dataclass
class Rating:
    solution: float | None
    persona: float | None
    raw: str

    @property
    def ok(self) -> bool:
        return self.solution is not None and self.persona is not None


def _score(text: str) -> float | None:
    m = NUMBER.search(text)
    if m is None:
        return None
    value = float(m.group())
    return value if 0 <= value <= 10 else None


def parse_rating(text: str) -> Rating:
    """`<rating>7; 8</rating>` → (7, 8).

    Tolerates "7/10; 8/10", labels, a missing closing tag, ',' or '|' separators.
    """
    matches = RATING.findall(text)
    if not matches:
        return Rating(None, None, text)
    inner = OUT_OF_TEN.sub("", matches[-1])  # the last rating block: judges sometimes quote the format first
    parts = [p for p in re.split(r"[;,|\n]", inner) if NUMBER.search(p)]
    if len(parts) < 2:
        nums = NUMBER.findall(inner)
        parts = nums if len(nums) >= 2 else []
    if len(parts) < 2:
        return Rating(None, None, text)
    return Rating(_score(parts[0]), _score(parts[1]), text)


class SimilarityJudgement(BaseModel):
    analysis: str = Field(description="one or two sentences")
    consistency: int = Field(
        ge=0, le=10, description="no contradiction with the reference persona (10 = none)"
    )
    detail: int = Field(ge=0, le=10, description="how much of the reference's detail is restored (10 = all)")


@dataclass
class Similarity:
    consistency: float | None
    detail: float | None
    raw: str | None  # kept only when the judge's answer could not be used


class RateJob(NamedTuple):
    row: DatasetRow  # the golden persona, the scene and its reference answer
    answer: str  # the agent's first answer


JUDGE_RATING: LLMCall[RateJob, Rating] = LLMCall(
    name="agent/judge_rating",
    variables=("persona", "scene", "query", "answer", "language"),
    render=lambda job: {
        "persona": persona_lines(golden_at(job.row)),
        "scene": job.row.model_dump(include={"title", "description", "expected_response"}),
        "query": job.row.neutralized_query,
        "answer": job.answer,
        "language": language_of(job.row),
    },
    build=lambda job, res: parse_rating(res.value or ""),
    response=None,
    max_tokens=400,
    role="judge",
    temperature=0.0,  # a judge grades the same answer the same way; the user simulator keeps the run's
    sample=lambda s: RateJob(s.row, s.row.expected_response),
)


class SimilarityJob(NamedTuple):
    learned: FlatPersona
    row: DatasetRow  # the golden persona at this session


def build_similarity(job: SimilarityJob, res: LLMResult[Any]) -> Similarity:
    if res.value is None:
        return Similarity(None, None, res.raw or res.error)
    return Similarity(float(res.value.consistency), float(res.value.detail), None)


def _sample_learned(row: DatasetRow) -> FlatPersona:
    """A persona partly learned: the Demographics an agent starts from, plus the golden Preferences."""
    golden = golden_at(row)
    return {**initial_persona(row), **{p: v for p, v in golden.items() if p.startswith("Preference.")}}


JUDGE_SIMILARITY: LLMCall[SimilarityJob, Similarity] = LLMCall(
    name="agent/judge_similarity",
    variables=("learned", "golden", "language"),
    render=lambda job: {
        "learned": persona_lines(job.learned),
        "golden": persona_lines(golden_at(job.row)),
        "language": language_of(job.row),
    },
    build=build_similarity,
    response=SimilarityJudgement,
    max_tokens=300,
    role="judge",
    temperature=0.0,
    sample=lambda s: SimilarityJob(_sample_learned(s.row), s.row),
)


class Judge:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def rate(self, row: DatasetRow, answer: str) -> Rating:
        return await self.caller.run("judge", JUDGE_RATING, RateJob(row, answer))

    async def similarity(self, learned: FlatPersona, row: DatasetRow) -> Similarity:
        return await self.caller.run("judge", JUDGE_SIMILARITY, SimilarityJob(learned, row))
