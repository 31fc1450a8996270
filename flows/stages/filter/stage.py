"""Stage 5 — dedup and quality filtering of the queries.

Cheap checks first (persona- and scene-level dedup, rules, exact and near-duplicate queries by the
text filter engine), then the paper's answerability check (and an optional quality score) by LLM on
the survivors only. It runs twice: `screen` per shard as soon as the shard's queries exist, so LLM
checks overlap other shards' generation, and `dedup_all` once over every screened row, for the
duplicates that cross shards. Every dropped row becomes a Rejection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from rapidfuzz import fuzz
from rapidfuzz.process import cdist

from personaloom.llm.client import LLM
from personaloom.schemas.config import DedupLevels
from personaloom.schemas.filtering import FilterConfig, NearDupConfig
from personaloom.schemas.records import DatasetRow, PersonaRecord, Query, Rejection, Scene
from personaloom.stages.base import Advance, Inputs, Stage, StageContext, StageOutcome
from personaloom.stages.drift import active_changes
from personaloom.stages.filter import NAME, filter_texts, find_near_duplicates
from personaloom.stages.filter.checks import checks_of
from personaloom.stages.filter.engine import wrong_language_detail
from personaloom.stages.filter.grounding import ExampleIndex, drifted
from personaloom.stages.filter.judges import ANSWERABILITY, QUALITY, judge_each, unjudged
from personaloom.stages.filter.normalize import normalize


def persona_key(p: PersonaRecord) -> str:
    """What makes two personas the same user: name, occupation, locale and values."""
    d = p.persona.Demographics
    values = ", ".join(sorted(v.lower() for v in p.persona.Personality.Values_and_Interests))
    return f"{d.Name} | {d.Career_Information} | {d.Nationality} | {', '.join(d.Language)} | {values}"


def _groups(keys: list[str], ids: list[str], threshold: float) -> dict[str, tuple[str, float]]:
    """id → (id of the kept twin, similarity) for every near-duplicate in `keys` (earliest kept)."""
    if len(keys) < 2:
        return {}
    res = find_near_duplicates(keys, NearDupConfig(threshold=threshold, min_df=1))
    return {ids[i]: (ids[int(j)], float(res.dup_score[i])) for i, j in enumerate(res.dup_of) if j >= 0}


def duplicate_personas(personas: list[PersonaRecord], threshold: float) -> dict[str, tuple[str, float]]:
    return _groups([persona_key(p) for p in personas], [p.persona_id for p in personas], threshold)


def duplicate_scenes(scenes: list[Scene], threshold: float) -> dict[str, tuple[str, float]]:
    """Near-duplicate scenes within one persona; revisits repeat a topic on purpose and are exempt."""
    by_persona: dict[str, list[Scene]] = {}
    for s in scenes:
        if s.kind != "revisit":
            by_persona.setdefault(s.persona_id, []).append(s)
    groups = [sorted(mine, key=lambda s: s.session_index) for mine in by_persona.values()]
    # One normalize call for every persona's scenes: per persona, polars' fixed cost per call was most of
    # the dataset-level filter's time (200 personas: 0.3 s while no LLM call is in flight).
    flat = [f"{s.title}. {s.description}" for mine in groups for s in mine]
    norm = normalize(pl.Series(flat, dtype=pl.String)).to_list()
    found: dict[str, tuple[str, float]] = {}
    at = 0
    for mine in groups:
        found |= _pairwise_groups(norm[at : at + len(mine)], [s.scene_id for s in mine], threshold)
        at += len(mine)
    return found


def _pairwise_groups(norm: list[str], ids: list[str], threshold: float) -> dict[str, tuple[str, float]]:
    """All pairs of one persona's few scenes (normalized texts) scored directly: LSH blocking pays off
    only at scale."""
    scores = cdist(norm, norm, scorer=fuzz.ratio, dtype=np.float32)
    found: dict[str, tuple[str, float]] = {}
    for i in range(1, len(ids)):
        earlier = [j for j in range(i) if ids[j] not in found and scores[i, j] >= threshold]
        if earlier:
            j = max(earlier, key=lambda j: scores[i, j])
            found[ids[i]] = (ids[j], float(scores[i, j]))
    return found


def level_dedup(
    queries: list[Query], scenes: list[Scene], personas: list[PersonaRecord], levels: DedupLevels
) -> StageOutcome[Query]:
    """Persona-aware dedup: drop every session of a duplicate persona, and duplicate scenes of one persona."""
    twin_persona = duplicate_personas(personas, levels.persona_threshold)
    twin_scene = duplicate_scenes(scenes, levels.scene_threshold)
    out: StageOutcome[Query] = StageOutcome()
    for q in queries:
        if q.persona_id in twin_persona:
            kept, score = twin_persona[q.persona_id]
            reason = "persona_duplicate"
        elif q.scene_id in twin_scene:
            kept, score = twin_scene[q.scene_id]
            reason = "scene_duplicate"
        else:
            out.records.append(q)
            continue
        out.rejections.append(
            Rejection(
                stage=NAME,
                row_id=q.query_id,
                persona_id=q.persona_id,
                reason=reason,
                dup_of=kept,
                dup_score=score,
                dup_method="near",
                raw_output=q.personalized_query,
            )
        )
    return out


def interaction_languages(personas: Iterable[PersonaRecord]) -> dict[str, str]:
    """persona_id → the ISO 639-1 code its texts are meant to be in."""
    return {p.persona_id: p.persona.Demographics.Interaction_Language for p in personas}


def cheap_filter(
    queries: list[Query], config: FilterConfig, languages: Mapping[str, str] | None = None
) -> StageOutcome[Query]:
    """Rules + exact + near-duplicate dedup over the personalized queries of the whole dataset.

    With `languages` (persona_id → ISO code), a query detected in another language is `wrong_language`.
    """
    if not queries:
        return StageOutcome()
    df = pl.DataFrame(
        {
            "query_id": [q.query_id for q in queries],
            "text": [q.personalized_query for q in queries],
            "language": [languages.get(q.persona_id) if languages else None for q in queries],
        },
        schema={"query_id": pl.String, "text": pl.String, "language": pl.String},
    )
    lang_column = "language" if languages else None
    result = filter_texts(df, "text", config, id_column="query_id", lang_column=lang_column)
    kept_ids = set(result.kept["query_id"].to_list())
    by_id = {q.query_id: q for q in queries}
    rejections = [
        Rejection(
            stage=NAME,
            row_id=r["query_id"],
            persona_id=by_id[r["query_id"]].persona_id,
            reason=r["drop_reason"],
            score=r["rule_score"],
            dup_of=r["dup_of"],
            dup_score=r["dup_score"],
            dup_method=r["dup_method"],
            detail=wrong_language_detail(r),
            raw_output=r["text"],
        )
        for r in result.rejected.iter_rows(named=True)
    ]
    return StageOutcome(records=[q for q in queries if q.query_id in kept_ids], rejections=rejections)


@dataclass(frozen=True)
class Kept:
    """Rows an earlier version of the dataset already holds (a grown build): kept by definition."""

    queries: Sequence[Query] = ()  # the kept queries (those in the earlier `dataset` table)
    scenes: Sequence[Scene] = ()
    personas: Sequence[PersonaRecord] = ()


def dedup_all(
    queries: list[Query],
    scenes: list[Scene],
    personas: list[PersonaRecord],
    levels: DedupLevels,
    config: FilterConfig,
    earlier: Kept | None = None,
) -> StageOutcome[Query]:
    """The cheap checks: persona and scene levels, then rules and exact/near-duplicate queries.

    With `earlier`, the new rows are checked against every earlier row too. Earlier rows come first, so a
    group of duplicates holding one keeps it (the earliest row of a group is kept), and only the new
    queries are judged: a new near-duplicate of an old row is rejected, an old row never is.
    """
    languages = interaction_languages([*(earlier.personas if earlier else ()), *personas])
    if earlier is None:
        by_level = level_dedup(queries, scenes, personas, levels)
        return by_level.then(cheap_filter(by_level.records, config, languages))
    by_level = level_dedup(queries, [*earlier.scenes, *scenes], [*earlier.personas, *personas], levels)
    old = {q.query_id for q in earlier.queries}
    checked = cheap_filter([*earlier.queries, *by_level.records], config, languages)
    new_only = StageOutcome(
        records=[q for q in checked.records if q.query_id not in old],
        rejections=[r for r in checked.rejections if r.row_id not in old],
    )
    return by_level.then(new_only)


def grounded(queries: list[Query], scenes: list[Scene], examples: ExampleIndex) -> StageOutcome[Query]:
    """Rows whose texts echo a prompt's worked example, or whose neutralized query left the task, go."""
    scene_of = {s.scene_id: s for s in scenes}
    out: StageOutcome[Query] = StageOutcome()
    for q in queries:
        s = scene_of[q.scene_id]
        texts = {
            "personalized_query": q.personalized_query,
            "neutralized_query": q.neutralized_query,
            "scene.description": s.description,
            "scene.expected_response": s.expected_response,
            "scene.context": s.context,
        }
        copy = next(((f, hit) for f, t in texts.items() if (hit := examples.copied(t))), None)
        if copy is not None:
            where, (example, score) = copy
            reason, detail = "copied_example", f"{where} repeats a prompt example: {example[:80]}"
        elif drifted(q.neutralized_query, q.personalized_query, f"{s.title} {s.description} {s.context}"):
            reason, detail, score = (
                "neutralization_drift",
                "the neutralized query shares no task content",
                None,
            )
        else:
            out.records.append(q)
            continue
        out.rejections.append(
            Rejection(
                stage=NAME,
                row_id=q.query_id,
                persona_id=q.persona_id,
                reason=reason,
                detail=detail,
                score=score,
                raw_output=q.neutralized_query if reason == "neutralization_drift" else None,
            )
        )
    return out


