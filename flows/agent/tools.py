"""The one tool-call format, its parser, and the Tool Executor that simulates API results.

The chatbot prompt documents the format and this module parses it — the two must agree:

    <tool_call>{"name": "search_flights", "arguments": {"origin": "OSL"}}</tool_call>
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flows.agent.calls import Caller
from schemas.records import ApiSpec

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
UNCLOSED = re.compile(r"<tool_call>.*\Z", re.DOTALL)  # a call cut off at the token limit


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        return f"<tool_call>{json.dumps({'name': self.name, 'arguments': self.arguments}, ensure_ascii=False)}</tool_call>"


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


class ToolExecutor:
    """Simulates an API's result with the LLM, from the API spec and the call's arguments."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def run(self, call: ToolCall, apis: list[ApiSpec], scene_context: str) -> tuple[str, bool]:
        """(result text, ok). Invalid calls get an error result without an LLM call."""
        problem = check_call(call, apis)
        if problem is not None:
            return f"ERROR: {problem}", False
        spec = next(a for a in apis if a.name == call.name)
        res = await self.caller.text(
            "tool", "agent/tool_executor", max_tokens=300,
            api=spec.model_dump(), arguments=json.dumps(call.arguments, ensure_ascii=False), context=scene_context,
        )  # fmt: skip
        if res.value is None:
            return "ERROR: the service did not answer", False
        return res.value.strip(), True
