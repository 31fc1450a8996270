"""LLM calls tagged by role, agent and persona, so a replay can account tokens per session and per agent.

Each (persona, agent) replay is sequential, so the usage of its own stage keys before and after a
session is exactly that session's cost, even while other replays run concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from flows.llm.client import LLM, LLMResult
from schemas.manifest import StageUsage

T = TypeVar("T", bound=BaseModel)

AGENT_ROLES: tuple[str, ...] = ("chatbot", "tool", "update", "memory", "align")  # what the agent itself costs
EVAL_ROLES: tuple[str, ...] = ("user", "judge")  # the simulated world and the scoring
SEP = "|"


def add_usage(total: StageUsage, u: StageUsage) -> StageUsage:
    return StageUsage(**{k: getattr(total, k) + getattr(u, k) for k in StageUsage.model_fields})


@dataclass
class Caller:
    llm: LLM
    agent: str
    persona_id: str

    def stage(self, role: str) -> str:
        return SEP.join((role, self.agent, self.persona_id))

    async def text(self, role: str, prompt: str, *, max_tokens: int = 512, **variables: Any) -> LLMResult[Any]:
        return await self.llm.text(prompt, stage=self.stage(role), max_tokens=max_tokens, **variables)

    async def structured(self, role: str, prompt: str, schema: type[T], *, max_tokens: int = 512, **variables: Any) -> LLMResult[T]:
        return await self.llm.structured(prompt, schema, stage=self.stage(role), max_tokens=max_tokens, **variables)

    def totals(self, roles: tuple[str, ...]) -> StageUsage:
        total = StageUsage()
        for role in roles:
            key = self.stage(role)
            if key in self.llm.usage:  # don't let a read create empty keys in the defaultdict
                total = add_usage(total, self.llm.usage[key])
        return total


def usage_by(usage: dict[str, StageUsage], part: int) -> dict[str, StageUsage]:
    """Fold `role|agent|persona` keys by role (part 0) or by agent (part 1)."""
    out: dict[str, StageUsage] = {}
    for key, u in usage.items():
        bits = key.split(SEP)
        if len(bits) == 3:
            out[bits[part]] = add_usage(out.get(bits[part], StageUsage()), u)
    return dict(sorted(out.items()))
