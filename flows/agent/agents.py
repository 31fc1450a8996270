"""The agent kinds. Each holds one user's state across sessions and supplies the chatbot's context.

AI Persona's Table 1 rows (arXiv 2412.13103, §4.1 Baselines):
none          No Persona Access: no persona, no memory
golden        Golden Persona Access: the ground-truth persona of each session (changes applied): the
              upper bound
learned-kK    Persona Learning: the persona learned by the updater every K sessions, and nothing else (no
              retrieval: the paper's persona learning and its conversation RAG are separate rows)
rag           Conversations RAG: retrieved similar past sessions, no persona
Ours beside them:
demographics-only
              the Demographics a learning agent starts from, never updated, no memory: the baseline
              that separates what `learned` learns from what it is given
learned-rag-kK
              the learned persona plus retrieved sessions (persona learning and RAG together)
persona-agent PersonaAgent (persona_agent.py): episodic and semantic memory, a persona prompt that
              drives tool choice, rewritten at test time from a textual loss against the ground truth
vars          VARS (vars.py): preference cards {condition, action, confidence} retrieved by
              s0 + <z_eff, v_m>, long- and short-term user vectors learned by REINFORCE
"""

from __future__ import annotations

import re
from typing import Any

from personaloom.agent import judge, user_simulator
from personaloom.agent.base import Agent
from personaloom.agent.calls import Caller
from personaloom.agent.chatbot import CHATBOT, AgentContext
from personaloom.agent.memory import Embedder
from personaloom.agent.persona import FlatPersona, golden_at
from personaloom.agent.persona_agent import (
    MEMORY_SUMMARY,
    PERSONA_AGENT_FEEDBACK,
    PERSONA_AGENT_REWRITE,
    PersonaAgent,
)
from personaloom.agent.sessions import SessionLog
from personaloom.agent.tools import TOOL_EXECUTOR
from personaloom.agent.updater import (
    PERSONA_UPDATE,
    PersonaUpdater,
    update_due,
)
from personaloom.agent.vars import VARS_EXTRACT, VarsAgent
from personaloom.llm.calls import LLMCall
from personaloom.schemas.records import DatasetRow
from personaloom.schemas.replay import AgentSettings, ReplayConfig

LEARNED = re.compile(r"^learned(-rag)?-k(\d+)$")


class DemographicsAgent(Agent):
    """Knows what the learned agent starts from (`initial_persona`: Demographics only) and never learns."""

    @property
    def persona(self) -> FlatPersona | None:
        return self.start

    async def context(self, row: DatasetRow) -> AgentContext:
        return AgentContext(persona=self.start)


class GoldenAgent(Agent):
    _current: FlatPersona | None = None

    @property
    def persona(self) -> FlatPersona | None:
        return self._current

    async def context(self, row: DatasetRow) -> AgentContext:
        self._current = golden_at(row)
        return AgentContext(persona=self._current)


class RagAgent(Agent):
    @classmethod
    def settings(cls, cfg: ReplayConfig) -> dict[str, object]:
        return {**super().settings(cfg), "retrieve": cfg.retrieve}

    async def context(self, row: DatasetRow) -> AgentContext:
        return AgentContext(memory=await self.sessions.similar(row.neutralized_query, self.cfg.retrieve))


class LearnedAgent(Agent):
    """AI Persona's Persona Learning: the learned persona is the only thing the chatbot gets."""

    CALLS = (PERSONA_UPDATE,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._persona = dict(self.start)
        self.updater = PersonaUpdater(self.caller)

    @property
    def persona(self) -> FlatPersona | None:
        return self._persona

    async def context(self, row: DatasetRow) -> AgentContext:
        return AgentContext(persona=self._persona)

    async def observe(
        self, log: SessionLog, position: int, row: DatasetRow | None = None
    ) -> list[str] | None:
        await self.sessions.add(log)
        if not update_due(position, self.k, self.total):
            return None
        self._persona, changed = await self.updater.update(
            self._persona, self.sessions.last(self.k), self.language
        )
        return changed


class LearnedRagAgent(LearnedAgent):
    """The learned persona and the `retrieve` most similar past sessions."""

    @classmethod
    def settings(cls, cfg: ReplayConfig) -> dict[str, object]:
        return {**super().settings(cfg), "retrieve": cfg.retrieve}

    async def context(self, row: DatasetRow) -> AgentContext:
        ctx = await super().context(row)
        ctx.memory = await self.sessions.similar(row.neutralized_query, self.cfg.retrieve)
        return ctx


def kind_of(name: str, cfg: ReplayConfig) -> tuple[type[Agent], int]:
    """The class behind an agent name of the run, and its update cadence k (1 when it has none)."""
    if m := LEARNED.match(name):
        return (LearnedRagAgent if m.group(1) else LearnedAgent), int(m.group(2))
    if name == "persona-agent":
        return PersonaAgent, cfg.persona_agent.every
    if name == "vars":
        return VarsAgent, 1
    kinds: dict[str, type[Agent]] = {
        "none": Agent,
        "demographics-only": DemographicsAgent,
        "golden": GoldenAgent,
        "rag": RagAgent,
    }
    if name not in kinds:
        raise ValueError(f"unknown agent {name!r}")
    return kinds[name], 1


def make_agent(
    name: str, caller: Caller, cfg: ReplayConfig, first: DatasetRow, total: int, embedder: Embedder
) -> Agent:
    cls, k = kind_of(name, cfg)
    return cls(name, caller, cfg, first, total, embedder, k=k)


def describe(name: str, cfg: ReplayConfig, hashes: dict[str, str]) -> AgentSettings:
    """The replay manifest's record of one agent: kind, its calls with their template hashes, its settings."""
    cls, k = kind_of(name, cfg)
    calls = (CHATBOT, TOOL_EXECUTOR, *cls.CALLS)
    kind = name.rsplit("-k", 1)[0] if LEARNED.match(name) else name
    return AgentSettings(
        kind=kind,
        k=k if issubclass(cls, LearnedAgent) else None,
        calls={c.name: hashes.get(c.name, "") for c in calls},
        settings=cls.settings(cfg),
    )


def agent_calls() -> tuple[LLMCall[Any, Any], ...]:
    """Every LLM call the reference agent and its simulated world make: one per agent/ template."""
    return (
        CHATBOT,
        TOOL_EXECUTOR,
        user_simulator.USER_JUDGE,
        judge.JUDGE_RATING,
        judge.JUDGE_RATING_REFERENCE,
        judge.JUDGE_SIMILARITY,
        judge.JUDGE_PAIRWISE,
        PERSONA_UPDATE,
        PERSONA_AGENT_FEEDBACK,
        PERSONA_AGENT_REWRITE,
        MEMORY_SUMMARY,
        VARS_EXTRACT,
    )
