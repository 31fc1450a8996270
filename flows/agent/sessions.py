"""Historical Session Manager: each user's finished sessions, in order, found by recency or similarity."""

from __future__ import annotations

from dataclasses import dataclass, field

from personaloom.agent.memory import Embedder, EpisodicMemory
from personaloom.schemas.records import DatasetRow


@dataclass
class Message:
    role: str  # user | assistant | tool_call | tool_result
    content: str
    user_turn: int
    tool_name: str | None = None


@dataclass
class SessionLog:
    """One finished session as the agent saw it (no golden data: the agent must not learn from it)."""

    session_index: int
    title: str
    query: str
    messages: list[Message] = field(default_factory=list)
    satisfied: bool = False
    user_turns: int = 0

    def dialogue(self) -> list[Message]:
        """User and assistant messages only (tool traffic is noise for memory and updates)."""
        return [m for m in self.messages if m.role in ("user", "assistant")]

    @property
    def first_answer(self) -> str:
        return next((m.content for m in self.messages if m.role == "assistant"), "")

    @property
    def final_answer(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "assistant"), "")

    @property
    def follow_ups(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "user" and m.user_turn > 1]

    def digest(self, chars: int = 600) -> str:
        """A compact text of the session for retrieval and prompts."""
        lines = [f"[session {self.session_index}: {self.title}]"]
        lines += [f"{m.role}: {m.content}" for m in self.dialogue()]
        text = "\n".join(lines)
        return text if len(text) <= chars else text[: chars - 1] + "…"


def sample_session(row: DatasetRow) -> SessionLog:
    """A short finished session on a dataset row, for the declared calls' samples (`prompts --show`)."""
    return SessionLog(
        row.session_index,
        row.title,
        row.neutralized_query,
        [
            Message("user", row.neutralized_query, 1),
            Message("assistant", next((t.content for t in row.turns if t.role == "assistant"), "…"), 1),
        ],
        satisfied=True,
        user_turns=1,
    )


class SessionManager:
    """Stores one user's sessions; `last(n)` feeds persona updates, `similar(q, k)` feeds retrieval."""

    def __init__(self, embedder: Embedder) -> None:
        self.sessions: list[SessionLog] = []
        self._memory = EpisodicMemory(embedder)

    async def add(self, log: SessionLog) -> None:
        self.sessions.append(log)
        await self._memory.add(log.digest())

    def last(self, n: int) -> list[SessionLog]:
        return self.sessions[-n:] if n > 0 else []

    async def similar(self, query: str, k: int) -> list[str]:
        return await self._memory.search(query, k)

    def __len__(self) -> int:
        return len(self.sessions)
