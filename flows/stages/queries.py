"""Stage 4 — personalized queries: a user simulator role-plays the persona in each scene.

Each opening query is also neutralized (persona traits removed), and records which persona fields it
implicitly reveals: what the model says it used, plus what a lexical check finds in the text.
"""

from __future__ import annotations

from flows.llm.client import LLM
from flows.stages.base import Progress, StageOutcome, map_async
from schemas.drafts import NeutralDraft, QueryDraft
from schemas.records import Persona, PersonaRecord, PreferenceChange, Query, Rejection, Scene

STAGE = "queries"


def active_changes(persona: Persona, session_index: int) -> list[PreferenceChange]:
    """Preference changes in force at this session (the user as they are now, not as they began)."""
    return [c for c in persona.Changes if c.effective_session <= session_index]


def lexical_reveals(text: str, persona: Persona) -> set[str]:
    """Persona fields whose concrete words appear in the query: ground truth that needs no model."""
    low = text.lower()
    found = set()
    if any(w.lower() in low for w in persona.Communication.domain_vocabulary if len(w) > 3):
        found.add("Communication.domain_vocabulary")
    if any(v.lower() in low for v in persona.Personality.Values_and_Interests if len(v) > 3):
        found.add("Personality.Values_and_Interests")
    if any(lang.lower() in low for lang in persona.Demographics.Language):
        found.add("Demographics.Language")
    if persona.Demographics.Nationality.lower() in low:
        found.add("Demographics.Nationality")
    return found


async def generate_queries(
    scenes: list[Scene], personas: list[PersonaRecord], llm: LLM, progress: Progress | None = None
) -> StageOutcome[Query]:
    by_id = {p.persona_id: p.persona for p in personas}

    async def one(scene: Scene) -> Query | Rejection:
        persona = by_id[scene.persona_id]
        sim = await llm.structured(
            "queries/simulate", QueryDraft, stage=STAGE, max_tokens=300,
            persona=persona, scene=scene, changes=active_changes(persona, scene.session_index),
        )  # fmt: skip
        if sim.value is None:
            return Rejection(stage=STAGE, row_id=scene.scene_id, persona_id=scene.persona_id,
                             reason="llm_invalid_output", detail=sim.error, raw_output=sim.raw)  # fmt: skip
        text = sim.value.personalized_query.strip()
        neu = await llm.structured("queries/neutralize", NeutralDraft, stage=STAGE, max_tokens=250, query=text, scene=scene)
        revealed = sorted(set(sim.value.revealed_fields) | lexical_reveals(text, persona))
        return Query(
            query_id=f"{scene.scene_id}-q0",
            scene_id=scene.scene_id,
            persona_id=scene.persona_id,
            session_index=scene.session_index,
            personalized_query=text,
            # an un-neutralized query would leak the persona into the baseline: flag it, keep the text
            neutralized_query=neu.value.neutralized_query.strip() if neu.value else text,
            revealed_fields=revealed,
            fallback_fields=[] if neu.value else ["neutralized_query"],
            raw_output=None if neu.value else neu.raw,
        )

    return StageOutcome.split(await map_async(scenes, one, progress))
