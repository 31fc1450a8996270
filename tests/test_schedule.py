"""Scheduled builds: a cron deployment whose runs (executed as a worker would) make growing versions."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from personaloom.dataset.store import DatasetStore
from personaloom.pipeline.schedule import deployment
from personaloom.runtime.served import RECORDS
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.testing.cli import EXE
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
            # its exit code is 0 whatever the flow run's state
            assert state_of(run.id) == StateType.COMPLETED, done.stderr[-3000:]
    store = DatasetStore(out, "nightly")
    assert store.versions() == ["v0001", "v0002"]
    first, second = store.manifest("v0001"), store.manifest("v0002")
    assert first.config.personas == 2 and first.parent is None  # the first run grows from nothing
    assert second.parent == "v0001" and second.mode == "grow" and second.config.personas == 4
    assert second.built is not None and (second.built.first, second.built.end) == (2, 4)
    seeds = pl.read_parquet(store.resolve("v0002") / "seeds" / "*.parquet")
    assert sorted(seeds["index"]) == [0, 1, 2, 3]
    assert {s.path for s in second.shards if s.inherited_from == "v0001"} == {s.path for s in first.shards}


def state_of(flow_run_id: Any) -> StateType:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state is not None
    return state.type


def test_a_served_deployment_runs_only_the_parameters_it_was_served_with(tmp_path: Path) -> None:
    """An API client's run with another endpoint and output folder reaches neither (issue 25)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out, elsewhere, log = tmp_path / "out", tmp_path / "elsewhere", tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # runs start within a second
    args = ["--cron", "0 3 * * *", "--name", "served-test", "--dataset", "served", "--personas", "1"]
    with FakeOpenAI() as fake, socket.socket() as trap, log.open("w") as err:
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)  # the kernel completes a connection even before accept(): any attempt shows
        trap.setblocking(False)
        args += ["--scenes-per-persona", "2", "--base-url", fake.base_url, "--out", str(out)]
        serve = subprocess.Popen([*EXE, "serve", *args], env=env, stdout=subprocess.DEVNULL, stderr=err)

        def alive() -> None:
            assert serve.poll() is None, log.read_text()[-3000:]

        async def run(params: Callable[[dict], dict]) -> tuple[StateType, list[str]]:
            async with get_client() as client:
                deadline = time.monotonic() + 120
                while True:  # the deployment exists once `serve` registered it
                    try:
                        dep = await client.read_deployment_by_name("build_dataset/served-test")
                        break
                    except ObjectNotFound:
                        alive()
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.5)
                fr = await client.create_flow_run_from_deployment(dep.id, parameters=params(dep.parameters))
                while not (fr := await client.read_flow_run(fr.id)).state.is_final():
                    alive()
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.5)
                while True:  # logs go in batches: the last may arrive after the final state
                    found = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
                    logs = [log.message for log in found]
                    done = fr.state.is_completed() or any("overrides" in m for m in logs)
                    if done or time.monotonic() > deadline:
                        return fr.state.type, logs
                    await asyncio.sleep(0.5)

        trap_url = f"http://127.0.0.1:{trap.getsockname()[1]}/v1"

        def attack(served: dict) -> dict:
            config = {**served["config"], "llm": {**served["config"]["llm"], "base_url": trap_url}}
            return {**served, "config": config, "out": str(elsewhere)}

        try:
            state, logs = asyncio.run(run(attack))
            with pytest.raises(BlockingIOError):
                trap.accept()  # nobody connected to the overridden endpoint
            assert state == StateType.FAILED and not elsewhere.exists() and chat_calls(fake) == 0
            refused = [m for m in logs if "overrides" in m]
            assert refused and "overrides config.llm.base_url, out:" in refused[0], logs
            assert not any(value in m for m in logs for value in (trap_url, str(elsewhere)))
            record = Path(os.environ["PREFECT_HOME"]) / RECORDS / "served-test.json"
            assert json.loads(record.read_text())["out"] == str(out)
            assert record.stat().st_mode & 0o777 == 0o600 and record.parent.stat().st_mode & 0o777 == 0o700

            state, logs = asyncio.run(run(lambda served: served))  # as scheduled: what `serve` was given
            assert state == StateType.COMPLETED, logs
        finally:
            serve.terminate()
            serve.wait(timeout=60)
    assert DatasetStore(out, "served").versions() == ["v0001"]


def chat_calls(fake: FakeOpenAI) -> int:
    return fake.stats.by_path.get("/v1/chat/completions", 0)


def test_a_deployment_without_a_record_runs_only_its_stored_parameters(tmp_path: Path) -> None:
    """A prefect.yaml deployment (no record by `serve`): a run is compared with the deployment's own."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from personaloom.pipeline.flow import build_dataset

    config = BuildConfig(dataset="yaml", personas=1, scenes_per_persona=2, llm=LLMConfig(model="m"))
    stored = {"config": config.model_dump(mode="json", exclude_defaults=True), "out": str(tmp_path / "o")}
    dep_id = build_dataset.to_deployment(name="yaml-test", parameters=stored).apply()

    async def create() -> Any:
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(dep_id, parameters={"grow": 5})

    run = asyncio.run(create())
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "execute", str(run.id)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    async def outcome() -> tuple[StateType, list[str]]:
        async with get_client() as client:
            fr = await client.read_flow_run(run.id)
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            return fr.state.type, [log.message for log in logs]

    state, logs = asyncio.run(outcome())
    assert state == StateType.FAILED and done.returncode == 0, (done.stderr[-3000:], logs)
    assert any("overrides grow:" in m for m in logs), logs
    assert not (tmp_path / "o").exists()
