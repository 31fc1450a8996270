"""Stage 2 — persona synthesis: the LLM writes the narrative fields; the skeleton fixes the rest."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from typing import NamedTuple

from personaloom.llm.calls import LLMCall
from personaloom.schemas.drafts import PersonaDraft
from personaloom.schemas.records import (
    CommunicationStyle,
    Demographics,
    Pattern,
    Persona,
    Personality,
    PersonaRecord,
    Preference,
    SeedRow,
)
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.drift import resolve_changes

MBTI_WORDS = (
    {"E": "Extraversion", "I": "Introversion"},
    {"S": "Sensing", "N": "Intuition"},
    {"T": "Thinking", "F": "Feeling"},
    {"J": "Judging", "P": "Perceiving"},
)
# Draft field → (persona section, seed attribute pool used when the LLM gives nothing usable)
NARRATIVE = {
    "Behavior_Engagement_Pattern": ("Pattern", "behavior_engagement"),
    "Usage_Pattern": ("Pattern", "usage"),
    "Emotion_Pattern": ("Pattern", "emotion"),
    "Purchase_Pattern": ("Pattern", "purchase"),
    "Preferred_Styles": ("Preference", "preferred_styles"),
    "Preferred_Formats": ("Preference", "preferred_formats"),
    "Preferred_Workflows": ("Preference", "preferred_workflows"),
}


def session_times(seed: SeedRow) -> list[datetime]:
    """When each session happens: the skeleton's start date plus its gaps, at a per-persona hour."""
    rng = random.Random(seed.seed ^ 0x5E55)
    day = datetime.combine(seed.start_date, time(0), tzinfo=UTC)
    out = []
    for gap in seed.session_gaps_days:
        day += timedelta(days=gap)
        out.append(day + timedelta(hours=rng.randint(7, 22), minutes=rng.choice((0, 15, 30, 45))))
    return out


def career_line(seed: SeedRow) -> str:
    """What the person does, worded by work status (the occupation names a study, a trade or a former job)."""
    if seed.employment in ("employed", "self_employed"):
        how = "Self-employed" if seed.employment == "self_employed" else "Works"
        return f"{how} as {seed.occupation} ({seed.sector})."
    return f"{seed.occupation[0].upper()}{seed.occupation[1:]} ({seed.sector})."


def fallback_draft(seed: SeedRow, cat: Catalogue) -> dict[str, object]:
    """Every narrative field filled from the seed tables, deterministic per persona."""
    rng = random.Random(seed.seed ^ 0xFA11)
    draft: dict[str, object] = {f: rng.choice(cat.attributes[pool]) for f, (_, pool) in NARRATIVE.items()}
    draft["Career_Information"] = career_line(seed)
    draft["Values_and_Interests"] = list(seed.values_interests)
    draft["domain_vocabulary"] = list(seed.domain_vocabulary)
    return draft


def merge_persona(
    seed: SeedRow, draft: PersonaDraft | None, cat: Catalogue, raw: str | None = None
) -> PersonaRecord:
    """The full persona: fixed attributes from the skeleton, narrative from the draft, fallbacks recorded."""
    base = fallback_draft(seed, cat)
    written = draft.model_dump() if draft is not None else {}
    fields = {k: written.get(k) or v for k, v in base.items()}
    fallback = sorted(k for k in base if not written.get(k))
    letters = [MBTI_WORDS[i][c] for i, c in enumerate(seed.mbti)]
    persona = Persona(
        Demographics=Demographics(
            Name=seed.name,
            Age=seed.age,
            Gender=seed.gender,
            Nationality=seed.nationality,
            Language=seed.languages,
            Career_Information=str(fields["Career_Information"]),
            Interaction_Language=seed.interaction_language or "en",
        ),
        Personality=Personality(
            Extraversion_or_Introversion=letters[0],
            Sensing_or_Intuition=letters[1],
            Thinking_or_Feeling=letters[2],
            Judging_or_Perceiving=letters[3],
            Values_and_Interests=list(fields["Values_and_Interests"]),  # type: ignore[call-overload]
        ),
        Pattern=Pattern(**{k: str(fields[k]) for k, (sec, _) in NARRATIVE.items() if sec == "Pattern"}),
        Preference=Preference(
            **{k: str(fields[k]) for k, (sec, _) in NARRATIVE.items() if sec == "Preference"}
        ),
        Communication=CommunicationStyle(
            formality=seed.formality,
            verbosity=seed.verbosity,
            proactivity=seed.proactivity,
            domain_vocabulary=list(fields["domain_vocabulary"]),  # type: ignore[call-overload]
            emotional_tone=seed.emotional_tone,
        ),
        Changes=[],
        Fine=dict(seed.fine),  # planted by code at stage 1 (personaloom.stages.drift.plan_fine)
    )
    # code owns the bookkeeping of every change; the draft gives only narrative values and stories
    drafts = list(draft.changes) if draft is not None else []
    when = [t.date() for t in session_times(seed)]
    changes, change_fallback = resolve_changes(seed, persona, drafts, cat, when)
    persona = persona.model_copy(update={"Changes": changes})
    fallback += change_fallback
    return PersonaRecord(
        persona_id=seed.persona_id,
        seed=seed.seed,
        persona=persona,
        fallback_fields=fallback,
        raw_output=raw if fallback else None,
    )


class PersonaJob(NamedTuple):
    seed: SeedRow
    catalogue: Catalogue


SYNTHESIZE: LLMCall[PersonaJob, PersonaRecord] = LLMCall(
    name="personas/synthesize",
    variables=("seed",),
    render=lambda job: {"seed": job.seed},
    build=lambda job, res: merge_persona(
        job.seed, res.value, job.catalogue, raw=res.raw if res.value is None else None
    ),
    response=PersonaDraft,
    max_tokens=900,
    sample=lambda s: PersonaJob(s.seed, s.catalogue),
)


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[PersonaRecord]:
    jobs = [PersonaJob(seed, ctx.catalogue) for seed in inputs["seeds"]]
    return StageOutcome(records=await map_async(jobs, lambda job: ctx.llm.run(SYNTHESIZE, job), ctx.advance))


STAGE = Stage(
    name="personas",
    inputs=("seeds",),
    output="personas",
    record=PersonaRecord,
    run=run,
    calls=(SYNTHESIZE,),
    rows_in=lambda cfg, n: n["seeds"],
)
