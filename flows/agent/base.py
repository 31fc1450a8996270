"""The base agent: it keeps the user's sessions (Historical Session Manager) and nothing else.

Every agent kind builds on it (personaloom.agent.agents lists them); apart from the registry, so an agent
defined in its own module (persona_agent, vars) imports the base, not the list that names it.
"""

from __future__ import annotations

from typing import Any

from personaloom.agent.calls import Caller
from personaloom.agent.chatbot import AgentContext
from personaloom.agent.memory import Embedder
from personaloom.agent.persona import FlatPersona, initial_persona, language_of, persona_lines
from personaloom.agent.sessions import SessionLog, SessionManager
from personaloom.llm.calls import LLMCall
from personaloom.schemas.records import DatasetRow
from personaloom.schemas.replay import MemoryCardRow, PersonaField, ReplayConfig


class Agent:
    """Base: stores sessions (Historical Session Manager), no persona, no memory in the prompt."""

    def __init__(
        self,
        name: str,
        caller: Caller,
        cfg: ReplayConfig,
        first: DatasetRow,
        total: int,
        embedder: Embedder,
        k: int = 1,
    ) -> None:
        self.name, self.caller, self.cfg, self.total, self.k = name, caller, cfg, total, k
        self.embedder = embedder
        self.sessions = SessionManager(embedder)
        self.start: FlatPersona = initial_persona(first)  # reference point of "revealed fields held"
        self.language = language_of(first)  # the user's language: every call of the agent works in it

    CALLS: tuple[LLMCall[Any, Any], ...] = ()  # the agent's own calls beside the chatbot's and the tools'

    @classmethod
    def settings(cls, cfg: ReplayConfig) -> dict[str, object]:
        """The settings this kind of agent runs with (recorded per agent in the replay manifest)."""
        return {"max_tool_rounds": cfg.max_tool_rounds, "max_user_turns": cfg.max_user_turns}

    @property
    def persona(self) -> FlatPersona | None:
        return None

    def learned_lines(self) -> list[dict[str, str]] | None:
        """What the similarity judge compares with the golden persona; None: the agent holds no persona."""
        return persona_lines(self.persona) if self.persona is not None else None

    async def context(self, row: DatasetRow) -> AgentContext:
        """What the chatbot gets at the start of a session."""
        return AgentContext()

    async def turn_context(self, ctx: AgentContext, log: SessionLog, turn: int) -> AgentContext:
        """What the chatbot gets for user turn `turn` (the session's context, unless the agent retrieves per
        turn, as VARS does)."""
        return ctx

    async def after_turn(self, log: SessionLog, turn: int, satisfied: bool) -> None:
        """The user's verdict on the answer of turn `turn` (VARS learns from it)."""

    def memory_cards(self, persona_id: str) -> list[MemoryCardRow]:
        """The agent's preference memory, for the run's `memory_cards` table (VARS only)."""
        return []

    def snapshot_fields(self) -> list[PersonaField] | None:
        """What a persona snapshot records of the agent (None: it holds no persona)."""
        if self.persona is None:
            return None
        return [PersonaField(path=p, value=v) for p, v in self.persona.items()]

    async def observe(
        self, log: SessionLog, position: int, row: DatasetRow | None = None
    ) -> list[str] | None:
        """Learn from a finished session (`row`: its dataset row, for what an agent may read once it is
        over); the changed paths when the persona was revised, else None."""
        await self.sessions.add(log)
        return None
