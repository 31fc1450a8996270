"""The one tool-call format, its parser, and the Tool Executor that simulates API results.

The chatbot prompt documents the format and this module parses it — the two must agree:

    <tool_call>{"name": "search_flights", "arguments": {"origin": "OSL"}}</tool_call>
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from personaloom.agent.calls import Caller
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.records import ApiSpec

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
UNCLOSED = re.compile(r"<tool_call>.*\Z", re.DOTALL)  # a call cut off at the token limit


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        payload = json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)
        return f"<tool_call>{payload}</tool_call>"


@dataclass
class ParsedCalls:
    calls: list[ToolCall]
    errors: list[str]  # malformed calls: reported back to the chatbot, never raised


def _parse_one(body: str) -> ToolCall | str:
    body = body.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(body)
    except ValueError as e:
        return f"tool call is not valid JSON ({e.msg})"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return 'tool call needs {"name": "...", "arguments": {...}}'
    args = data.get("arguments") or {}
    if isinstance(args, str):  # some models JSON-encode the arguments a second time
        try:
            args = json.loads(args)
        except ValueError:
            return "tool call arguments are not a JSON object"
    if not isinstance(args, dict):
        return "tool call arguments are not a JSON object"
    return ToolCall(data["name"], args)


def parse_tool_calls(text: str) -> ParsedCalls:
    calls, errors = [], []
    for body in TOOL_CALL.findall(text):
        parsed = _parse_one(body)
        (calls if isinstance(parsed, ToolCall) else errors).append(parsed)
    return ParsedCalls(calls, errors)


def strip_tool_calls(text: str) -> str:
    """The answer the user sees: tool-call markup removed."""
    return UNCLOSED.sub("", TOOL_CALL.sub("", text)).strip()


def check_call(call: ToolCall, apis: list[ApiSpec]) -> str | None:
    """Why a call cannot run (unknown API, missing required argument), or None."""
    spec = next((a for a in apis if a.name == call.name), None)
    if spec is None:
        return f"unknown API {call.name!r}; available: {', '.join(a.name for a in apis) or 'none'}"
    missing = [a.name for a in spec.arguments if a.required and a.name not in call.arguments]
    if missing:
        return f"{call.name}: missing required argument(s) {', '.join(missing)}"
    return None


class ToolJob(NamedTuple):
    """A valid call of one API, with the scene's context the simulated result should agree with."""

    spec: ApiSpec
    call: ToolCall
    context: str
    language: str = "en"  # ISO 639-1: free text of the result is in the user's language


def tool_result(job: ToolJob, res: LLMResult[Any]) -> tuple[str, bool]:
    if res.value is None:
        return "ERROR: the service did not answer", False
    return res.value.strip(), True


EXAMPLE = re.compile(r"e\.g\. '([^']+)'")


def _sample_tool_job(spec: ApiSpec, context: str, language: str = "en") -> ToolJob:
    """A call of `spec` with a plausible value for every argument: the description's example, if any."""
    args: dict[str, Any] = {}
    for a in spec.arguments:
        example = EXAMPLE.search(a.description)
        numeric = a.type in ("integer", "number")
        args[a.name] = 2 if numeric else example.group(1) if example else a.name.replace("_", " ")
    return ToolJob(spec, ToolCall(spec.name, args), context, language)


TOOL_EXECUTOR: LLMCall[ToolJob, tuple[str, bool]] = LLMCall(
    name="agent/tool_executor",
    variables=("api", "arguments", "context", "language"),
    render=lambda job: {
        "api": job.spec.model_dump(),
        "arguments": json.dumps(job.call.arguments, ensure_ascii=False),
        "context": job.context,
        "language": job.language,
    },
    build=tool_result,
    response=None,
    max_tokens=300,
    role="tool",
    sample=lambda s: _sample_tool_job(
        s.row.apis[0] if s.row.apis else next(iter(s.catalogue.apis.values())),
        s.row.context,
        s.seed.interaction_language or "en",
    ),
)


class ToolExecutor:
    """Simulates an API's result with the LLM, from the API spec and the call's arguments."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def run(
        self, call: ToolCall, apis: list[ApiSpec], scene_context: str, language: str = "en"
    ) -> tuple[str, bool]:
        """(result text, ok). Invalid calls get an error result without an LLM call."""
        problem = check_call(call, apis)
        if problem is not None:
            return f"ERROR: {problem}", False
        spec = next(a for a in apis if a.name == call.name)
        return await self.caller.run("tool", TOOL_EXECUTOR, ToolJob(spec, call, scene_context, language))
