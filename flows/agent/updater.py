"""The persona updater: every k sessions, revise the learned persona from the last k sessions.

The model answers with only the fields it would change. Code enforces what a prompt cannot
guarantee: Demographics are never written, unknown paths and empty values are dropped, and an
unchanged value is not a change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from personaloom.agent.calls import Caller
from personaloom.agent.chatbot import transcript
from personaloom.agent.persona import FlatPersona, initial_persona, is_protected
from personaloom.agent.sessions import SessionLog, sample_session
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.records import PERSONA_PATHS, FixedPath


class FieldUpdate(BaseModel):
    field: FixedPath  # type: ignore[valid-type]
    value: str = Field(description="the new full value of the field")
    evidence: str = Field("", description="what the user said or did that shows it")


class PersonaUpdate(BaseModel):
    updates: list[FieldUpdate] = Field(default_factory=list, description="only the fields that should change")


def update_due(position: int, k: int, total: int) -> bool:
    """After sessions k, 2k, … (1-based positions) and after the last one."""
    return position % k == 0 or position == total


def apply_update(persona: FlatPersona, updates: list[FieldUpdate]) -> tuple[FlatPersona, list[str]]:
    """(new persona, changed paths); protected, unknown, empty and no-op updates are ignored."""
    new = dict(persona)
    changed: list[str] = []
    for u in updates:
        value = u.value.strip()
        if is_protected(u.field) or u.field not in PERSONA_PATHS or not value or new.get(u.field) == value:
            continue
        new[u.field] = value
        if u.field not in changed:
            changed.append(u.field)
    return new, changed


def editable(persona: FlatPersona) -> list[dict[str, str]]:
    """Every updatable field with its value ('unknown' when empty), for the update prompts."""
    return [{"path": p, "value": persona.get(p) or "unknown"} for p in PERSONA_PATHS if not is_protected(p)]


def session_views(sessions: list[SessionLog]) -> list[dict[str, object]]:
    return [
        {
            "index": s.session_index,
            "title": s.title,
            "satisfied": s.satisfied,
            "transcript": transcript(s.dialogue()),
        }
        for s in sessions
    ]


def updated(persona: FlatPersona, res: LLMResult[Any]) -> tuple[FlatPersona, list[str]]:
    """(new persona, changed paths) from a PersonaUpdate answer.

    A failed answer keeps the old persona: it must not erase what was learned.
    """
    if res.value is None:
        return persona, []
    return apply_update(persona, res.value.updates)


class UpdateJob(NamedTuple):
    persona: FlatPersona
    sessions: list[SessionLog]  # the last k sessions
    language: str = "en"  # ISO 639-1: values are written in the user's language


PERSONA_UPDATE: LLMCall[UpdateJob, tuple[FlatPersona, list[str]]] = LLMCall(
    name="agent/persona_update",
    variables=("persona", "sessions", "language"),
    render=lambda job: {
        "persona": editable(job.persona),
        "sessions": session_views(job.sessions),
        "language": job.language,
    },
    build=lambda job, res: updated(job.persona, res),
    response=PersonaUpdate,
    max_tokens=700,
    role="memory",
    sample=lambda s: UpdateJob(
        initial_persona(s.row), [sample_session(s.row)], s.seed.interaction_language or "en"
    ),
)


class PersonaUpdater:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def update(
        self, persona: FlatPersona, sessions: list[SessionLog], language: str = "en"
    ) -> tuple[FlatPersona, list[str]]:
        return await self.caller.run("update", PERSONA_UPDATE, UpdateJob(persona, sessions, language))
