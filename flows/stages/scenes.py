"""Stage 3 — scene generation: each persona's sessions, ordered in time.

Common scenes come from the catalogue, persona-specific ones from the LLM (one list call per persona,
each scene with a category of `scenarios.categories` that code checks), revisits return to an
earlier topic later on; then each scene is enriched by the LLM with an abstract expected response,
concrete context and the catalogue APIs the assistant may call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLM, LLMResult
from personaloom.schemas.drafts import revisit_details_model, scene_details_model
from personaloom.schemas.records import CatalogueScene, Persona, Scene, SceneKind, SeedRow
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.drift import active_changes, persona_at
from personaloom.stages.filter.checks import AnswerChecks
from personaloom.stages.personas import session_times
from personaloom.stages.scenarios import (
    CATEGORY_FALLBACK,
    OTHER,
    categories,
    check_category,
    scenario_list_model,
)


@dataclass(frozen=True, eq=False)  # identity equality: a revisit points at its origin object
class Topic:
    kind: SceneKind
    title: str
    description: str
    catalogue_id: str | None = None
    suggested_apis: tuple[str, ...] = ()
    origin: Topic | None = None  # the earlier topic a revisit returns to
    fallback: tuple[str, ...] = ()
    category: str | None = None


def plan_counts(n: int, revisit_share: float) -> tuple[int, int, int]:
    """(common, specific, revisit) for n sessions; revisits need an earlier session to return to."""
    revisit = min(round(n * revisit_share), max(n - 1, 0))
    common = (n - revisit + 1) // 2
    return common, n - revisit - common, revisit


def order_topics(rng: random.Random, base: list[Topic], n_revisits: int) -> list[Topic]:
    """Shuffle the base topics, then insert each revisit somewhere after the session it returns to."""
    seq = list(base)
    rng.shuffle(seq)
    for _ in range(n_revisits):
        origin = rng.choice([i for i, t in enumerate(seq) if t.kind != "revisit"])
        src = seq[origin]
        revisit = replace(src, kind="revisit", title=f"Follow-up: {src.title}", origin=src, fallback=())
        seq.insert(rng.randint(origin + 1, len(seq)), revisit)
    return seq


def fallback_context(seed: SeedRow, when: str) -> str:
    return f"{when}. The user is {seed.name}, {seed.age}, {seed.occupation} living in {seed.country}."


class PlanJob(NamedTuple):
    """Ask for `n` persona-specific scene ideas, unlike the common scenes already picked (`avoid`), each
    with one of `categories`."""

    seed: SeedRow
    persona: Persona
    n: int
    avoid: list[str]
    categories: tuple[str, ...]


def ideas_grounded(job: PlanJob, ideas: Any, checks: AnswerChecks) -> str | None:
    """Stage 5 drops the sessions of an idea whose description repeats a prompt example."""
    return checks.copied(
        {f"scenes[{i}].description": s.description for i, s in enumerate(ideas.scenes[: job.n])}
    )


LIST: LLMCall[PlanJob, list[Any]] = LLMCall(
    name="scenes/list",
    variables=("persona", "seed", "n", "avoid", "categories"),
    render=lambda job: {
        "persona": job.persona,
        "seed": job.seed,
        "n": job.n,
        "avoid": job.avoid,
        "categories": job.categories,
    },
    build=lambda job, res: list(res.value.scenes[: job.n]) if res.value else [],
    response=lambda job: scenario_list_model(job.categories, job.n),
    max_tokens=lambda job: 130 * job.n + 60,
    sample=lambda s: PlanJob(s.seed, s.persona.persona, 3, [s.scene.title], categories(s.catalogue)),
    check=ideas_grounded,
)


class EnrichJob(NamedTuple):
    """Session `index` of a persona's plan `seq`: the topic to write concrete details for.

    `persona` is the base persona; the prompt sees the persona in force at this session. A revisit
    carries the earlier session's scene (`earlier`), written first, so it can continue it.
    """

    seed: SeedRow
    persona: Persona
    index: int
    topic: Topic
    seq: list[Topic]
    catalogue: Catalogue
    earlier: Scene | None = None

    @property
    def when(self) -> datetime:
        return session_times(self.seed)[self.index]

    @property
    def api_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.catalogue.apis))


def enrich_variables(job: EnrichJob) -> dict[str, Any]:
    topic = job.topic
    return {
        "persona": persona_at(job.persona, job.index),
        "changes": active_changes(job.persona, job.index),
        "seed": job.seed,
        "topic": topic,
        "when": job.when.strftime("%A %d %B %Y, %H:%M"),
        "api_names": job.api_names,
        "suggested_apis": topic.suggested_apis,
        "apis": job.catalogue.apis,
    }


def revisit_variables(job: EnrichJob) -> dict[str, Any]:
    earlier = job.earlier
    assert earlier is not None  # a revisit is enriched after the session it continues
    variables = enrich_variables(job)
    del variables["topic"], variables["seed"], variables["apis"]
    return {**variables, "earlier": earlier, "earlier_when": earlier.timestamp.strftime("%A %d %B %Y")}


def build_scene(job: EnrichJob, res: LLMResult[Any]) -> Scene:
    """The scene record: the plan fixes kind, title, time and revisit link; the LLM writes the details."""
    seed, index, topic, cat = job.seed, job.index, job.topic, job.catalogue
    when = job.when
    d = res.value
    fallback = list(topic.fallback)
    if d is None:
        fallback += ["expected_response", "context", "apis"]
    description = topic.description
    if job.earlier is not None:
        if d is not None:
            description = d.description
        else:
            description = f"Follow-up on: {job.earlier.description}"
            fallback.append("description")
    pid = seed.persona_id
    return Scene(
        scene_id=f"{pid}-s{index:03d}",
        persona_id=pid,
        session_index=index,
        timestamp=when,
        kind=topic.kind,
        title=topic.title,
        description=description,
        expected_response=d.expected_response if d else f"Helps the user with: {description}",
        context=d.context if d else fallback_context(seed, when.strftime("%A %d %B %Y")),
        apis=[cat.apis[a] for a in dict.fromkeys(d.apis if d else topic.suggested_apis)],
        catalogue_id=topic.catalogue_id,
        category=topic.category,
        revisits=job.earlier.scene_id if job.earlier is not None else None,
        fallback_fields=fallback,
        raw_output=res.raw if d is None else None,
    )


def details_grounded(job: EnrichJob, details: Any, checks: AnswerChecks) -> str | None:
    """Stage 5 drops the session whose scene texts repeat a prompt example."""
    texts = {"expected_response": details.expected_response, "context": details.context}
    if job.earlier is not None:  # a revisit writes its own description
        texts["description"] = details.description
    return checks.copied(texts)


ENRICH: LLMCall[EnrichJob, Scene] = LLMCall(
    name="scenes/enrich",
    variables=("persona", "changes", "seed", "topic", "when", "api_names", "suggested_apis", "apis"),
    render=enrich_variables,
    build=build_scene,
    response=lambda job: scene_details_model(job.api_names),
    max_tokens=500,
    sample=lambda s: EnrichJob(s.seed, s.persona.persona, 0, s.topic, [s.topic], s.catalogue),
    check=details_grounded,
)
REVISIT: LLMCall[EnrichJob, Scene] = LLMCall(
    name="scenes/revisit",
    variables=("persona", "changes", "when", "api_names", "suggested_apis", "earlier", "earlier_when"),
    render=revisit_variables,
    build=build_scene,
    response=lambda job: revisit_details_model(job.api_names),
    max_tokens=600,
    sample=lambda s: EnrichJob(
        s.seed,
        s.persona.persona,
        1,
        replace(s.topic, kind="revisit", title=f"Follow-up: {s.topic.title}", origin=s.topic),
        [s.topic],
        s.catalogue,
        earlier=s.scene,
    ),
    check=details_grounded,
)


async def plan(
    seed: SeedRow, persona: Persona, llm: LLM, cat: Catalogue, revisit_share: float
) -> list[Topic]:
    """A persona's topics in session order: common, persona-specific (by the LLM), then revisits inserted."""
    rng = random.Random(seed.seed ^ 0x5CE7E)
    n_common, n_specific, n_revisit = plan_counts(len(seed.session_gaps_days), revisit_share)
    common = rng.sample(cat.scenes, min(n_common + n_specific, len(cat.scenes)))
    topics = [catalogue_topic(s) for s in common[:n_common]]
    ideas: list[Any] = []
    allowed = categories(cat)
    if n_specific:
        ideas = await llm.run(LIST, PlanJob(seed, persona, n_specific, [t.title for t in topics], allowed))
    topics += [specific_topic(i.title, i.description, i.category, allowed) for i in ideas]
    # Too few persona-specific ideas: spare catalogue scenes stand in, marked as fallbacks.
    topics += [catalogue_topic(s, ("kind",)) for s in common[n_common : n_common + n_specific - len(ideas)]]
    return order_topics(rng, topics, n_revisit)


