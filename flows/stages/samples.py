"""One sample row of every record, made by code alone (no LLM): what `personaloom prompts --show` renders.

The skeleton comes from the real sampler; the persona, scene and query are the seed-table fallbacks
the stages use when a model's answer is unusable, so every declared call can render a real prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from personaloom.llm.client import LLMResult
from personaloom.schemas.records import DatasetRow, PersonaRecord, Query, Scene, SeedRow, Turn
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.filter.stage import join_dataset
from personaloom.stages.personas import merge_persona
from personaloom.stages.scenes import EnrichJob, Topic, build_scene
from personaloom.stages.seed import row_seed, sample_skeleton

NO_ANSWER: LLMResult[None] = LLMResult(None, "")


@dataclass(frozen=True)
class Samples:
    catalogue: Catalogue
    seed: SeedRow
    persona: PersonaRecord
    topic: Topic
    scene: Scene
    query: Query
    row: DatasetRow


def sample_records(catalogue: Catalogue, *, index: int = 0, seed: int = 0, sessions: int = 4) -> Samples:
    """Persona `index` of a build with this seed, its first session, and that session's dataset row."""
    skeleton = sample_skeleton(catalogue, index, row_seed(seed, index), n_sessions=sessions, n_changes=2)
    persona = merge_persona(skeleton, None, catalogue)
    common = catalogue.scenes[row_seed(seed, index) % len(catalogue.scenes)]
    topic = Topic("common", common.title, common.description, common.scene_id, tuple(common.apis))
    scene = build_scene(EnrichJob(skeleton, persona.persona, 0, topic, [topic], catalogue), NO_ANSWER)
    text = f"Can you help me with this: {common.description[0].lower()}{common.description[1:]}"
    query = Query(
        query_id=f"{scene.scene_id}-q0",
        scene_id=scene.scene_id,
        persona_id=scene.persona_id,
        session_index=0,
        personalized_query=text,
        neutralized_query=text,
        revealed_fields=[],
        turns=[
            Turn(turn_id=f"{scene.scene_id}-q0-t0", role="user", content=text),
            Turn(turn_id=f"{scene.scene_id}-q0-t1", role="assistant", content="Sure: here is a first plan."),
            Turn(turn_id=f"{scene.scene_id}-q0-t2", role="user", content="Thanks, and what comes next?"),
        ],
    )
    row = join_dataset([query], [scene], [persona])[0]
    return Samples(catalogue, skeleton, persona, topic, scene, query, row)
