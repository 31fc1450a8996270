"""Prefect flow `build_dataset`: the declared stages over shards, into a new dataset version.

One generic task runs any stage on a shard (personaloom.pipeline.run_stage): it reads the stage's
inputs from the staging folder and writes its outputs there atomically, so a re-run of the same build
skips finished shards, and the response cache answers every LLM call that had completed. The version
is published by one rename.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from personaloom.audit import audit, broken
from personaloom.card import dataset_card
from personaloom.errors import UserError
from personaloom.llm.endpoint import NO_KEY, Endpoint, api_key_from_env
from personaloom.pipeline import (
    BY_NAME,
    DATASET_STAGES,
    INTERMEDIATE,
    PUBLISHED,
    REPORTED,
    SHARD_STAGES,
    TABLE_MODELS,
    build_calls,
    n_shards,
    part,
    planned_rows,
    run_shard_stages,
    run_stage,
    stage_counts,
)
from personaloom.progress import progress_sink
from personaloom.run import Run, open_run
from personaloom.schemas.config import BuildConfig, RunPaths
from personaloom.schemas.manifest import Manifest, StageUsage
from personaloom.schemas.records import Rejection
from personaloom.store import DatasetStore, read_table, shard_infos, write_records
from personaloom.version import code_version


@task(name="stage", task_run_name="{stage}-{shard}", cache_policy=NO_CACHE)
async def stage_task(run: Run[BuildConfig], stage: str, shard: int) -> float:
    """Any declared stage on one shard; returns its seconds."""
    return await run_stage(run, BY_NAME[stage], shard)


# ---------------------------------------------------------------- publishing


def publish_version(run: Run[BuildConfig], store: DatasetStore, stage_seconds: Counter[str]) -> str:
    """Manifest and card into the staging folder, then one rename makes it the next version."""
    staging, config = run.staging, run.config
    for table in INTERMEDIATE:
        shutil.rmtree(staging / table, ignore_errors=True)
    for table in PUBLISHED:  # every table is published, even with zero rows (a schema-only part)
        if not list((staging / table).glob("part-*.parquet")):
            write_records(part(staging, table, 0), TABLE_MODELS[table], [])
    reasons = Counter(read_table(staging / "rejections", Rejection, columns=["reason"])["reason"].to_pylist())
    invariants = audit(staging, run.catalogue)
    if bad := broken(invariants):
        raise UserError(
            f"ground-truth invariant broken ({'; '.join(bad)}): a personaloom bug, nothing was published; "
            f"please report it with the staging folder {staging}"
        )
    with store.lock():
        version, parent = store.next_version()
        manifest = Manifest(
            dataset=config.dataset,
            version=version,
            parent=parent,
            created_at=datetime.now(UTC),
            code_version=code_version(),
            model=config.llm.model,
            endpoint=run.endpoint_label,
            seed=config.seed,
            config=config,
            prompt_hashes=run.llm.prompts.hashes,
            calls=run.call_manifest(),
            counts=stage_counts(staging, config),
            usage={s: run.llm.usage.get(s, StageUsage()) for s in REPORTED},
            rejection_reasons=dict(sorted(reasons.items())),
            invariants=invariants,
            stage_seconds={s: round(stage_seconds[s], 3) for s in REPORTED},
            timings={k: round(v, 3) for k, v in run.timings.items()},
            shards=shard_infos(staging),
        )
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        (staging / "README.md").write_text(dataset_card(manifest))
        store.publish(staging, version)
    return version


async def publish_artifacts(store: DatasetStore, version: str) -> None:
    """The version's card and per-stage table in Prefect's UI, keyed by dataset (history = versions)."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    m = store.manifest(version)
    key = re.sub(r"[^a-z0-9-]", "-", f"personaloom-{m.dataset}".lower())
    card = (store.resolve(version) / "README.md").read_text().split("---", 2)[-1]
    await acreate_markdown_artifact(key=key, markdown=card, description=f"{m.dataset}@{version}")
    await acreate_table_artifact(
        key=f"{key}-stages",
        table=[row.model_dump() for row in m.stage_report()],
        description=f"{m.dataset}@{version} per stage",
    )


# ---------------------------------------------------------------- the flow


def _run_name() -> str:
    from prefect.runtime import flow_run

    cfg = flow_run.parameters.get("config")
    name = cfg.dataset if isinstance(cfg, BuildConfig) else (cfg or {}).get("dataset", "personas")
    return f"build-{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@flow(name="build_dataset", flow_run_name=_run_name, validate_parameters=True)
