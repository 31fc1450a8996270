"""PersonaAgent (arXiv 2506.06254): personalized memory, a persona prompt between memory and action, and
test-time user-preference alignment.

- Episodic memory: one episode per finished session, (query, the agent's response, the user's feedback);
  the top-K episodes by embedding similarity of their query to the new query enter the prompt.
- Semantic memory: a profile summarized from the episodes (`agent/memory_summary`), P^u = f_s(episodes).
- The persona: a system prompt for this user, the intermediary that turns what memory holds into what the
  agent does. It sits in the chatbot's system prompt and decides which APIs are called, among the scene's
  and the agent's own `search_user_history` (the personalized action space Â = A ∪ D: D reads the user's
  data); the Demographics the agent is given stay outside it, fixed.
- Test-time alignment (the paper's Algorithm 1) after every `every` sessions, over the latest `batch`:
  for e in 1..E (`iterations`): for each (q_j, r_j^gt) in the batch, simulate r̂_j with the current persona,
  then a textual loss L(r̂_j, r_j^gt | q_j) in words (`agent/persona_agent_feedback`, the "gradient");
  then the persona is rewritten from the batch's feedback (`agent/persona_agent_rewrite`, the "update"):
  P* = argmin_P Σ_j L(r̂_j, r_j^gt | q_j). The ground truth r_j^gt is the scene's reference answer
  (`expected_response`: the answer that fully satisfies this user), read only once the session is over
  and only by the alignment, never shown to the chatbot. The simulation drafts r̂_j from the persona and
  the semantic memory, without tools or episodes, so the loss measures what the persona carries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from personaloom.agent.base import Agent
from personaloom.agent.chatbot import AgentContext, Chatbot
from personaloom.agent.memory import top_k
from personaloom.agent.persona import golden_at, language_of, persona_lines
from personaloom.agent.sessions import SessionLog, sample_session
from personaloom.agent.updater import update_due
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.records import ApiArgument, ApiSpec, DatasetRow
from personaloom.schemas.replay import PersonaField, ReplayConfig

INITIAL_PERSONA = (
    "You are a helpful personalized assistant for this user. Learn their preferences from the history "
    "of your sessions with them: search it when their request resembles an earlier one, and let what you "
    "know about them decide which information you gather and how you answer."
)
HISTORY_TOOL = "search_user_history"
HISTORY_API = ApiSpec(
    name=HISTORY_TOOL,
    description="search this user's earlier sessions: their requests, your responses, their feedback",
    arguments=[
        ApiArgument(
            name="query", type="string", description="what to look for, e.g. 'dinner plans'", required=True
        )
    ],
)


@dataclass
class Episode:
    """One finished session as episodic memory holds it, and its ground truth for the alignment."""

    session_index: int
    title: str
    query: str
    response: str  # the agent's last answer
    feedback: list[str]  # the user's follow-ups
    satisfied: bool
    ground_truth: str  # r^gt: the scene's reference answer, used by the alignment only

    def text(self) -> str:
        lines = [f"[session {self.session_index}: {self.title}]", f"request: {self.query}"]
        lines += [f"your response: {self.response}"] + [f"user feedback: {f}" for f in self.feedback]
        lines.append("the user ended satisfied" if self.satisfied else "the user was not satisfied")
        return "\n".join(lines)

    def view(self) -> dict[str, object]:
        return {
            "index": self.session_index,
            "title": self.title,
            "query": self.query,
            "response": self.response,
            "feedback": self.feedback,
            "satisfied": self.satisfied,
        }


def episode_of(log: SessionLog, row: DatasetRow | None) -> Episode:
    return Episode(
        log.session_index,
        log.title,
        log.query,
        log.final_answer,
        log.follow_ups,
        log.satisfied,
        row.expected_response if row is not None else "",
    )


def _sample_episode(row: DatasetRow) -> Episode:
    return episode_of(sample_session(row), row)


# ---------------------------------------------------------------- the calls


class FeedbackJob(NamedTuple):
    """The textual loss of one interaction of the batch."""

    persona: str  # the persona prompt the response was simulated with
    episode: Episode  # its query and ground truth
    simulated: str  # r̂: the response the current persona gives to the query
    language: str = "en"  # ISO 639-1 code of the user's language


def feedback_item(job: FeedbackJob, res: LLMResult[Any]) -> dict[str, object]:
    e = job.episode
    return {"index": e.session_index, "title": e.title, "feedback": (res.value or "").strip()}


PERSONA_AGENT_FEEDBACK: LLMCall[FeedbackJob, dict[str, object]] = LLMCall(
    name="agent/persona_agent_feedback",
    variables=("persona", "query", "simulated", "ground_truth", "language"),
    render=lambda job: {
        "persona": job.persona,
        "query": job.episode.query,
        "simulated": job.simulated,
        "ground_truth": job.episode.ground_truth,
        "language": job.language,
    },
    build=feedback_item,
    response=None,
    max_tokens=300,
    role="memory",
    sample=lambda s: FeedbackJob(
        INITIAL_PERSONA,
        _sample_episode(s.row),
        "Sure! Here are a few general options, each with the steps to follow.",
        language_of(s.row),
    ),
)


class RewriteJob(NamedTuple):
    persona: str  # the current persona prompt
    feedback: list[dict[str, object]]  # one PERSONA_AGENT_FEEDBACK item per interaction of the batch
    language: str = "en"


def rewritten(job: RewriteJob, res: LLMResult[Any]) -> str:
    """The new persona prompt; an empty or failed answer keeps the old one."""
    text = (res.value or "").strip()
    return text or job.persona


PERSONA_AGENT_REWRITE: LLMCall[RewriteJob, str] = LLMCall(
    name="agent/persona_agent_rewrite",
    variables=("persona", "feedback", "language"),
    render=lambda job: {"persona": job.persona, "feedback": job.feedback, "language": job.language},
    build=rewritten,
    response=None,
    max_tokens=500,
    role="memory",
    sample=lambda s: RewriteJob(
        INITIAL_PERSONA,
        [
            {
                "index": s.row.session_index,
                "title": s.row.title,
                "feedback": "The ground truth is a short list with prices; the response is long prose.",
            }
        ],
        language_of(s.row),
    ),
)


class SummaryJob(NamedTuple):
    previous: str | None  # the semantic memory so far
    episodes: list[Episode]  # the episodes since the last summary
    language: str = "en"


MEMORY_SUMMARY: LLMCall[SummaryJob, str | None] = LLMCall(
    name="agent/memory_summary",
    variables=("previous", "sessions", "language"),
    render=lambda job: {
        "previous": job.previous,
        "sessions": [e.view() for e in job.episodes],
        "language": job.language,
    },
    build=lambda job, res: res.value.strip() if res.value else job.previous,  # a failure keeps the old one
    response=None,
    max_tokens=300,
    role="memory",
    sample=lambda s: SummaryJob(
        f"- Preferred formats: {golden_at(s.row)['Preference.Preferred_Formats']}",
        [_sample_episode(s.row)],
        language_of(s.row),
    ),
)


# ---------------------------------------------------------------- the agent


class PersonaAgent(Agent):
    CALLS = (PERSONA_AGENT_FEEDBACK, PERSONA_AGENT_REWRITE, MEMORY_SUMMARY)

    @classmethod
    def settings(cls, cfg: ReplayConfig) -> dict[str, object]:
        return {**super().settings(cfg), **cfg.persona_agent.model_dump(), "tool": HISTORY_TOOL}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.params = self.cfg.persona_agent
        self.prompt = INITIAL_PERSONA  # the persona P
        self.summary: str | None = None  # semantic memory P^u
        self.episodes: list[Episode] = []
        self.vectors: list[np.ndarray] = []  # embeddings of the episodes' queries
        self._summarized = 0  # episodes already folded into the summary
        self.drafter = Chatbot(self.caller, max_tool_rounds=0)
        self.iterations_run = 0  # alignment iterations so far (each: batch simulations, losses, a rewrite)

    def learned_lines(self) -> list[dict[str, str]]:
        """The Demographics it is given, the persona prompt and the semantic memory."""
        return persona_lines(self.start) + persona_lines(
            {"PersonaAgent.persona_prompt": self.prompt, "PersonaAgent.semantic_memory": self.summary or ""}
        )

    def snapshot_fields(self) -> list[PersonaField] | None:
        return [PersonaField(path=f["path"], value=f["value"]) for f in self.learned_lines()]

    async def recall(self, query: str, k: int) -> list[Episode]:
        """Episodic memory: the k episodes whose query is most similar to `query`."""
        if not self.episodes or k <= 0:
            return []
        return [self.episodes[i] for i in top_k(await self.embedder.aembed(query), self.vectors, k)]

    async def _search_tool(self, arguments: dict[str, Any]) -> str:
        found = await self.recall(str(arguments.get("query", "")), self.params.top_k)
        return "\n---\n".join(e.text() for e in found) or "no earlier session matches"

    async def context(self, row: DatasetRow) -> AgentContext:
        episodes = await self.recall(row.neutralized_query, self.params.top_k)
        return AgentContext(
            persona=self.start,
            persona_prompt=self.prompt,
            summary=self.summary,
            memory=[e.text() for e in episodes],
            extra_apis=[HISTORY_API],
            local_tools={HISTORY_TOOL: self._search_tool},
        )

    async def observe(
        self, log: SessionLog, position: int, row: DatasetRow | None = None
    ) -> list[str] | None:
        await self.sessions.add(log)
        self.episodes.append(episode_of(log, row))
        self.vectors.append(await self.embedder.aembed(log.query))
        if not update_due(position, self.params.every, self.total):
            return None
        before = self.prompt
        await self._summarize()
        await self.align(self.episodes[-self.params.batch :])
        return ["PersonaAgent.persona_prompt"] if self.prompt != before else []

    async def align(self, batch: list[Episode]) -> None:
        """Algorithm 1: `iterations` rounds of simulate → textual loss per interaction → rewrite."""
        for _ in range(self.params.iterations):
            ctx = AgentContext(persona=self.start, persona_prompt=self.prompt, summary=self.summary)
            simulated = await asyncio.gather(
                *(self.drafter.draft(ctx, e.query, role="align", language=self.language) for e in batch)
            )
            feedback = await asyncio.gather(
                *(
                    self.caller.run(
                        "align", PERSONA_AGENT_FEEDBACK, FeedbackJob(self.prompt, e, r, self.language)
                    )
                    for e, r in zip(batch, simulated, strict=True)
                )
            )
            self.prompt = await self.caller.run(
                "align", PERSONA_AGENT_REWRITE, RewriteJob(self.prompt, list(feedback), self.language)
            )
            self.iterations_run += 1

    async def _summarize(self) -> None:
        new = self.episodes[self._summarized :]
        if new:
            self.summary = await self.caller.run(
                "memory", MEMORY_SUMMARY, SummaryJob(self.summary, new, self.language)
            )
            self._summarized = len(self.episodes)
