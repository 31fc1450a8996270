"""The simulated user: role-plays the GOLDEN persona (changes in force), judges each answer, follows up.

The opening message is the dataset's neutralized query (no LLM call): the persona must be inferred,
not read off the request. After each answer the simulator writes `<Satisfied>` or `<Continue>` and,
when continuing, its next message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from personaloom.agent.calls import Caller
from personaloom.agent.chatbot import transcript
from personaloom.agent.persona import golden_at, language_of, persona_lines
from personaloom.agent.sessions import SessionLog, sample_session
from personaloom.llm.calls import LLMCall
from personaloom.schemas.records import DatasetRow

VERDICT = re.compile(r"<\s*(satisfied|continue)\s*>", re.IGNORECASE)
CLOSING = re.compile(r"</\s*(satisfied|continue)\s*>", re.IGNORECASE)
# Used when the simulator continues but writes no message: the session still needs a user turn.
FALLBACK_FOLLOW_UP = "That does not fully answer what I need yet. Please try again."


@dataclass
class Verdict:
    satisfied: bool
    follow_up: str
    malformed: bool  # neither tag, or <Continue> with nothing after it
    raw: str


def parse_verdict(text: str) -> Verdict:
    """The first tag decides; text after <Continue> is the follow-up.

    No tag: not satisfied, text kept as follow-up.
    """
    m = VERDICT.search(text)
    if m is None:
        body = CLOSING.sub("", text).strip()
        return Verdict(False, body or FALLBACK_FOLLOW_UP, True, text)
    if m.group(1).lower() == "satisfied":
        return Verdict(True, "", False, text)
    body = CLOSING.sub("", VERDICT.sub("", text[m.end() :])).strip()
    return Verdict(False, body or FALLBACK_FOLLOW_UP, not body, text)


class VerdictJob(NamedTuple):
    """The user's view after an answer: the session's row (golden persona, scene) and the dialogue."""

    row: DatasetRow
    log: SessionLog
    turns_left: int


USER_JUDGE: LLMCall[VerdictJob, Verdict] = LLMCall(
    name="agent/user_judge",
    variables=("persona", "user_name", "changes", "scene", "transcript", "turns_left", "language"),
    render=lambda job: {
        "persona": persona_lines(golden_at(job.row)),
        "user_name": job.row.persona.Demographics.Name,
        "changes": [c.model_dump() for c in job.row.active_changes],
        "scene": job.row.model_dump(include={"title", "description", "context", "expected_response"}),
        "transcript": transcript(job.log.dialogue()),
        "turns_left": job.turns_left,
        "language": language_of(job.row),
    },
    build=lambda job, res: parse_verdict(res.value or ""),
    response=None,
    max_tokens=300,
    role="simulator",
    sample=lambda s: VerdictJob(s.row, sample_session(s.row), 2),
)


class UserSimulator:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def judge(self, row: DatasetRow, log: SessionLog, turns_left: int) -> Verdict:
        return await self.caller.run("user", USER_JUDGE, VerdictJob(row, log, turns_left))
