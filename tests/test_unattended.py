"""Builds that run unattended: kill -9 and resume, injected faults, budgets, integrity, bad seed tables."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from prefect.client.schemas.objects import StateType
from prefect.task_runners import TaskRunner

from personaloom.dataset.store import DatasetStore
from personaloom.dataset.verify import verify_version
from personaloom.errors import UserError
from personaloom.llm.budget import BudgetExceeded
from personaloom.paths import SEEDS_DIR
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.testing.cli import assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")


def cfg(fake: FakeOpenAI, **kw) -> BuildConfig:
    llm = {"model": "fake-model", "base_url": fake.base_url, "concurrency": 8, **kw.pop("llm", {})}
    return BuildConfig(
        **{
            "dataset": "u",
            "personas": 4,
            "scenes_per_persona": 3,
            "shard_size": 2,
            "llm": LLMConfig(**llm),
            **kw,
        }
    )


def build(config: BuildConfig, out: Path) -> str:
    return asyncio.run(build_dataset(config, out=str(out)))


def chat_calls(fake: FakeOpenAI) -> int:
    return fake.stats.by_path.get("/v1/chat/completions", 0)


def test_faults_are_absorbed_and_the_manifest_reconciles(out: Path) -> None:
    with FakeOpenAI(fault_rate=0.1, retry_after=0.01, hang_seconds=3, seed=3) as fake:
        version = build(cfg(fake, personas=6, llm={"timeout": 1.0, "max_retries": 8}), out)
        assert sum(fake.stats.by_fault.values()) > 5  # faults really happened
    root = out / "u" / version
    m = json.loads((root / "manifest.json").read_text())
    c = m["counts"]
    assert c["personas"]["rows_out"] == 6 and c["scenes"]["rows_out"] == 18
    assert c["queries"]["rows_in"] == c["queries"]["rows_out"] + c["queries"]["rejected"] == 18
    assert c["filter"]["rows_in"] == c["filter"]["rows_out"] + c["filter"]["rejected"]
    rejected = pl.read_parquet(root / "rejections" / "*.parquet")
    dataset = pl.read_parquet(root / "dataset" / "*.parquet")
    assert (rejected["stage"] == "probes").sum() == c["probes"]["rejected"]
    rejected = rejected.filter(pl.col("stage") != "probes")  # probes reject items, not queries
    requested = {f"p{p:06d}-s{s:03d}-q0" for p in range(6) for s in range(3)}
    assert (
        set(dataset["query_id"]) | set(rejected["row_id"].str.replace(r"^(p\d+-s\d+)$", "${1}-q0"))
        == requested
    )
    assert rejected["reason"].null_count() == 0 and rejected["raw_output"].null_count() == 0
    assert sum(u["retries"] for u in m["usage"].values()) > 0


def test_budget_stops_cleanly_and_a_higher_budget_continues(out: Path) -> None:
    with FakeOpenAI() as fake:
        with pytest.raises(BudgetExceeded, match="token budget reached"):
            build(cfg(fake, llm={"max_tokens": 3000, "concurrency": 2}), out)
        first = chat_calls(fake)
        assert not (out / "u" / "v0001").exists()  # no half-written version
        build(cfg(fake, llm={"max_tokens": 10_000_000, "concurrency": 2}), out)
        second = chat_calls(fake) - first
    with FakeOpenAI() as fake:
        build(cfg(fake, llm={"concurrency": 2}), out / "fresh")
        fresh = chat_calls(fake)
    assert first > 0 and second > 0
    assert (
        first + second <= fresh + 2
    )  # what the first run finished was not asked again (2 = calls in flight)


def test_cost_budget_needs_a_price() -> None:
    from personaloom.llm.budget import Budget

    with pytest.raises(UserError, match=r"no price for model 'mystery'"):
        Budget.for_model("mystery", None, 1.0, {})
    b = Budget.for_model("mystery", None, 1.0, {"mystery": (1.0, 2.0)})
    b.spend(500_000, 250_000)
    assert b.cost == pytest.approx(1.0)
    with pytest.raises(BudgetExceeded, match="cost budget reached"):
        b.check()


def test_verify_finds_tampering(out: Path) -> None:
    with FakeOpenAI() as fake:
        build(cfg(fake), out)
    store = DatasetStore(out, "u")
    folder = store.resolve(None)
    assert verify_version(folder, store.manifest()) == []
    ok = run("verify", "u", "--out", str(out))
    assert ok.returncode == 0 and "intact" in ok.stdout
    shard = next((folder / "personas").glob("part-*.parquet"))
    pl.read_parquet(shard).head(1).write_parquet(shard)
    (folder / "scenes" / "part-09999.parquet").write_bytes(b"x")
    problems = verify_version(folder, store.manifest())
    assert any("checksum differs" in p for p in problems) and any(
        "not in the manifest" in p for p in problems
    )
    bad = run("verify", "u", "--out", str(out))
    assert bad.returncode == 1 and "checksum differs" in bad.stderr and "Traceback" not in bad.stderr


def test_identical_builds_cannot_run_at_once(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path, "u")
    staging = store.staging("abc")
    with store.claim(staging):
        with pytest.raises(UserError, match="identical build"):
            with store.claim(staging):
                pass
    with store.claim(staging):  # released: the re-run may go on
        pass


def test_two_builds_at_once_get_distinct_versions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    with FakeOpenAI(latency=0.01) as fake:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "personaloom",
                    "build",
                    "--dataset",
                    "c",
                    "--personas",
                    "2",
                    "--scenes-per-persona",
                    "2",
                    "--seed",
                    str(seed),
                    "--base-url",
                    fake.base_url,
                    "--out",
                    str(out),
                    "--no-progress",
                ],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2)
        ]
        results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    store = DatasetStore(out, "c")
    assert store.versions() == ["v0001", "v0002"]
    assert {store.manifest(v).seed for v in store.versions()} == {1, 2}
    assert {store.manifest(v).parent for v in store.versions()} == {None, "v0001"}


def test_kill_9_mid_build_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("OPENAI_BASE_URL", None)
    args = [
        "build",
        "--dataset",
        "k",
        "--personas",
        "6",
        "--scenes-per-persona",
        "4",
        "--shard-size",
        "2",
        "--concurrency",
        "4",
        "--out",
        str(out),
        "--no-progress",
    ]
    from personaloom.llm.local import free_port

    port = free_port()
    with FakeOpenAI(port=port, latency=0.05) as fake:
        proc = subprocess.Popen(
            [sys.executable, "-m", "personaloom", *args, "--base-url", fake.base_url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while chat_calls(fake) < 60 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stage: no cleanup of any kind runs
        proc.wait()
        killed_at = chat_calls(fake)
    assert 60 <= killed_at and not (out / "k" / "v0001").exists()
    with FakeOpenAI(port=port, latency=0.05) as fake:
        res = run(*args, "--base-url", fake.base_url, env={"PREFECT_HOME": env["PREFECT_HOME"]})
        resumed = chat_calls(fake)
    assert res.returncode == 0, res.stderr[-2000:]
    with FakeOpenAI(latency=0.0) as fake:
        fresh_out = tmp_path / "fresh"
        res2 = run(
            *[a if a != str(out) else str(fresh_out) for a in args],
            "--base-url",
            fake.base_url,
            env={"PREFECT_HOME": env["PREFECT_HOME"]},
        )
        fresh = chat_calls(fake)
    assert res2.returncode == 0
    # only the calls that had not completed were made again (a few were in flight at the kill)
    assert resumed < fresh and killed_at + resumed <= fresh + 4 + 4
    a = pl.read_parquet(out / "k" / "v0001" / "dataset" / "*.parquet")
    assert a.equals(pl.read_parquet(fresh_out / "k" / "v0001" / "dataset" / "*.parquet"))


def test_seed_table_missing_a_column(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    shutil.copytree(SEEDS_DIR, seeds)
    occ = pl.read_csv(seeds / "occupations.csv").drop("sector")
    occ.write_csv(seeds / "occupations.csv")
    res = run(
        "build", "--seeds", str(seeds), "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(res, "occupations.csv", "sector")
    assert not (tmp_path / "o").exists()


def build_remote_equals_local(out: Path, runner: Literal["dask", "ray"], task_runner: TaskRunner) -> None:
    """Build with the local runner, then with `task_runner`: the same rows, usage and seconds reported back.

    The shard tasks ran as task runs of the flow run, on the server the flow talks to.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with FakeOpenAI() as fake:
        c = cfg(fake, personas=4, shard_size=2)
        build(c, out / "local")
        remote = build_dataset.with_options(task_runner=task_runner)
        state = asyncio.run(remote(c, out=str(out / runner), runner=runner, return_state=True))
        assert state.result() == "v0001"
    local = pl.read_parquet(out / "local" / "u" / "v0001" / "dataset" / "*.parquet")
    rows = pl.read_parquet(out / runner / "u" / "v0001" / "dataset" / "*.parquet")
    assert len(local) > 0 and local.equals(rows)
    m = DatasetStore(out / runner, "u").manifest()
    assert m.usage["personas"].calls >= 4 and m.counts["scenes"].rows_out == 12
    # the shard tasks report their stages' seconds back, as the local runner's tasks do
    assert all(m.stage_seconds[s] > 0 for s in ("seed", "personas", "scenes", "queries", "filter")), (
        m.stage_seconds
    )
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    shard_states = [t.state_type for t in tasks if t.name.startswith("shard-")]
    assert shard_states == [StateType.COMPLETED] * 2, [(t.name, t.state_type) for t in tasks]


