"""Prefect flow `build_dataset`: the five stages, one task per stage and shard, into a new version.

Each (stage, shard) task reads its inputs from the staging folder and writes its outputs there
atomically; a re-run of the same build finds finished shards and skips them, and the response
cache answers every LLM call that had completed. The version is published by one rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.card import dataset_card
from flows.catalogue import Catalogue, load_catalogue
from flows.llm.cache import ResponseCache
from flows.llm.client import LLM, endpoint_label
from flows.llm.endpoint import NO_KEY, Endpoint, api_key_from_env, open_endpoint
from flows.llm.prompts import PromptLibrary
from flows.progress import progress_sink
from flows.stages import filter as filter_stage
from flows.stages.personas import synthesize_personas
from flows.stages.queries import active_changes, generate_queries
from flows.stages.scenes import generate_scenes
from flows.stages.seed import expand_hints, sample_skeletons
from flows.store import DatasetStore, read_records, read_table, shard_infos, write_records
from flows.version import code_version
from schemas.config import BuildConfig, RunPaths
from schemas.manifest import Manifest, StageCount
from schemas.records import DatasetRow, PersonaRecord, Query, Rejection, Scene, SeedRow

STAGES = ("seed", "personas", "scenes", "queries", "filter")


@dataclass
class BuildContext:
    """Everything tasks share in one flow run; handed to tasks unvisited (`quote`), never hashed."""

    config: BuildConfig
    catalogue: Catalogue
    llm: LLM
    store: DatasetStore
    staging: Path
    stage_seconds: Counter[str] = field(default_factory=Counter)  # summed over shards (they overlap)
    timings: dict[str, float] = field(default_factory=dict)  # wall clock of the run's phases

    def part(self, table: str, shard: int, prefix: str = "") -> Path:
        return self.staging / table / f"part-{prefix}{shard:05d}.parquet"

    @property
    def n_shards(self) -> int:
        return -(-self.config.personas // self.config.shard_size)

    def shard_seeds(self, shard: int) -> tuple[int, int]:
        size = self.config.shard_size
        return shard * size, min(self.config.personas, (shard + 1) * size)


# Settings that change speed or spending, not content: a resumed build may change them (e.g. a higher budget).
NOT_IDENTITY = {"llm": {"concurrency", "rpm", "tpm", "timeout", "max_retries", "base_url", "max_tokens", "max_cost", "prices"}}


def run_key(config: BuildConfig, catalogue: Catalogue, prompts: PromptLibrary) -> str:
    """A build's identity: same content settings, seeds and prompts → same staging folder → resume."""
    ident = {
        "config": config.model_dump(mode="json", exclude=NOT_IDENTITY),
        "seeds": catalogue.digest,
        "prompts": prompts.hashes,
        "code": code_version(),
    }
    return hashlib.sha256(orjson.dumps(ident, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


async def _timed(ctx: BuildContext, stage: str, coro: Any) -> Any:
    started = time.perf_counter()
    try:
        return await coro
    finally:
        ctx.stage_seconds[stage] += time.perf_counter() - started


def _done(*paths: Path) -> bool:
    return all(p.exists() for p in paths)


# ---------------------------------------------------------------- tasks (one per stage and shard)


@task(name="seed", cache_policy=NO_CACHE)
async def seed_task(ctx: BuildContext, shard: int) -> None:
    out = ctx.part("seeds", shard)
    if _done(out):
        return
    lo, hi = ctx.shard_seeds(shard)
    cfg = ctx.config
    rows = sample_skeletons(ctx.catalogue, hi, cfg.seed, n_sessions=cfg.scenes_per_persona, n_changes=cfg.changes_per_persona)[lo:]
    if cfg.expand_hints:
        rows = (await _timed(ctx, "seed", expand_hints(rows, ctx.llm, progress_sink.advancer("seed")))).records
    else:
        progress_sink.advance("seed", len(rows))
    write_records(out, SeedRow, rows)


@task(name="personas", cache_policy=NO_CACHE)
async def personas_task(ctx: BuildContext, shard: int) -> None:
    out = ctx.part("personas", shard)
    if _done(out):
        return
    seeds = read_records(ctx.part("seeds", shard), SeedRow)
    res = await _timed(ctx, "personas", synthesize_personas(seeds, ctx.llm, ctx.catalogue, progress_sink.advancer("personas")))
    write_records(out, PersonaRecord, res.records)


@task(name="scenes", cache_policy=NO_CACHE)
async def scenes_task(ctx: BuildContext, shard: int) -> None:
    out = ctx.part("scenes", shard)
    if _done(out):
        return
    seeds = read_records(ctx.part("seeds", shard), SeedRow)
    personas = read_records(ctx.part("personas", shard), PersonaRecord)
    res = await _timed(
        ctx, "scenes",
        generate_scenes(seeds, personas, ctx.llm, ctx.catalogue, revisit_share=ctx.config.revisit_share,
                        progress=progress_sink.advancer("scenes")),
    )  # fmt: skip
    write_records(out, Scene, res.records)


@task(name="queries", cache_policy=NO_CACHE)
async def queries_task(ctx: BuildContext, shard: int) -> None:
    out, rej = ctx.part("queries", shard), ctx.part("rejections", shard, "queries-")
    if _done(out, rej):
        return
    scenes = read_records(ctx.part("scenes", shard), Scene)
    personas = read_records(ctx.part("personas", shard), PersonaRecord)
    res = await _timed(ctx, "queries", generate_queries(scenes, personas, ctx.llm, progress_sink.advancer("queries")))
    write_records(rej, Rejection, res.rejections)  # rejections first: `out` existing means the shard is done
    write_records(out, Query, res.records)


@task(name="screen", cache_policy=NO_CACHE)
async def screen_task(ctx: BuildContext, shard: int) -> None:
    """Stage 5 on one shard, as soon as its queries exist: the LLM checks overlap other shards' work."""
    out, rej = ctx.part("screened", shard), ctx.part("rejections", shard, "screen-")
    if _done(out, rej):
        return
    queries = read_records(ctx.part("queries", shard), Query)
    scenes = read_records(ctx.part("scenes", shard), Scene)
    personas = read_records(ctx.part("personas", shard), PersonaRecord)
    cfg = ctx.config
    res = await _timed(
        ctx, "filter",
        filter_stage.screen(queries, scenes, personas, ctx.llm, levels=cfg.dedup, config=cfg.filter,
                            answerable=cfg.answerability, quality_min=cfg.quality_min, progress=progress_sink.advancer("filter")),
    )  # fmt: skip
    write_records(rej, Rejection, res.rejections)
    write_records(out, Query, res.records)


@task(name="filter", cache_policy=NO_CACHE)
async def filter_task(ctx: BuildContext, n_shards: int) -> None:
    """Stage 5 across shards (duplicates cross them), then the dataset table is joined."""
    out, rej = ctx.part("dataset", 0), ctx.part("rejections", 0, "filter-")
    if _done(out, rej):
        return
    queries = [q for s in range(n_shards) for q in read_records(ctx.part("screened", s), Query)]
    scenes = [x for s in range(n_shards) for x in read_records(ctx.part("scenes", s), Scene)]
    personas = [p for s in range(n_shards) for p in read_records(ctx.part("personas", s), PersonaRecord)]
    started = time.perf_counter()
    kept = filter_stage.dedup_all(queries, scenes, personas, ctx.config.dedup, ctx.config.filter)
    ctx.stage_seconds["filter"] += time.perf_counter() - started
    write_records(rej, Rejection, kept.rejections)
    write_records(out, DatasetRow, join_dataset(kept.records, scenes, personas))


def join_dataset(queries: list[Query], scenes: list[Scene], personas: list[PersonaRecord]) -> list[DatasetRow]:
    """The rows users load: one per kept query, with its scene and persona, in persona/session order."""
    scene_of = {s.scene_id: s for s in scenes}
    persona_of = {p.persona_id: p for p in personas}
    rows = []
    for q in sorted(queries, key=lambda q: (q.persona_id, q.session_index)):
        s, p = scene_of[q.scene_id], persona_of[q.persona_id]
        rows.append(
            DatasetRow(
                persona_id=q.persona_id, session_index=q.session_index, timestamp=s.timestamp,
                scene_id=s.scene_id, query_id=q.query_id, kind=s.kind, title=s.title,
                description=s.description, expected_response=s.expected_response, context=s.context,
                apis=s.apis, revisits=s.revisits, personalized_query=q.personalized_query,
                neutralized_query=q.neutralized_query, revealed_fields=list(q.revealed_fields),
                persona=p.persona, active_changes=active_changes(p.persona, q.session_index),
                fallback_fields=sorted({*s.fallback_fields, *q.fallback_fields, *(f"persona.{f}" for f in p.fallback_fields)}),
            )
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------- publishing


def stage_counts(staging: Path, config: BuildConfig, by_stage: Counter[str]) -> dict[str, StageCount]:
    """Rows in and out per stage, read back from what was written (the manifest reconciles)."""
    tables = {t: read_table(staging / t, columns=["fallback_fields"]) for t in ("seeds", "personas", "scenes", "queries", "dataset")}
    n = {t: tbl.num_rows for t, tbl in tables.items()}
    fb = {t: sum(1 for f in tbl.column("fallback_fields").to_pylist() if f) for t, tbl in tables.items()}
    return {
        "seed": StageCount(rows_in=config.personas, rows_out=n["seeds"], fallback_rows=fb["seeds"]),
        "personas": StageCount(rows_in=n["seeds"], rows_out=n["personas"], fallback_rows=fb["personas"]),
        "scenes": StageCount(rows_in=n["personas"] * config.scenes_per_persona, rows_out=n["scenes"], fallback_rows=fb["scenes"]),
        "queries": StageCount(rows_in=n["scenes"], rows_out=n["queries"], rejected=by_stage["queries"], fallback_rows=fb["queries"]),
        "filter": StageCount(rows_in=n["queries"], rows_out=n["dataset"], rejected=by_stage["filter"], fallback_rows=fb["dataset"]),
    }


def publish(ctx: BuildContext, endpoint: Endpoint) -> str:
    staging, store = ctx.staging, ctx.store
    shutil.rmtree(staging / "screened", ignore_errors=True)  # an intermediate: `dataset/` holds the result
    rejections = read_table(staging / "rejections", Rejection, columns=["stage", "reason"])
    reasons = Counter(rejections.column("reason").to_pylist())
    counts = stage_counts(staging, ctx.config, Counter(rejections.column("stage").to_pylist()))
    with store.lock():
        version, parent = store.next_version()
        config = ctx.config.model_copy(update={"llm": endpoint.config})
        manifest = Manifest(
            dataset=ctx.config.dataset,
            version=version,
            parent=parent,
            created_at=datetime.now(UTC),
            code_version=code_version(),
            model=endpoint.config.model,
            endpoint="embedded" if endpoint.embedded else endpoint_label(endpoint.base_url),
            seed=ctx.config.seed,
            config=config,
            prompt_hashes=ctx.llm.prompts.hashes,
            counts=counts,
            usage={s: ctx.llm.usage[s] for s in STAGES},
            rejection_reasons=dict(sorted(reasons.items())),
            stage_seconds={s: round(ctx.stage_seconds[s], 3) for s in STAGES},
            timings={k: round(v, 3) for k, v in ctx.timings.items()},
            shards=shard_infos(staging),
        )
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        (staging / "README.md").write_text(dataset_card(manifest))
        store.publish(staging, version)
    return version


# ---------------------------------------------------------------- the flow


def _run_name() -> str:
    from prefect.runtime import flow_run

    cfg = flow_run.parameters.get("config")
    name = cfg.dataset if isinstance(cfg, BuildConfig) else (cfg or {}).get("dataset", "personas")
    return f"build-{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@flow(name="build_dataset", flow_run_name=_run_name, validate_parameters=True)
async def build_dataset(
    config: BuildConfig, out: str = "output", cache_dir: str | None = None, seeds_dir: str | None = None,
    runner: Literal["local", "dask", "ray"] = "local",
) -> str:  # fmt: skip
    """Build a new version of `config.dataset` under `out`; returns the version name (e.g. v0003).

    runner="local" runs the shards as concurrent tasks in this process, sharing one LLM client and its
    limits; "dask"/"ray" submit one task per shard to the flow's task runner (set it with
    `build_dataset.with_options(task_runner=...)`), each with its own client: limits apply per shard task.
    """
    logger = get_run_logger()
    entered = time.perf_counter()
    paths = RunPaths(out=Path(out), cache_dir=Path(cache_dir) if cache_dir else None)
    catalogue = load_catalogue(Path(seeds_dir)) if seeds_dir else load_catalogue()
    with open_endpoint(config.llm) as endpoint:
        prompts = PromptLibrary(prompt_set=endpoint.config.prompt_set)
        llm = LLM(endpoint.config, base_url=endpoint.base_url, api_key=endpoint.api_key,
                  cache=ResponseCache(paths.cache), prompts=prompts)  # fmt: skip
        store = DatasetStore(paths.out, config.dataset)
        staging = store.staging(run_key(config.model_copy(update={"llm": endpoint.config}), catalogue, prompts))
        with store.claim(staging):
            ctx = BuildContext(config, catalogue, llm, store, staging)
            ctx.timings["endpoint_start"] = time.perf_counter() - entered
            logger.info("building %s with %s into %s", config.dataset, endpoint, staging)
            if runner == "local":
                await _generate(ctx)
            else:
                await _generate_remote(ctx, endpoint, str(paths.cache), seeds_dir)
            version = publish(ctx, endpoint)
    await publish_artifacts(store, version)
    logger.info("published %s/%s", config.dataset, version)
    return version


async def publish_artifacts(store: DatasetStore, version: str) -> None:
    """The version's card and per-stage table in Prefect's UI, keyed by dataset (artifact history = versions)."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    m = store.manifest(version)
    key = re.sub(r"[^a-z0-9-]", "-", f"personaloom-{m.dataset}".lower())
    card = (store.resolve(version) / "README.md").read_text().split("---", 2)[-1]
    await acreate_markdown_artifact(key=key, markdown=card, description=f"{m.dataset}@{version}")
    rows = [
        {"stage": s, "rows_in": c.rows_in, "rows_out": c.rows_out, "rejected": c.rejected, "fallback_rows": c.fallback_rows,
         "llm_calls": m.usage[s].calls, "cache_hits": m.usage[s].cache_hits, "cost_usd": round(m.usage[s].cost_usd, 6),
         "tokens": m.usage[s].prompt_tokens + m.usage[s].completion_tokens, "stage_seconds": m.stage_seconds.get(s, 0.0)}
        for s, c in m.counts.items()
    ]  # fmt: skip
    await acreate_table_artifact(key=f"{key}-stages", table=rows, description=f"{m.dataset}@{version} per stage")


async def _generate(ctx: BuildContext) -> None:
    """Stages 1–5 into the staging folder (finished shards are skipped: a re-run resumes)."""
    config, llm = ctx.config, ctx.llm
    progress_sink.usage = lambda: dict(llm.usage)
    progress_sink.plan(config.personas, config.scenes_per_persona)
    n_shards = ctx.n_shards
    started = time.perf_counter()
    try:
        await asyncio.gather(*(_shard_chain(ctx, s) for s in range(n_shards)))
        await filter_task(quote(ctx), n_shards)
    finally:
        await llm.aclose()
    ctx.timings["generate"] = time.perf_counter() - started


async def _shard_chain(ctx: BuildContext, shard: int) -> None:
    """Stages 1–4 of one shard in order; shards run concurrently and share the LLM's limits."""
    q = quote(ctx)
    await seed_task(q, shard)
    await personas_task(q, shard)
    await scenes_task(q, shard)
    await queries_task(q, shard)
    await screen_task(q, shard)


@dataclass(frozen=True)
class ShardJob:
    """What a remote worker needs to run one shard alone: picklable, and without the API key."""

    config_json: str
    base_url: str
    cache: str
    staging: str
    seeds_dir: str | None
    shard: int


@task(name="shard", cache_policy=NO_CACHE)
async def remote_shard_task(job: ShardJob) -> dict[str, dict[str, float]]:
    """Stages 1–4 and the shard screen of one shard on a Dask/Ray worker; returns its LLM usage."""
    # Resolved on the worker: Dask pickles this function by value, and a reference to this module's
    # globals (the progress sink's lock, the other tasks) would not pickle.
    from flows.build import run_shard

    return await run_shard(job)


async def run_shard(job: ShardJob) -> dict[str, dict[str, float]]:
    config = BuildConfig.model_validate_json(job.config_json)
    catalogue = load_catalogue(Path(job.seeds_dir)) if job.seeds_dir else load_catalogue()
    llm = LLM(config.llm, base_url=job.base_url, api_key=api_key_from_env() or NO_KEY, cache=ResponseCache(Path(job.cache)),
              prompts=PromptLibrary(prompt_set=config.llm.prompt_set))  # fmt: skip
    staging = Path(job.staging)  # OUT/<dataset>/.staging/<key>
    ctx = BuildContext(config, catalogue, llm, DatasetStore(staging.parents[2], config.dataset), staging)
    try:
        for stage in (seed_task, personas_task, scenes_task, queries_task, screen_task):
            await stage.fn(ctx, job.shard)  # plain calls: one remote task per shard, not one per stage
    finally:
        await llm.aclose()
    return {stage: u.model_dump() for stage, u in llm.usage.items()}


async def _generate_remote(ctx: BuildContext, endpoint: Endpoint, cache: str, seeds_dir: str | None) -> None:
    config = ctx.config.model_copy(update={"llm": endpoint.config})
    n_shards = ctx.n_shards
    started = time.perf_counter()
    futures = [
        remote_shard_task.submit(ShardJob(config.model_dump_json(), endpoint.base_url, cache, str(ctx.staging), seeds_dir, s))
        for s in range(n_shards)
    ]
    for usage in await asyncio.gather(*(asyncio.to_thread(f.result) for f in futures)):
        for stage, u in usage.items():
            total = ctx.llm.usage[stage]
            for key, value in u.items():
                setattr(total, key, getattr(total, key) + value)
    try:
        await filter_task(quote(ctx), n_shards)
    finally:
        await ctx.llm.aclose()
    ctx.timings["generate"] = time.perf_counter() - started
