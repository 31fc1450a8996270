"""The flat persona agents learn: dotted path → text, over PERSONA_PATHS.

A flat map (not the nested `Persona` model) because learned personas start mostly empty, updates
name single fields, and the field-level metrics compare field by field. Lists read as "a, b, c".
"""

from __future__ import annotations

from personaloom.schemas.records import PERSONA_PATHS, DatasetRow, Persona, PreferenceChange

FlatPersona = dict[str, str]
PROTECTED_SECTION = "Demographics"  # given to the agent at the start; updates never touch it
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(p.split(".")[0] for p in PERSONA_PATHS))


def _text(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def flatten(persona: Persona, changes: list[PreferenceChange] | None = None) -> FlatPersona:
    """The persona as path → text, with dated changes applied in effective order (the newest wins)."""
    flat: FlatPersona = {}
    for path in PERSONA_PATHS:
        section, name = path.split(".")
        flat[path] = _text(getattr(getattr(persona, section), name))
    for c in sorted(changes or [], key=lambda c: (c.effective_session, c.date)):
        flat[c.field] = c.after
    return flat


def golden_at(row: DatasetRow) -> FlatPersona:
    """Ground truth at this session: the golden persona with the changes in force applied."""
    return flatten(row.persona, row.active_changes)


def initial_persona(row: DatasetRow) -> FlatPersona:
    """What a learning agent starts from: Demographics known (a profile), every other field empty."""
    golden = flatten(row.persona)
    return {p: (golden[p] if p.startswith(PROTECTED_SECTION + ".") else "") for p in PERSONA_PATHS}


def language_of(row: DatasetRow) -> str:
    """ISO 639-1 code of the language the user writes in: the agent, its simulated user and its judge
    work in it (the user's messages show it, so every agent may know it)."""
    return row.persona.Demographics.Interaction_Language


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_SECTION + ".")


def persona_lines(persona: FlatPersona | None) -> list[dict[str, str]]:
    """Known fields only, for prompts: an empty field is unknown, not a preference for emptiness."""
    return [{"path": p, "value": v} for p, v in (persona or {}).items() if v.strip()]