def test_dask_runner_output_equals_local(out: Path) -> None:
    from prefect_dask import DaskTaskRunner

    cluster = {"n_workers": 2, "processes": True, "threads_per_worker": 1}
    build_remote_equals_local(out, "dask", DaskTaskRunner(cluster_kwargs=cluster))


def test_dask_and_ray_tasks_get_the_address_of_the_flows_server() -> None:
    """Without PREFECT_API_URL the flow talks to a temporary server; tasks sent to workers get its address."""
    from prefect import flow
    from prefect.context import serialize_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from personaloom.pipeline.flow import _workers_use_this_server

    @flow
    def submit_side() -> tuple[str | None, str | None]:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):  # as in a shell without it
            alone = serialize_context()["settings_context"]["settings"]
            with _workers_use_this_server():
                sent = serialize_context()["settings_context"]["settings"]  # what Dask and Ray submit
        return alone["api"]["url"], sent["api"]["url"]

    assert submit_side() == (None, PREFECT_API_URL.value())


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local Ray instance of 2 CPUs: offline, quiet, its files in a temporary folder, always shut down."""
    import ray

    # ray.init turns token auth on for a new cluster when RAY_AUTH_MODE is unset; with the token given
    # here it writes none to ~/.ray/auth_token. (Setting the mode here fails: Ray read it when imported.)
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # ray.init turns it off itself, but not on nightlies
    # Ray's Unix sockets live under its temp folder, and a socket path holds at most 107 bytes:
    # pytest's tmp_path is too deep for them, and the default /tmp/ray is left behind
    temp = tempfile.mkdtemp(prefix="ray-")
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _temp_dir=temp)
        yield
    finally:
        ray.shutdown()
        os.environ.pop("RAY_AUTH_MODE", None)  # ray.init set it for this process
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.usefixtures("local_ray")
def test_ray_runner_output_equals_local(out: Path) -> None:
    from prefect_ray import RayTaskRunner

    build_remote_equals_local(out, "ray", RayTaskRunner())  # it uses the running instance
