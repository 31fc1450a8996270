"""The persona updater: every k sessions, revise the learned persona from the last k sessions.

The model answers with only the fields it would change. Code enforces what a prompt cannot
guarantee: Demographics are never written, unknown paths and empty values are dropped, and an
unchanged value is not a change.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from flows.agent.calls import Caller
from flows.agent.chatbot import transcript
from flows.agent.persona import FlatPersona, is_protected
from flows.agent.sessions import SessionLog
from schemas.records import PERSONA_PATHS, PersonaPath


class FieldUpdate(BaseModel):
    field: PersonaPath  # type: ignore[valid-type]
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
    return [{"index": s.session_index, "title": s.title, "satisfied": s.satisfied, "transcript": transcript(s.dialogue())} for s in sessions]


class PersonaUpdater:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def update(self, persona: FlatPersona, sessions: list[SessionLog]) -> tuple[FlatPersona, list[str]]:
        res = await self.caller.structured(
            "update", "agent/persona_update", PersonaUpdate, max_tokens=700,
            persona=editable(persona), sessions=session_views(sessions),
        )  # fmt: skip
        if res.value is None:  # keep the old persona: a failed update must not erase what was learned
            return persona, []
        return apply_update(persona, res.value.updates)
