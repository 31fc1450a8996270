"""Build throughput against the fake OpenAI server (in its own process) at a fixed latency.

Reports, from one run (the last line: calls in flight while the shards generate and in each dataset-level
stage after them, to show where slots go idle):
  - client level: N structured calls through the LLM client (render, schema, HTTP, validate, cache write)
    as a ratio to the limit concurrency / latency, and client CPU milliseconds per call;
  - build level: a whole `build_dataset` flow run: calls/s while the stages generate, as a ratio to the
    same limit, and the fixed start-up + publish cost apart from it; that ratio split into the calls in
    flight (stage barriers) and the wall time of one call against the latency (CPU per call).
The whole command's CPU per call (a `personaloom build` process) is bench/client_cpu.py.

Reproduce:
    .venv/bin/python bench/throughput.py [--calls 3000] [--personas 100] [--latency 0.2] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from personaloom.runtime.prefect_env import apply_prefect_defaults
from personaloom.testing.fake_openai import spawn_fake

ROOT = Path(__file__).resolve().parent.parent

apply_prefect_defaults()


async def client_level(base_url: str, calls: int, concurrency: int, cache_dir: Path) -> tuple[float, float]:
    from personaloom.llm.cache import ResponseCache
    from personaloom.llm.client import LLM
    from personaloom.schemas.config import LLMConfig
    from personaloom.schemas.drafts import HintExpansion
    from personaloom.stages.catalogue import load_catalogue
    from personaloom.stages.seed import sample_skeletons

    seeds = sample_skeletons(load_catalogue(), range(calls), 123, n_sessions=2, n_changes=0)
    llm = LLM(
        LLMConfig(model="bench", concurrency=concurrency),
        base_url=base_url,
        api_key="sk-bench",
        cache=ResponseCache(cache_dir),
    )
    # warm the connection pool so the figure is the steady state
    await asyncio.gather(
        *(
            llm.structured("seed/expand_hint", HintExpansion, stage="warm", seed=s)
            for s in seeds[:concurrency]
        )
    )
    rest = seeds[concurrency:]
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(llm.structured("seed/expand_hint", HintExpansion, stage="bench", seed=s) for s in rest)
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await llm.aclose()
    return len(rest) / wall, cpu / len(rest) * 1000


def timed_requests() -> dict[str, Any]:
    """Count the build's HTTP requests and add up their wall time (SDK call to parsed reply).

    Their total time over the generate seconds is the mean number in flight; over their count, the wall
    time of one call. The ratio to the limit is then (in flight / concurrency) x (latency / call time):
    stage barriers lower the first factor, CPU per call (client and server) the second.
    """
    import openai

    seen: dict[str, Any] = {"requests": 0.0, "seconds": 0.0, "spans": []}
    post = openai.AsyncOpenAI.post

    async def timed(self: openai.AsyncOpenAI, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await post(self, *args, **kwargs)
        finally:
            ended = time.perf_counter()
            seen["requests"] += 1
            seen["seconds"] += ended - started
            seen["spans"].append((started, ended))

    openai.AsyncOpenAI.post = timed  # type: ignore[method-assign]
    return seen


def timed_stages() -> list[tuple[str, str, float, float]]:
    """(stage, scope, start, end) of every stage run of the build, from the flow's `run_stage`."""
    import personaloom.pipeline.flow as build

    spans: list[tuple[str, str, float, float]] = []
    run_stage = build.run_stage

    async def timed(run: Any, stage: Any, shard: int) -> float:
        started = time.perf_counter()
        try:
            return await run_stage(run, stage, shard)
        finally:
            spans.append((stage.name, stage.scope, started, time.perf_counter()))

    build.run_stage = timed  # type: ignore[assignment]
    return spans


