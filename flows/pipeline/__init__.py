"""The pipeline as data: one `STAGES` list, and the one way any stage runs on a shard.

`run_stage` is the shared machinery every stage used to repeat: skip a finished shard, read the
stage's inputs, time it, write rejections then records (the output part existing means the shard is
done, so a re-run resumes). Local and remote runners both walk `STAGES` through it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from personaloom.dataset.store import TABLES, read_records, read_table, write_records
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMError, count_failed_calls
from personaloom.runtime.progress import progress_sink
from personaloom.schemas.manifest import StageCount
from personaloom.schemas.records import Rejection
from personaloom.stages import personas, probes, queries, scenes, seed
from personaloom.stages.base import Stage, StageContext, StageOutcome
from personaloom.stages.filter import stage as filter_stage

if TYPE_CHECKING:
    from personaloom.runtime.run import Run
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
    probes.STAGE,
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
# the store's list is the one readers use: a stage that writes a new table must add it there
assert set(PUBLISHED) == set(TABLES), (PUBLISHED, TABLES)


def build_calls() -> tuple[LLMCall[Any, Any], ...]:
    return tuple(c for s in STAGES for c in s.calls)


def all_calls() -> tuple[LLMCall[Any, Any], ...]:
    """Every LLM call the project makes: the build's stages, the reference agent's, the evaluation's."""
    from personaloom.agent.agents import agent_calls
    from personaloom.runs.evaluate import EVAL_CALLS

    return build_calls() + agent_calls() + EVAL_CALLS


def part(staging: Path, table: str, shard: int, prefix: str = "") -> Path:
    return staging / table / f"part-{prefix}{shard:05d}.parquet"


def rejections_part(staging: Path, stage: Stage, shard: int) -> Path:
    return part(staging, "rejections", shard, f"{stage.name}-")


def shard_rows(config: BuildConfig, shard: int, first_persona: int = 0, first_shard: int = 0) -> range:
    """Persona indices of `shard`: `shard_size` each from `first_persona`, shards numbered from `first_shard`.

    A fresh build starts both at 0; a grown build continues past its parent's personas and shard numbers.
    """
    size = config.shard_size
    start = first_persona + (shard - first_shard) * size
    return range(start, min(config.personas, start + size))


def n_shards(config: BuildConfig, first_persona: int = 0) -> int:
    return -(-(config.personas - first_persona) // config.shard_size)


def _offsets(run: Run) -> tuple[int, int]:
    return (run.growth.first_persona, run.growth.first_shard) if run.growth else (0, 0)


def new_personas(run: Run) -> range:
    """The persona indices this run generates: all of them, or those past its parent's (a grown build)."""
    return range(_offsets(run)[0], run.config.personas)


def shards(run: Run) -> range:
    """The shard numbers this run writes; its dataset stages write under the first."""
    first_persona, first_shard = _offsets(run)
    return range(first_shard, first_shard + n_shards(run.config, first_persona))


def earlier_rows(run: Run) -> Callable[[str], list[Any]]:
    """A published table's rows of the version a grown build continues (none for a fresh build)."""
    parent = run.growth.parent if run.growth else None

    def rows(table: str) -> list[Any]:
        return read_records(parent / table, TABLE_MODELS[table]) if parent is not None else []

    return rows


def _read_inputs(run: Run, stage: Stage, shard: int) -> dict[str, list[Any]]:
    if stage.scope == "shard":
        return {t: read_records(part(run.staging, t, shard), TABLE_MODELS[t]) for t in stage.inputs}
    return {
        t: [r for s in shards(run) for r in read_records(part(run.staging, t, s), TABLE_MODELS[t])]
        for t in stage.inputs
    }


async def run_stage(run: Run, stage: Stage, shard: int) -> float:
    """Run one stage on one shard (a dataset stage: the first of `shards(run)`); returns its seconds.

    0 when the shard was already done (its output part exists).
    """
    out = part(run.staging, stage.output, shard)
    if out.exists():
        return 0.0
    # Reading and writing a shard's parts (Parquet and pydantic, up to seconds of CPU) run on a worker
    # thread: on the event loop they held up every LLM reply in flight, which lowered the calls per
    # second the endpoint's limit allows. The GIL still hands the loop its turn every few ms.
    inputs = await asyncio.to_thread(_read_inputs, run, stage, shard)
    rows = shard_rows(run.config, shard, *_offsets(run)) if stage.scope == "shard" else new_personas(run)
    ctx = StageContext(
        run.config,
        run.llm,
        run.catalogue,
        rows,
        progress_sink.advancer(stage.reports_as),
        earlier=earlier_rows(run),
    )
    started = time.perf_counter()
    failed = count_failed_calls()
    outcome = await stage.run(inputs, ctx)
    seconds = time.perf_counter() - started
    if failed.count:  # rows lost to the endpoint, not to their content: the shard is not done
        raise LLMError(
            f"{run.llm.endpoint}: {failed.count} LLM call(s) of stage {stage.name} failed after "
            f"{run.llm.config.max_retries} retries (last error: {failed.last_error}); nothing was "
            "published: run the same command to resume"
        )
    await asyncio.to_thread(_write_outcome, run, stage, shard, outcome)
    return seconds


def _write_outcome(run: Run, stage: Stage, shard: int, outcome: StageOutcome[Any]) -> None:
    out = part(run.staging, stage.output, shard)
    rejections = rejections_part(run.staging, stage, shard)
    if outcome.rejections or rejections.exists():
        write_records(rejections, Rejection, outcome.rejections)
    write_records(out, stage.record, outcome.records)  # last: it existing means the shard is done


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
        model = TABLE_MODELS[table]
        if "fallback_fields" in model.model_fields:
            tbl = read_table(staging / table, model, columns=["fallback_fields"])
            fallback[table] = sum(1 for f in tbl.column("fallback_fields").to_pylist() if f)
        else:
            tbl = read_table(staging / table, model)
            fallback[table] = 0
        rows[table] = tbl.num_rows
    by_stage = Counter(read_table(staging / "rejections", Rejection, columns=["stage"])["stage"].to_pylist())
    rows |= {f"rejected:{s.reports_as}": by_stage[s.reports_as] for s in STAGES}
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
        "probes": config.personas * len(probes.TYPES) if config.probes else 0,
        "rejected:probes": 0,
    }
    return {s.reports_as: s.rows_in(config, planned) for s in STAGES if s.rows_in is not None}