async def screen(
    queries: list[Query],
    scenes: list[Scene],
    personas: list[PersonaRecord],
    llm: LLM,
    *,
    levels: DedupLevels,
    config: FilterConfig,
    answerable: bool,
    quality_min: int | None,
    advance: Advance | None = None,
    judge_min_accuracy: float = 0.0,
) -> StageOutcome[Query]:
    """One shard: cheap checks, then the LLM checks on what survives them.

    With `judge_min_accuracy`, the answerability judge is calibrated first (once per run,
    personaloom.stages.calibration); an untrusted judge is not asked, and the rows go on marked."""

    def cheap() -> StageOutcome[Query]:
        out = dedup_all(queries, scenes, personas, levels, config)
        return out.then(grounded(out.records, scenes, checks_of(llm).examples))

    # A worker thread: on the event loop these seconds of CPU held up the other shards' LLM replies.
    out = await asyncio.to_thread(cheap)
    if answerable and judge_min_accuracy > 0:
        from personaloom.stages.calibration import judge_calibration  # it declares its jobs with ours

        calibration = await judge_calibration(llm, judge_min_accuracy)
        if calibration is not None and not calibration.trusted:  # its verdicts would be no evidence
            answerable = False
            out = StageOutcome([unjudged(q, "answerability") for q in out.records], out.rejections)
    if advance is not None:
        advance(len(out.rejections) + (0 if answerable else len(out.records)))
    languages = interaction_languages(personas)
    if answerable:
        out = out.then(
            await judge_each(ANSWERABILITY, out.records, scenes, llm, advance=advance, languages=languages)
        )
    if quality_min is not None:
        out = out.then(await judge_each(QUALITY, out.records, scenes, llm, quality_min, languages=languages))
    return out


