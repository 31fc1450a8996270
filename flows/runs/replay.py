"""Prefect flow `replay_dataset`: a dataset version through the reference agents, results beside it.

Output: output/<dataset>/runs/v<NNNN>/replay/<run>/<table>/part-<shard>.parquet for the tables in TABLES
(beside the version, which stays as published: personaloom.runs.derived), summary.md (also a Prefect
markdown artifact) and manifest.json (its usage counts the calls of the invocation that finished the run;
per-session tokens are in `sessions`). One Prefect task per shard of personas runs every agent for those
personas; a shard whose last part exists is skipped, so a re-run of the same command resumes, and the
response cache answers every LLM call that had completed.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from personaloom.agent.agents import agent_calls, describe
from personaloom.agent.calls import role_settings, usage_by
from personaloom.agent.loop import ReplayOutputs, judge_pairs, replay_user
from personaloom.agent.memory import Embedder, EndpointEmbedder, HashingEmbedder
from personaloom.agent.metrics import summarize, summarize_pairs, summary_markdown
from personaloom.dataset.store import read_records, shard_infos
from personaloom.dataset.version import Version, open_version
from personaloom.errors import UserError
from personaloom.llm.client import LLM
from personaloom.runs.derived import DerivedRun
from personaloom.runtime.run import LLM_NOT_IDENTITY, Run, flow_run_namer, open_run
from personaloom.schemas.records import DatasetRow
from personaloom.schemas.replay import (
    MemoryCardRow,
    MetricRow,
    PairwiseRow,
    ReplayConfig,
    ReplayManifest,
    SessionRow,
    SnapshotRow,
    TurnRow,
)
from personaloom.version import code_version

# Written in this order; `metrics` last, so its part existing means the shard is complete.
TABLES = {
    "sessions": SessionRow,
    "turns": TurnRow,
    "snapshots": SnapshotRow,
    "memory_cards": MemoryCardRow,
    "pairwise": PairwiseRow,
    "metrics": MetricRow,
}
# Settings that change throughput, not results: left out of a run's identity so they can change on resume.
NOT_IDENTITY = {"run": True, "shard_size": True, "llm": LLM_NOT_IDENTITY}


@dataclass
class ReplayContext:
    config: ReplayConfig  # effective (the run's)
    llm: LLM
    users: dict[str, list[DatasetRow]]  # persona_id → rows, in replay order of personas
    derived: DerivedRun
    embedder: Embedder

    @property
    def run_dir(self) -> Path:
        return self.derived.folder

    def shard_users(self, shard: int) -> list[str]:
        size = self.config.shard_size
        return list(self.users)[shard * size : (shard + 1) * size]


def load_users(version: Version, limit: int | None) -> dict[str, list[DatasetRow]]:
    """persona_id → its rows in session order; the first `limit` personas by id."""
    users: dict[str, list[DatasetRow]] = defaultdict(list)
    for row in version.records("dataset", DatasetRow):
        users[row.persona_id].append(row)
    if not users:
        raise UserError(f"{version.path} has no dataset rows to replay")
    ids = sorted(users)[:limit]
    return {pid: sorted(users[pid], key=lambda r: r.session_index) for pid in ids}


# ---------------------------------------------------------------- the shard task


@task(name="replay-shard", cache_policy=NO_CACHE)
async def replay_shard(ctx: ReplayContext, shard: int) -> None:
    async def work() -> dict[str, list[Any]]:
        agents = ctx.config.agent_names()
        jobs = [
            replay_user(ctx.users[pid], agent, ctx.llm, ctx.config, ctx.embedder)
            for pid in ctx.shard_users(shard)
            for agent in agents
        ]
        merged = ReplayOutputs()
        for result in await asyncio.gather(*jobs):
            merged.extend(result)
        pairs = ctx.config.pairwise_pairs() if ctx.config.judge else []
        if pairs:  # both agents' answers to the same sessions exist once the shard's replays are done
            users = {pid: ctx.users[pid] for pid in ctx.shard_users(shard)}
            merged.pairwise = await judge_pairs(merged.sessions, users, pairs, ctx.llm)
        return {table: getattr(merged, table) for table in TABLES}

    await ctx.derived.run_shard(shard, work)


# ---------------------------------------------------------------- publishing


def publish_run(
    ctx: ReplayContext, run: Run[ReplayConfig], version: str, seconds: float
) -> tuple[ReplayManifest, str]:
    cfg, agents = ctx.config, ctx.config.agent_names()
    metrics = read_records(ctx.run_dir / "metrics", MetricRow)
    summary = summarize(metrics, agents)
    pairs = summarize_pairs(read_records(ctx.run_dir / "pairwise", PairwiseRow), cfg.pairwise_pairs())
    title = f"Replay {cfg.dataset}@{version} — run {ctx.run_dir.name}"
    markdown = summary_markdown(title, summary, pairs, cfg.judge_mode)
    hashes = ctx.llm.prompts.hashes
    manifest = ReplayManifest(
        dataset=cfg.dataset,
        version=version,
        run=ctx.run_dir.name,
        created_at=datetime.now(UTC),
        code_version=code_version(),
        model=cfg.llm.model,
        endpoint=run.endpoint_label,
        config=cfg,
        roles=role_settings(agent_calls(), cfg.llm),
        agents=agents,
        personas=len(ctx.users),
        sessions=len(metrics),
        prompt_hashes={k: v for k, v in hashes.items() if k.startswith("agent/")},
        usage_by_role=usage_by(ctx.llm.usage, 0),
        usage_by_agent=usage_by(ctx.llm.usage, 1),
        seconds=round(seconds, 3),
        summary=summary,
        pairwise=pairs,
        agent_settings={name: describe(name, cfg, hashes) for name in agents},
        shards=shard_infos(ctx.run_dir),
    )
    ctx.derived.finish(manifest, markdown)
    return manifest, markdown


# ---------------------------------------------------------------- the flow


@flow(name="replay_dataset", flow_run_name=flow_run_namer("replay"), validate_parameters=True)
async def replay_dataset(
    config: ReplayConfig, out: str = "output", cache_dir: str | None = None, checked: bool = False
) -> str:
    """Replay `config.dataset`@`config.version` through `config.agents`; returns the run folder.
    `checked`: the caller ran the endpoint's pre-flight (`check_endpoint`), it is not asked again."""
    logger = get_run_logger()
    started = time.perf_counter()
    version = open_version(out, config.dataset, config.version)
    version_dir = version.path
    users = load_users(version, config.personas)
    cache = Path(cache_dir) if cache_dir else Path(out) / ".cache"
    async with open_run(
        config,
        calls=agent_calls(),
        cache=cache,
        exclude=NOT_IDENTITY,
        identity={"version": str(version_dir.resolve())},
        preflight=not checked,
    ) as run:
        name = config.run or f"r-{run.key}"
        derived = DerivedRun.claim(version, "replay", name, run.key, TABLES)
        run_dir = derived.folder
        if derived.complete:  # its manifest is written last, and a complete run is never rewritten
            logger.info("replay %s is already complete", run_dir)
            return str(run_dir)
        embedder: Embedder = HashingEmbedder()
        if config.embedding_model:  # the endpoint's /embeddings API; its dimension from a first call
            embedder = EndpointEmbedder(run.llm, config.embedding_model)
            await embedder.prepare()
        ctx = ReplayContext(run.config, run.llm, users, derived, embedder)
        logger.info(
            "replaying %s (%d personas, agents %s) with %s into %s",
            version_dir,
            len(users),
            config.agent_names(),
            run.endpoint,
            run_dir,
        )
        n_shards = -(-len(users) // config.shard_size)
        await asyncio.gather(*(replay_shard(quote(ctx), s) for s in range(n_shards)))
        manifest, markdown = publish_run(ctx, run, version_dir.name, time.perf_counter() - started)
    await derived.artifact(markdown, "replay summary")
    logger.info("replay %s: %d sessions → %s", manifest.run, manifest.sessions, run_dir)
    return str(run_dir)
