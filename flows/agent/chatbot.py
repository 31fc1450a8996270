"""The Personalized Chatbot: answers with the agent's persona, retrieved memory and the scene's APIs.

A reply may hold tool calls (format in tools.py): each goes to the Tool Executor and the chatbot is
asked again with the results, at most `max_tool_rounds` times; then it must answer without tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flows.agent.calls import Caller
from flows.agent.persona import FlatPersona, persona_lines
from flows.agent.sessions import Message, SessionLog
from flows.agent.tools import ToolExecutor, parse_tool_calls, strip_tool_calls
from schemas.records import DatasetRow

NO_ANSWER = "Sorry, I could not produce an answer."


@dataclass
class AgentContext:
    """What an agent puts into the chatbot's system prompt for one session."""

    persona: FlatPersona | None = None
    memory: list[str] = field(default_factory=list)
    summary: str | None = None


def transcript(messages: list[Message]) -> list[dict[str, str | None]]:
    return [{"role": m.role, "content": m.content, "tool_name": m.tool_name} for m in messages]


class Chatbot:
    def __init__(self, caller: Caller, max_tool_rounds: int, max_tokens: int = 600) -> None:
        self.caller = caller
        self.max_tool_rounds = max_tool_rounds
        self.max_tokens = max_tokens
        self.executor = ToolExecutor(caller)

    async def respond(self, ctx: AgentContext, row: DatasetRow, log: SessionLog, user_turn: int) -> str:
        """Answer the conversation in `log`, running tool rounds; appends every message to `log`."""
        for round_ in range(self.max_tool_rounds + 1):
            tools_left = round_ < self.max_tool_rounds
            text = await self._ask(ctx, row, log, tools_left)
            parsed = parse_tool_calls(text)
            if not tools_left or not (parsed.calls or parsed.errors):
                answer = strip_tool_calls(text) or NO_ANSWER
                log.messages.append(Message("assistant", answer, user_turn))
                return answer
            for call in parsed.calls:
                log.messages.append(Message("tool_call", call.render(), user_turn, call.name))
                result, _ok = await self.executor.run(call, row.apis, row.context)
                log.messages.append(Message("tool_result", result, user_turn, call.name))
            for err in parsed.errors:
                log.messages.append(Message("tool_result", f"ERROR: {err}", user_turn))
        raise AssertionError("unreachable: the last round always answers")

    async def _ask(self, ctx: AgentContext, row: DatasetRow, log: SessionLog, tools_left: bool) -> str:
        res = await self.caller.text(
            "chatbot", "agent/chatbot", max_tokens=self.max_tokens,
            persona=persona_lines(ctx.persona), memory=ctx.memory, summary=ctx.summary,
            apis=[a.model_dump() for a in row.apis], tools_left=tools_left, transcript=transcript(log.messages),
        )  # fmt: skip
        return res.value or ""

    async def draft(self, ctx: AgentContext, query: str, role: str) -> str:
        """A tool-free answer to an opening query alone (PersonaAgent's simulated response)."""
        log = SessionLog(session_index=-1, title="", query=query, messages=[Message("user", query, 1)])
        res = await self.caller.text(
            role, "agent/chatbot", max_tokens=self.max_tokens,
            persona=persona_lines(ctx.persona), memory=ctx.memory, summary=ctx.summary,
            apis=[], tools_left=False, transcript=transcript(log.messages),
        )  # fmt: skip
        return strip_tool_calls(res.value or "")