async def run_screen(inputs: Inputs, ctx: StageContext) -> StageOutcome[Query]:
    """Stage 5 on one shard, as soon as its queries exist: the LLM checks overlap other shards' work."""
    cfg = ctx.config
    return await screen(
        list(inputs["queries"]),
        list(inputs["scenes"]),
        list(inputs["personas"]),
        ctx.llm,
        levels=cfg.dedup,
        config=cfg.filter,
        answerable=cfg.answerability,
        quality_min=cfg.quality_min,
        advance=ctx.advance,
        judge_min_accuracy=cfg.judge_min_accuracy,
    )


def join_dataset(
    queries: list[Query], scenes: list[Scene], personas: list[PersonaRecord]
) -> list[DatasetRow]:
    """The rows users load: one per kept query, with its scene and persona, in persona/session order."""
    scene_of = {s.scene_id: s for s in scenes}
    persona_of = {p.persona_id: p for p in personas}
    rows = []
    for q in sorted(queries, key=lambda q: (q.persona_id, q.session_index)):
        s, p = scene_of[q.scene_id], persona_of[q.persona_id]
        fallback = {*s.fallback_fields, *q.fallback_fields, *(f"persona.{f}" for f in p.fallback_fields)}
        rows.append(
            DatasetRow(
                persona_id=q.persona_id,
                session_index=q.session_index,
                timestamp=s.timestamp,
                scene_id=s.scene_id,
                query_id=q.query_id,
                kind=s.kind,
                title=s.title,
                description=s.description,
                expected_response=s.expected_response,
                context=s.context,
                apis=s.apis,
                revisits=s.revisits,
                personalized_query=q.personalized_query,
                neutralized_query=q.neutralized_query,
                revealed_fields=list(q.revealed_fields),
                persona=p.persona,
                turns=q.turns,
                planned_reveals=q.planned_reveals,
                active_changes=active_changes(p.persona, q.session_index),
                fallback_fields=sorted(fallback),
            )
        )
    return rows


async def run_dataset(inputs: Inputs, ctx: StageContext) -> StageOutcome[DatasetRow]:
    """Stage 5 across shards (duplicates cross them), then the dataset table is joined."""
    scenes, personas = list(inputs["scenes"]), list(inputs["personas"])
    earlier = None
    if earlier_personas := ctx.earlier("personas"):  # a grown build: dedup against every earlier row
        kept_ids = {r.query_id for r in ctx.earlier("dataset")}
        earlier = Kept(
            queries=[q for q in ctx.earlier("queries") if q.query_id in kept_ids],
            scenes=ctx.earlier("scenes"),
            personas=earlier_personas,
        )
    kept = dedup_all(list(inputs["screened"]), scenes, personas, ctx.config.dedup, ctx.config.filter, earlier)
    return StageOutcome(records=join_dataset(kept.records, scenes, personas), rejections=kept.rejections)


SCREEN = Stage(
    name="screen",
    report=NAME,
    inputs=("queries", "scenes", "personas"),
    output="screened",  # an intermediate: `dataset/` holds the result
    record=Query,
    run=run_screen,
    calls=(ANSWERABILITY, QUALITY),
)
DATASET = Stage(
    name="filter",
    inputs=("screened", "scenes", "personas"),
    output="dataset",
    record=DatasetRow,
    run=run_dataset,
    scope="dataset",
    rows_in=lambda cfg, n: n["queries"],
)
