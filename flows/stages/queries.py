"""Stage 4 — personalized queries: a user simulator role-plays the persona in each scene.

Each opening query is also neutralized (persona traits removed), and records which persona fields it
implicitly reveals: what the model says it used, plus what a lexical check finds in the text.
"""

from __future__ import annotations

from typing import NamedTuple

from personaloom.drift import active_changes, persona_at
from personaloom.llm.calls import LLMCall
from personaloom.llm.checks import AnswerChecks
from personaloom.llm.client import LLMResult
from personaloom.schemas.drafts import NeutralDraft, QueryDraft
from personaloom.schemas.records import Persona, Query, Rejection, Scene
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async


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


class Earlier(NamedTuple):
    """The session a revisit continues: its scene and what the user asked then."""

    scene: Scene
    query: str


class SimulateJob(NamedTuple):
    scene: Scene
    persona: Persona  # the base persona; the prompt sees the one in force at the scene's session
    earlier: Earlier | None = None


def build_query(job: SimulateJob, res: LLMResult[QueryDraft]) -> Query | Rejection:
    """The opening query; neutralized later (until then the neutral text is the query, marked as fallback)."""
    scene = job.scene
    if res.value is None:
        return Rejection(
            stage="queries",
            row_id=scene.scene_id,
            persona_id=scene.persona_id,
            reason="llm_invalid_output",
            detail=res.error,
            raw_output=res.raw,
        )
    text = res.value.personalized_query.strip()
    return Query(
        query_id=f"{scene.scene_id}-q0",
        scene_id=scene.scene_id,
        persona_id=scene.persona_id,
        session_index=scene.session_index,
        personalized_query=text,
        neutralized_query=text,
        revealed_fields=sorted(set(res.value.revealed_fields) | lexical_reveals(text, job.persona)),
        fallback_fields=["neutralized_query"],
        raw_output=None,
    )


def query_grounded(job: SimulateJob, draft: QueryDraft, checks: AnswerChecks) -> str | None:
    """Stage 5 drops a query that repeats a prompt example or is not in the persona's language."""
    text = draft.personalized_query
    return checks.copied({"personalized_query": text}) or checks.wrong_language(
        "personalized_query", text, job.persona.Demographics.Interaction_Language
    )


SIMULATE: LLMCall[SimulateJob, Query | Rejection] = LLMCall(
    name="queries/simulate",
    variables=("persona", "scene", "changes", "earlier"),
    render=lambda job: {
        "persona": persona_at(job.persona, job.scene.session_index),
        "scene": job.scene,
        "changes": active_changes(job.persona, job.scene.session_index),
        "earlier": job.earlier,
    },
    build=build_query,
    response=QueryDraft,
    max_tokens=300,
    role="simulator",
    sample=lambda s: SimulateJob(s.scene, s.persona.persona, Earlier(s.scene, s.query.personalized_query)),
    check=query_grounded,
)


class NeutralizeJob(NamedTuple):
    query: Query
    scene: Scene
    language: str = "en"  # ISO 639-1: the neutralized query stays in the persona's language


def neutralized(job: NeutralizeJob, res: LLMResult[NeutralDraft]) -> Query:
    # an un-neutralized query would leak the persona into the baseline: flag it, keep the text
    if res.value is None:
        return job.query.model_copy(update={"raw_output": res.raw})
    return job.query.model_copy(
        update={"neutralized_query": res.value.neutralized_query.strip(), "fallback_fields": []}
    )


def neutral_grounded(job: NeutralizeJob, draft: NeutralDraft, checks: AnswerChecks) -> str | None:
    """Stage 5 drops a neutralized query that repeats a prompt example or left the task."""
    text, scene = draft.neutralized_query, job.scene
    return checks.copied({"neutralized_query": text}) or checks.drifted(
        text, job.query.personalized_query, f"{scene.title} {scene.description} {scene.context}"
    )


NEUTRALIZE: LLMCall[NeutralizeJob, Query] = LLMCall(
    name="queries/neutralize",
    variables=("query", "scene", "language"),
    render=lambda job: {"query": job.query.personalized_query, "scene": job.scene, "language": job.language},
    build=neutralized,
    response=NeutralDraft,
    max_tokens=250,
    sample=lambda s: NeutralizeJob(s.query, s.scene, s.seed.interaction_language or "en"),
    check=neutral_grounded,
)


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[Query]:
    by_id = {p.persona_id: p.persona for p in inputs["personas"]}
    scene_of = {s.scene_id: s for s in inputs["scenes"]}
    done: dict[str, Query | Rejection] = {}

    async def one(scene: Scene) -> Query | Rejection:
        earlier = None
        if scene.revisits is not None:  # the user picks up where they left off, in their own words
            then = done[scene.revisits]
            if isinstance(then, Query):
                earlier = Earlier(scene_of[scene.revisits], then.personalized_query)
        persona = by_id[scene.persona_id]
        query = await ctx.llm.run(SIMULATE, SimulateJob(scene, persona, earlier))
        if not isinstance(query, Rejection):
            language = persona.Demographics.Interaction_Language
            query = await ctx.llm.run(NEUTRALIZE, NeutralizeJob(query, scene, language))
        done[scene.scene_id] = query
        return query

    # sessions that revisit an earlier one go second, once what the user asked then is known
    await map_async([s for s in inputs["scenes"] if s.revisits is None], one, ctx.advance)
    await map_async([s for s in inputs["scenes"] if s.revisits is not None], one, ctx.advance)
    return StageOutcome.split(done[s.scene_id] for s in inputs["scenes"])


STAGE = Stage(
    name="queries",
    inputs=("scenes", "personas"),
    output="queries",
    record=Query,
    run=run,
    calls=(SIMULATE, NEUTRALIZE),
    rows_in=lambda cfg, n: n["scenes"],
)
