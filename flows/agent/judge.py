"""The LLM judges: a first answer's helpfulness and personalization, persona similarity, and pairs of answers.

`agent/judge_rating` is AI Persona's (arXiv 2412.13103) evaluation prompt word for word: the judge sees the
golden persona, the query and the answer (no reference answer) and writes
`<analysis>…</analysis><rating>solution_score; persona_score</rating>`, solution anchored at 10/7/5/3/0 and
personalization at 10/7/5/0, where 5 is a generic answer. `agent/judge_rating_reference` (config
`judge_mode = "reference"`) is the earlier judge that also sees the scene's reference answer.
`agent/judge_similarity` is the paper's persona-similarity prompt (consistency; detail restoration).
`agent/judge_pairwise` (Fig. 4) prefers one of two answers to the same session; the replay asks it in both
orders. Every judge runs at temperature 0 on the judge's model (`--judge-model`). Judges drift from any
format, so parsing is lenient and never raises: what cannot be read becomes a null score with the raw text.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from personaloom.agent.calls import Caller
from personaloom.agent.persona import golden_at, initial_persona, language_of, persona_lines
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


@dataclass
class Similarity:
    consistency: float | None
    detail: float | None
    raw: str | None  # kept only when the judge's answer could not be used


class RateJob(NamedTuple):
    row: DatasetRow  # the golden persona, the scene (and, for the reference judge, its reference answer)
    answer: str  # the agent's first answer


JUDGE_RATING: LLMCall[RateJob, Rating] = LLMCall(
    name="agent/judge_rating",
    variables=("persona", "query", "answer"),
    render=lambda job: {
        "persona": persona_lines(golden_at(job.row)),
        "query": job.row.neutralized_query,
        "answer": job.answer,
    },
    build=lambda job, res: parse_rating(res.value or ""),
    response=None,
    max_tokens=400,
    role="judge",
    temperature=0.0,  # a judge grades the same answer the same way; the user simulator keeps the run's
    sample=lambda s: RateJob(s.row, s.row.expected_response),
)

JUDGE_RATING_REFERENCE: LLMCall[RateJob, Rating] = LLMCall(
    name="agent/judge_rating_reference",
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
    temperature=0.0,
    sample=lambda s: RateJob(s.row, s.row.expected_response),
)

RATING_CALLS = {"paper": JUDGE_RATING, "reference": JUDGE_RATING_REFERENCE}


class SimilarityJob(NamedTuple):
    learned: list[dict[str, str]]  # what the agent holds, as path/value lines (a flat persona or its texts)
    row: DatasetRow  # the golden persona at this session


def build_similarity(job: SimilarityJob, res: LLMResult[Any]) -> Similarity:
    r = parse_rating(res.value or "")
    if not r.ok:
        return Similarity(r.solution, r.persona, res.value or res.raw or res.error)
    return Similarity(r.solution, r.persona, None)


def _sample_learned(row: DatasetRow) -> list[dict[str, str]]:
    """A persona partly learned: the Demographics an agent starts from, plus the golden Preferences."""
    golden = golden_at(row)
    return persona_lines(
        {**initial_persona(row), **{p: v for p, v in golden.items() if p.startswith("Preference.")}}
    )


JUDGE_SIMILARITY: LLMCall[SimilarityJob, Similarity] = LLMCall(
    name="agent/judge_similarity",
    variables=("learned", "golden"),
    render=lambda job: {"learned": job.learned, "golden": persona_lines(golden_at(job.row))},
    build=build_similarity,
    response=None,
    max_tokens=500,
    role="judge",
    temperature=0.0,
    sample=lambda s: SimilarityJob(_sample_learned(s.row), s.row),
)


# ---------------------------------------------------------------- pairwise (Fig. 4)

WINNER = re.compile(r"<\s*winner\s*>(.*?)(?:<\s*/\s*winner\s*>|\Z)", re.DOTALL | re.IGNORECASE)
Verdict = Literal["first", "second", "tie"]


def parse_winner(text: str) -> Verdict | None:
    """`<winner>1</winner>` → first, 2 → second, tie → tie; the last block decides; None when unreadable."""
    blocks = WINNER.findall(text)
    if not blocks:
        return None
    inner = blocks[-1].strip().lower()
    if re.fullmatch(r"(response\s*)?1\.?", inner):
        return "first"
    if re.fullmatch(r"(response\s*)?2\.?", inner):
        return "second"
    if re.fullmatch(r"tie\.?|draw\.?|equal\.?", inner):
        return "tie"
    return None


class PairJob(NamedTuple):
    row: DatasetRow  # the golden persona and the query
    first: str  # the answer shown as Response 1
    second: str


JUDGE_PAIRWISE: LLMCall[PairJob, Verdict | None] = LLMCall(
    name="agent/judge_pairwise",
    variables=("persona", "query", "first", "second"),
    render=lambda job: {
        "persona": persona_lines(golden_at(job.row)),
        "query": job.row.neutralized_query,
        "first": job.first,
        "second": job.second,
    },
    build=lambda job, res: parse_winner(res.value or ""),
    response=None,
    max_tokens=400,
    role="judge",
    temperature=0.0,
    sample=lambda s: PairJob(s.row, s.row.expected_response, "Sure! Here are a few general options."),
)


def pair_score(a_first: Verdict | None, a_second: Verdict | None) -> float | None:
    """Agent A's score against B on one session, in [0, 1]: the mean over the two orders of 1 (A preferred),
    ½ (tie) and 0 (B preferred). `a_first`: the verdict with A shown as Response 1; `a_second`: with A as
    Response 2. An unreadable verdict is left out; None when neither could be read."""
    points = []
    if a_first is not None:
        points.append({"first": 1.0, "tie": 0.5, "second": 0.0}[a_first])
    if a_second is not None:
        points.append({"second": 1.0, "tie": 0.5, "first": 0.0}[a_second])
    return sum(points) / len(points) if points else None


class Judge:
    def __init__(self, caller: Caller, mode: str = "paper") -> None:
        self.caller = caller
        self.rating = RATING_CALLS[mode]

    async def rate(self, row: DatasetRow, answer: str) -> Rating:
        return await self.caller.run("judge", self.rating, RateJob(row, answer))

    async def similarity(self, learned: list[dict[str, str]], row: DatasetRow) -> Similarity:
        return await self.caller.run("judge", JUDGE_SIMILARITY, SimilarityJob(learned, row))

    async def pair(self, row: DatasetRow, a: str, b: str) -> tuple[Verdict | None, Verdict | None]:
        """Both orders of one comparison: (A shown first, A shown second)."""
        return await asyncio.gather(
            self.caller.run("judge", JUDGE_PAIRWISE, PairJob(row, a, b)),
            self.caller.run("judge", JUDGE_PAIRWISE, PairJob(row, b, a)),
        )
