"""The Personalized Chatbot: answers with the agent's persona, retrieved memory and the scene's APIs.

A reply may hold tool calls (format in tools.py): each goes to the Tool Executor and the chatbot is
asked again with the results, at most `max_tool_rounds` times; then it must answer without tools. An
agent may add APIs of its own (`AgentContext.extra_apis`, PersonaAgent's personal-data tool): those run
in the agent (`local_tools`), not in the Tool Executor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from personaloom.agent.calls import Caller
from personaloom.agent.persona import FlatPersona, golden_at, language_of, persona_lines
from personaloom.agent.sessions import Message, SessionLog, sample_session
from personaloom.agent.tools import ToolExecutor, check_call, parse_tool_calls, strip_tool_calls
from personaloom.llm.calls import LLMCall
from personaloom.schemas.records import ApiSpec, DatasetRow

NO_ANSWER = "Sorry, I could not produce an answer."


LocalTool = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass
class AgentContext:
    """What an agent puts into the chatbot's system prompt for one session (or one turn)."""

    persona: FlatPersona | None = None
    memory: list[str] = field(default_factory=list)  # retrieved earlier sessions
    summary: str | None = None  # a semantic memory of the user
    persona_prompt: str | None = None  # PersonaAgent: the persona, a system prompt the agent rewrites
    preferences: list[str] = field(default_factory=list)  # VARS: preference notes that enter the prompt
    extra_apis: list[ApiSpec] = field(default_factory=list)  # the agent's own APIs beside the scene's
    local_tools: dict[str, LocalTool] = field(default_factory=dict)  # their implementations, by name


def transcript(messages: list[Message]) -> list[dict[str, str | None]]:
    return [{"role": m.role, "content": m.content, "tool_name": m.tool_name} for m in messages]


class ChatJob(NamedTuple):
    """One chatbot request: the agent's context, the APIs it may call, and the conversation so far."""

    ctx: AgentContext
    apis: list[ApiSpec]
    tools_left: bool  # False: the prompt asks for an answer now, without API calls
    messages: list[Message]
    language: str = "en"  # ISO 639-1 code of the language the user writes in


CHATBOT: LLMCall[ChatJob, str] = LLMCall(
    name="agent/chatbot",
    variables=(
        "persona",
        "persona_prompt",
        "memory",
        "summary",
        "preferences",
        "apis",
        "tools_left",
        "transcript",
        "language",
    ),
    render=lambda job: {
        "persona": persona_lines(job.ctx.persona),
        "persona_prompt": job.ctx.persona_prompt,
        "memory": job.ctx.memory,
        "summary": job.ctx.summary,
        "preferences": job.ctx.preferences,
        "apis": [a.model_dump() for a in job.apis],
        "tools_left": job.tools_left,
        "transcript": transcript(job.messages),
        "language": job.language,
    },
    build=lambda job, res: res.value or "",  # the raw reply: tool calls are parsed by the caller
    response=None,
    max_tokens=600,
    role="chatbot",
    sample=lambda s: ChatJob(
        AgentContext(persona=golden_at(s.row), memory=[sample_session(s.row).digest()]),
        s.row.apis,
        True,
        [Message("user", s.row.neutralized_query, 1)],
        language_of(s.row),
    ),
)


class Chatbot:
    def __init__(self, caller: Caller, max_tool_rounds: int) -> None:
        self.caller = caller
        self.max_tool_rounds = max_tool_rounds
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
                local = ctx.local_tools.get(call.name)
                if local is not None:  # the agent's own API: it answers from its memory, no LLM call
                    problem = check_call(call, ctx.extra_apis)
                    result = f"ERROR: {problem}" if problem else await local(call.arguments)
                else:
                    result, _ok = await self.executor.run(call, row.apis, row.context, language_of(row))
                log.messages.append(Message("tool_result", result, user_turn, call.name))
            for err in parsed.errors:
                log.messages.append(Message("tool_result", f"ERROR: {err}", user_turn))
        raise AssertionError("unreachable: the last round always answers")

    async def _ask(self, ctx: AgentContext, row: DatasetRow, log: SessionLog, tools_left: bool) -> str:
        job = ChatJob(ctx, [*row.apis, *ctx.extra_apis], tools_left, log.messages, language_of(row))
        return await self.caller.run("chatbot", CHATBOT, job)

    async def draft(self, ctx: AgentContext, query: str, role: str, language: str = "en") -> str:
        """A tool-free answer to an opening query alone (PersonaAgent's simulated response r̂)."""
        job = ChatJob(ctx, [], False, [Message("user", query, 1)], language)
        return strip_tool_calls(await self.caller.run(role, CHATBOT, job))
