"""Scheduled builds: a cron deployment whose runs (executed as a worker would) make growing versions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from personaloom.schedule import deployment
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.store import DatasetStore
from personaloom.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parent.parent


def test_scheduled_runs_with_grow_make_growing_versions(out: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    with FakeOpenAI() as fake:
        cfg = BuildConfig(
            dataset="nightly",
            personas=2,
            scenes_per_persona=2,
            llm=LLMConfig(model="m", base_url=fake.base_url),
        )
        dep = deployment(cfg, out, "0 3 * * *", "nightly-test", grow=2)
        dep_id = dep.apply()

        async def schedule() -> list:
            async with get_client() as client:
                d = await client.read_deployment(dep_id)
                return [s.schedule.cron for s in d.schedules]

        assert asyncio.run(schedule()) == ["0 3 * * *"]
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        for _ in range(2):
            run = run_deployment(name="build_dataset/nightly-test", timeout=0)
            done = subprocess.run(
                [sys.executable, "-m", "prefect", "flow-run", "execute", str(run.id)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-3000:]
    store = DatasetStore(out, "nightly")
    assert store.versions() == ["v0001", "v0002"]
    first, second = store.manifest("v0001"), store.manifest("v0002")
    assert first.config.personas == 2 and first.parent is None  # the first run grows from nothing
    assert second.parent == "v0001" and second.mode == "grow" and second.config.personas == 4
    assert second.built is not None and (second.built.first, second.built.end) == (2, 4)
    seeds = pl.read_parquet(store.resolve("v0002") / "seeds" / "*.parquet")
    assert sorted(seeds["index"]) == [0, 1, 2, 3]
    assert {s.path for s in second.shards if s.inherited_from == "v0001"} == {s.path for s in first.shards}