def catalogue_topic(s: CatalogueScene, fallback: tuple[str, ...] = ()) -> Topic:
    return Topic(
        "common", s.title, s.description, s.scene_id, tuple(s.apis), fallback=fallback, category=s.category
    )


def specific_topic(title: str, description: str, answer: str, allowed: tuple[str, ...]) -> Topic:
    """A written scene with its checked category: one that is none of `allowed` is `OTHER`, marked."""
    category = check_category(answer, allowed)
    if category is None:
        return Topic("specific", title, description, category=OTHER, fallback=(CATEGORY_FALLBACK,))
    return Topic("specific", title, description, category=category)


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[Scene]:
    by_id = {p.persona_id: p.persona for p in inputs["personas"]}
    cat, llm = ctx.catalogue, ctx.llm

    async def persona_scenes(seed: SeedRow) -> list[Scene]:
        # plan then enrich per persona, with no barrier across personas: the endpoint stays busy
        persona = by_id[seed.persona_id]
        seq = await plan(seed, persona, llm, cat, ctx.config.revisit_share)
        position = {id(t): i for i, t in enumerate(seq)}
        written: dict[int, Scene] = {}

        async def write(i: int) -> None:
            origin = seq[i].origin
            # a revisit continues the session it returns to: written after it, with it in the prompt
            earlier = written[position[id(origin)]] if origin is not None else None
            job = EnrichJob(seed, persona, i, seq[i], seq, cat, earlier)
            written[i] = await llm.run(REVISIT if earlier is not None else ENRICH, job)

        await map_async([i for i, t in enumerate(seq) if t.origin is None], write, ctx.advance)
        await map_async([i for i, t in enumerate(seq) if t.origin is not None], write, ctx.advance)
        return [written[i] for i in range(len(seq))]

    return StageOutcome(
        records=[s for scenes in await map_async(inputs["seeds"], persona_scenes) for s in scenes]
    )


STAGE = Stage(
    name="scenes",
    inputs=("seeds", "personas"),
    output="scenes",
    record=Scene,
    run=run,
    calls=(LIST, ENRICH, REVISIT),
    rows_in=lambda cfg, n: n["personas"] * cfg.scenes_per_persona,
)
