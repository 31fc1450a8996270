"""LLM calls tagged by role, agent and persona, so a replay can account tokens per session and per agent.

Each (persona, agent) replay is sequential, so the usage of its own stage keys before and after a
session is exactly that session's cost, even while other replays run concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLM
from personaloom.schemas.config import LLMConfig
from personaloom.schemas.manifest import StageUsage
from personaloom.schemas.replay import RoleSettings

In = TypeVar("In")
Out = TypeVar("Out")

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

    async def run(self, role: str, call: LLMCall[In, Out], item: In) -> Out:
        """A declared call, its usage accounted under `role|agent|persona`."""
        return await self.llm.run(call, item, stage=self.stage(role))

    def totals(self, roles: tuple[str, ...]) -> StageUsage:
        total = StageUsage()
        for role in roles:
            key = self.stage(role)
            if key in self.llm.usage:  # don't let a read create empty keys in the defaultdict
                total = add_usage(total, self.llm.usage[key])
        return total


def role_settings(calls: tuple[LLMCall[Any, Any], ...], llm: LLMConfig) -> dict[str, RoleSettings]:
    """Each role's model (`LLMConfig.model_for`) and temperature (declared, else the run's), as sent.

    The calls of one role share a temperature by declaration; a disagreement is a programming error.
    """
    out: dict[str, RoleSettings] = {}
    for c in calls:
        temp = llm.temperature if c.temperature is None else c.temperature
        role = out.setdefault(c.role, RoleSettings(model=llm.model_for(c.role), temperature=temp, calls=[]))
        if role.temperature != temp:
            raise ValueError(f"calls of role {c.role!r} declare different temperatures ({c.name})")
        role.calls.append(c.name)
    return out


def usage_by(usage: dict[str, StageUsage], part: int) -> dict[str, StageUsage]:
    """Fold `role|agent|persona` keys by role (part 0) or by agent (part 1)."""
    out: dict[str, StageUsage] = {}
    for key, u in usage.items():
        bits = key.split(SEP)
        if len(bits) == 3:
            out[bits[part]] = add_usage(out.get(bits[part], StageUsage()), u)
    return dict(sorted(out.items()))