def timed_collections() -> dict[str, Any]:
    """Passes of Python's cyclic collector during the build (gc.callbacks), their CPU and the longest:
    a pass stops the event loop, and every call in flight waits it out."""
    import gc

    seen: dict[str, Any] = {"passes": 0, "seconds": 0.0, "longest": 0.0, "start": 0.0}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen["start"] = time.perf_counter()
            return
        took = time.perf_counter() - seen["start"]
        seen["passes"] += 1
        seen["seconds"] += took
        seen["longest"] = max(seen["longest"], took)

    gc.callbacks.append(callback)
    return seen


def phases(seen: dict[str, Any], concurrency: int) -> str:
    """Calls in flight (of `concurrency`) while the shards generate, and in each dataset-level stage after:
    where the build leaves slots idle."""
    stages, calls = seen["stages"], seen["spans"]
    start = min(a for _, _, a, _ in stages)
    windows = [("shards", start, max(b for _, scope, _, b in stages if scope == "shard"))]
    after = sorted((a, b, name) for name, scope, a, b in stages if scope == "dataset")
    windows += [(name, a, b) for a, b, name in after]
    parts = []
    for name, a, b in windows:
        busy = sum(max(0.0, min(e, b) - max(s, a)) for s, e in calls)
        parts.append(f"{name} {b - a:.1f} s, {busy / max(b - a, 1e-9) / concurrency:.3f} of slots busy")
    return "; ".join(parts)


def build_level(base_url: str, personas: int, concurrency: int, out: Path) -> dict[str, Any]:
    from personaloom.dataset.store import DatasetStore
    from personaloom.pipeline.flow import build_dataset
    from personaloom.schemas.config import BuildConfig, LLMConfig

    cfg = BuildConfig(
        dataset="bench",
        personas=personas,
        scenes_per_persona=10,
        shard_size=25,
        llm=LLMConfig(model="bench", base_url=base_url, concurrency=concurrency),
    )
    seen = timed_requests()
    seen["stages"] = timed_stages()
    seen["gc"] = timed_collections()
    t0 = time.perf_counter()
    version = asyncio.run(build_dataset(cfg, out=str(out)))
    wall = time.perf_counter() - t0
    m = DatasetStore(out, "bench").manifest(version)
    calls = sum(u.calls for u in m.usage.values())
    return {"wall": wall, "calls": calls, "generate": m.timings["generate"], **seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--personas", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    limit = args.concurrency / args.latency
    proc, base_url = spawn_fake(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rate, cpu_ms = asyncio.run(
                client_level(base_url, args.calls, args.concurrency, Path(tmp) / "cache")
            )
            print(
                f"client: {rate:.1f} calls/s = {rate / limit:.3f} of the limit {limit:.0f}/s; "
                f"client CPU {cpu_ms:.3f} ms per call"
            )
            os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
            b = build_level(base_url, args.personas, args.concurrency, Path(tmp) / "out")
            gen_rate = b["calls"] / b["generate"]
            print(
                f"build: {b['calls']:.0f} calls in {b['generate']:.1f} s generating = {gen_rate:.1f} calls/s "
                f"= {gen_rate / limit:.3f} of the limit; whole run {b['wall']:.1f} s, "
                f"so start-up (Prefect) + publish "
                f"{b['wall'] - b['generate']:.1f} s"
            )
            in_flight, call_s = b["seconds"] / b["generate"], b["seconds"] / b["requests"]
            print(
                f"build: {in_flight:.1f} calls in flight on average = {in_flight / args.concurrency:.3f} of "
                f"{args.concurrency}; one call {call_s * 1000:.0f} ms wall, "
                f"latency / call = {args.latency / call_s:.3f}"
            )
            print(f"build phases: {phases(b, args.concurrency)}")
            gc_seen = b["gc"]
            print(
                f"build: the cyclic collector ran {gc_seen['passes']} passes, {gc_seen['seconds']:.2f} s, "
                f"the longest {gc_seen['longest'] * 1000:.0f} ms"
            )
    finally:
        proc.terminate()
        proc.wait()
    print(
        f"reproduce: .venv/bin/python bench/throughput.py --calls {args.calls} --personas {args.personas} "
        f"--latency {args.latency} --concurrency {args.concurrency}"
    )


if __name__ == "__main__":
    main()
