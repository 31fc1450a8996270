"""Stage 3 — scene generation: each persona's sessions, ordered in time.

Common scenes come from the catalogue, persona-specific ones from the LLM (one list call per persona),
revisits return to an earlier topic later on; then each scene is enriched by the LLM with an abstract
expected response, concrete context and the catalogue APIs the assistant may call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from flows.catalogue import Catalogue
from flows.llm.client import LLM
from flows.stages.base import Progress, StageOutcome, map_async
from flows.stages.personas import session_times
from schemas.drafts import SceneIdea, SceneList, scene_details_model
from schemas.records import PersonaRecord, Scene, SceneKind, SeedRow

STAGE = "scenes"


@dataclass(frozen=True, eq=False)  # identity equality: a revisit points at its origin object
class Topic:
    kind: SceneKind
    title: str
    description: str
    catalogue_id: str | None = None
    suggested_apis: tuple[str, ...] = ()
    origin: Topic | None = None  # the earlier topic a revisit returns to
    fallback: tuple[str, ...] = ()


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


async def generate_scenes(
    seeds: list[SeedRow],
    personas: list[PersonaRecord],
    llm: LLM,
    cat: Catalogue,
    *,
    revisit_share: float,
    progress: Progress | None = None,
) -> StageOutcome[Scene]:
    by_id = {p.persona_id: p for p in personas}
    api_names = tuple(sorted(cat.apis))
    details_model = scene_details_model(api_names)

    async def plan(seed: SeedRow) -> list[Topic]:
        rng = random.Random(seed.seed ^ 0x5CE7E)
        n_common, n_specific, n_revisit = plan_counts(len(seed.session_gaps_days), revisit_share)
        common = rng.sample(cat.scenes, min(n_common + n_specific, len(cat.scenes)))
        topics = [Topic("common", s.title, s.description, s.scene_id, tuple(s.apis)) for s in common[:n_common]]
        ideas: list[SceneIdea] = []
        if n_specific:
            res = await llm.structured(
                "scenes/list", SceneList, stage=STAGE, max_tokens=120 * n_specific + 60,
                persona=by_id[seed.persona_id].persona, seed=seed, n=n_specific,
                avoid=[t.title for t in topics],
            )  # fmt: skip
            ideas = list(res.value.scenes[:n_specific]) if res.value else []
        topics += [Topic("specific", i.title, i.description) for i in ideas]
        # Too few persona-specific ideas: spare catalogue scenes stand in, marked as fallbacks.
        for s in common[n_common : n_common + n_specific - len(ideas)]:
            topics.append(Topic("common", s.title, s.description, s.scene_id, tuple(s.apis), fallback=("kind",)))
        return order_topics(rng, topics, n_revisit)


    async def enrich(job: tuple[SeedRow, int, Topic, list[Topic]]) -> Scene:
        seed, index, topic, seq = job
        when = session_times(seed)[index]
        earlier = next(i for i, t in enumerate(seq) if t is topic.origin) if topic.origin else None
        res = await llm.structured(
            "scenes/enrich", details_model, stage=STAGE, max_tokens=500,
            persona=by_id[seed.persona_id].persona, seed=seed, topic=topic, earlier=topic.origin,
            when=when.strftime("%A %d %B %Y, %H:%M"), api_names=api_names,
            suggested_apis=topic.suggested_apis, apis=cat.apis,
        )  # fmt: skip
        d = res.value
        fallback = list(topic.fallback)
        if d is None:
            fallback += ["expected_response", "context", "apis"]
        pid = seed.persona_id
        return Scene(
            scene_id=f"{pid}-s{index:03d}",
            persona_id=pid,
            session_index=index,
            timestamp=when,
            kind=topic.kind,
            title=topic.title,
            description=topic.description,
            expected_response=d.expected_response if d else f"Helps the user with: {topic.description}",
            context=d.context if d else fallback_context(seed, when.strftime("%A %d %B %Y")),
            apis=[cat.apis[a] for a in dict.fromkeys(d.apis if d else topic.suggested_apis)],
            catalogue_id=topic.catalogue_id,
            revisits=f"{pid}-s{earlier:03d}" if earlier is not None else None,
            fallback_fields=fallback,
            raw_output=res.raw if d is None else None,
        )

    async def persona_scenes(seed: SeedRow) -> list[Scene]:
        # plan then enrich per persona, with no barrier across personas: the endpoint stays busy
        seq = await plan(seed)
        return await map_async([(seed, i, topic, seq) for i, topic in enumerate(seq)], enrich, progress)

    return StageOutcome(records=[s for scenes in await map_async(seeds, persona_scenes) for s in scenes])