async def build_dataset(
    config: BuildConfig,
    out: str = "output",
    cache_dir: str | None = None,
    seeds_dir: str | None = None,
    runner: Literal["local", "dask", "ray"] = "local",
) -> str:
    """Build a new version of `config.dataset` under `out`; returns the version name (e.g. v0003).

    runner="local" runs the shards as concurrent tasks in this process, sharing one LLM client and its
    limits; "dask"/"ray" submit one task per shard to the flow's task runner (set it with
    `build_dataset.with_options(task_runner=...)`), each with its own client: limits apply per shard task.
    """
    logger = get_run_logger()
    entered = time.perf_counter()
    paths = RunPaths(out=Path(out), cache_dir=Path(cache_dir) if cache_dir else None)
    seeds = Path(seeds_dir) if seeds_dir else None
    async with open_run(config, calls=build_calls(), cache=paths.cache, seeds_dir=seeds) as run:
        store = DatasetStore(paths.out, config.dataset)
        run.staging = store.staging(run.key)
        with store.claim(run.staging):
            run.timings["endpoint_start"] = time.perf_counter() - entered
            logger.info("building %s with %s into %s", config.dataset, run.endpoint, run.staging)
            started = time.perf_counter()
            if runner == "local":
                seconds = await _generate(run)
            else:
                seconds = await _generate_remote(run, str(paths.cache), seeds_dir)
            run.timings["generate"] = time.perf_counter() - started
            version = publish_version(run, store, seconds)
    await publish_artifacts(store, version)
    logger.info("published %s/%s", config.dataset, version)
    return version


async def _generate(run: Run[BuildConfig]) -> Counter[str]:
    """Every stage into the staging folder; shards run concurrently and share the LLM's limits."""
    llm = run.llm
    progress_sink.usage = lambda: dict(llm.usage)
    progress_sink.plan(planned_rows(run.config))
    seconds: Counter[str] = Counter()

    async def shard_chain(shard: int) -> None:
        for stage in SHARD_STAGES:
            seconds[stage.reports_as] += await stage_task(quote(run), stage.name, shard)

    await asyncio.gather(*(shard_chain(s) for s in range(n_shards(run.config))))
    await _dataset_stages(run, seconds)
    return seconds


async def _dataset_stages(run: Run[BuildConfig], seconds: Counter[str]) -> None:
    for stage in DATASET_STAGES:
        seconds[stage.reports_as] += await stage_task(quote(run), stage.name, 0)


# ---------------------------------------------------------------- remote runners (Dask, Ray)


@dataclass(frozen=True)
class ShardJob:
    """What a remote worker needs to run one shard alone: picklable, and without the API key."""

    config_json: str  # the effective config
    base_url: str
    embedded: bool
    cache: str
    staging: str
    seeds_dir: str | None
    shard: int


@dataclass(frozen=True)
class ShardReport:
    """What a shard task sends back: LLM usage and seconds, per stage."""

    usage: dict[str, dict[str, float]]
    seconds: dict[str, float]


@task(name="shard", cache_policy=NO_CACHE)
async def remote_shard_task(job: ShardJob) -> ShardReport:
    """Every shard stage of one shard on a Dask/Ray worker."""
    # Resolved on the worker: Dask pickles this function by value, and a reference to this module's
    # globals (the progress sink's lock, the other tasks) would not pickle.
    from personaloom.build import run_shard

    return await run_shard(job)


async def run_shard(job: ShardJob) -> ShardReport:
    config = BuildConfig.model_validate_json(job.config_json)
    # the key comes from the worker's own environment, never from a task parameter
    endpoint = Endpoint(job.base_url, api_key_from_env() or NO_KEY, config.llm, embedded=job.embedded)
    seeds = Path(job.seeds_dir) if job.seeds_dir else None
    async with open_run(
        config, calls=build_calls(), cache=Path(job.cache), seeds_dir=seeds, endpoint=endpoint
    ) as run:
        run.staging = Path(job.staging)
        seconds = await run_shard_stages(run, job.shard)
        usage = {stage: u.model_dump() for stage, u in run.llm.usage.items()}
    return ShardReport(usage=usage, seconds=dict(seconds))


async def _generate_remote(run: Run[BuildConfig], cache: str, seeds_dir: str | None) -> Counter[str]:
    ep = run.endpoint
    futures = [
        remote_shard_task.submit(
            ShardJob(
                run.config.model_dump_json(), ep.base_url, ep.embedded, cache, str(run.staging), seeds_dir, s
            )
        )
        for s in range(n_shards(run.config))
    ]
    seconds: Counter[str] = Counter()
    for report in await asyncio.gather(*(asyncio.to_thread(f.result) for f in futures)):
        seconds.update(report.seconds)
        for stage, u in report.usage.items():
            total = run.llm.usage[stage]
            for key, value in u.items():
                setattr(total, key, getattr(total, key) + value)
    await _dataset_stages(run, seconds)
    return seconds
