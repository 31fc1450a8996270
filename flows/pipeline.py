"""The pipeline as data: one `STAGES` list, and the one way any stage runs on a shard.

`run_stage` is the shared machinery every stage used to repeat: skip a finished shard, read the
stage's inputs, time it, write rejections then records (the output part existing means the shard is
done, so a re-run resumes). Local and remote runners both walk `STAGES` through it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from personaloom.llm.calls import LLMCall
from personaloom.progress import progress_sink
from personaloom.schemas.manifest import StageCount
from personaloom.schemas.records import Rejection
from personaloom.stages import filter as filter_stage
from personaloom.stages import personas, queries, scenes, seed
from personaloom.stages.base import Stage, StageContext
from personaloom.store import read_records, read_table, write_records

if TYPE_CHECKING:
    from personaloom.run import Run
    from personaloom.schemas.config import BuildConfig

# In order. Stages of scope "shard" run per shard, one after another; a "dataset" stage runs once all
# shards are through, over every shard's rows.
STAGES: tuple[Stage, ...] = (
    seed.STAGE,
    personas.STAGE,
    scenes.STAGE,
    queries.STAGE,
    filter_stage.SCREEN,
    filter_stage.DATASET,
)
SHARD_STAGES = tuple(s for s in STAGES if s.scope == "shard")
DATASET_STAGES = tuple(s for s in STAGES if s.scope == "dataset")
BY_NAME = {s.name: s for s in STAGES}
# The pipeline's stages as reported (manifest, progress, card): screen counts under filter.
REPORTED: tuple[str, ...] = tuple(dict.fromkeys(s.reports_as for s in STAGES))
# Each table's row model, from the stage that writes it.
TABLE_MODELS: dict[str, type[BaseModel]] = {s.output: s.record for s in STAGES} | {"rejections": Rejection}
INTERMEDIATE = ("screened",)  # written for resume, not published
PUBLISHED = tuple(t for t in TABLE_MODELS if t not in INTERMEDIATE)


def build_calls() -> tuple[LLMCall[Any, Any], ...]:
    return tuple(c for s in STAGES for c in s.calls)


def all_calls() -> tuple[LLMCall[Any, Any], ...]:
    """Every LLM call the project makes: the build's stages, then the reference agent's."""
    from personaloom.agent.calls import agent_calls

    return build_calls() + agent_calls()


def part(staging: Path, table: str, shard: int, prefix: str = "") -> Path:
    return staging / table / f"part-{prefix}{shard:05d}.parquet"


def rejections_part(staging: Path, stage: Stage, shard: int) -> Path:
    return part(staging, "rejections", shard, f"{stage.name}-")


def shard_rows(config: BuildConfig, shard: int) -> range:
    size = config.shard_size
    return range(shard * size, min(config.personas, (shard + 1) * size))


def n_shards(config: BuildConfig) -> int:
    return -(-config.personas // config.shard_size)


def _read_inputs(run: Run, stage: Stage, shard: int) -> dict[str, list[Any]]:
    if stage.scope == "shard":
        return {t: read_records(part(run.staging, t, shard), TABLE_MODELS[t]) for t in stage.inputs}
    return {
        t: [
            r
            for s in range(n_shards(run.config))
            for r in read_records(part(run.staging, t, s), TABLE_MODELS[t])
        ]
        for t in stage.inputs
    }


async def run_stage(run: Run, stage: Stage, shard: int) -> float:
    """Run one stage on one shard (shard 0 for a dataset stage); returns its seconds (0 when already done)."""
    out = part(run.staging, stage.output, shard)
    if out.exists():
        return 0.0
    inputs = _read_inputs(run, stage, shard)
    rows = shard_rows(run.config, shard) if stage.scope == "shard" else range(run.config.personas)
    ctx = StageContext(run.config, run.llm, run.catalogue, rows, progress_sink.advancer(stage.reports_as))
    started = time.perf_counter()
    outcome = await stage.run(inputs, ctx)
    seconds = time.perf_counter() - started
    rejections = rejections_part(run.staging, stage, shard)
    if outcome.rejections or rejections.exists():
        write_records(rejections, Rejection, outcome.rejections)
    write_records(out, stage.record, outcome.records)  # last: it existing means the shard is done
    return seconds


async def run_shard_stages(run: Run, shard: int) -> Counter[str]:
    """Every shard stage of one shard, in order, as plain calls (one remote task per shard)."""
    seconds: Counter[str] = Counter()
    for stage in SHARD_STAGES:
        seconds[stage.reports_as] += await run_stage(run, stage, shard)
    return seconds


def stage_counts(staging: Path, config: BuildConfig) -> dict[str, StageCount]:
    """Rows in and out per reported stage, read back from what was written (the manifest reconciles)."""
    rows: dict[str, int] = {}
    fallback: dict[str, int] = {}
    for table in TABLE_MODELS:
        if table in ("rejections", *INTERMEDIATE):
            continue
        tbl = read_table(staging / table, TABLE_MODELS[table], columns=["fallback_fields"])
        rows[table] = tbl.num_rows
        fallback[table] = sum(1 for f in tbl.column("fallback_fields").to_pylist() if f)
    by_stage = Counter(read_table(staging / "rejections", Rejection, columns=["stage"])["stage"].to_pylist())
    counts: dict[str, StageCount] = {}
    for stage in STAGES:
        if stage.rows_in is None:  # a step inside a reported stage (screen, inside filter)
            continue
        name = stage.reports_as
        counts[name] = StageCount(
            rows_in=stage.rows_in(config, rows),
            rows_out=rows[stage.output],
            rejected=by_stage[name],
            fallback_rows=fallback[stage.output],
        )
    return counts


def planned_rows(config: BuildConfig) -> dict[str, int]:
    """Rows each reported stage is asked to handle when nothing is dropped (the progress bars' totals)."""
    planned: Mapping[str, int] = {
        "seeds": config.personas,
        "personas": config.personas,
        "scenes": config.personas * config.scenes_per_persona,
        "queries": config.personas * config.scenes_per_persona,
    }
    return {s.reports_as: s.rows_in(config, planned) for s in STAGES if s.rows_in is not None}
