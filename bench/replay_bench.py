"""Replay overhead and throughput against the fake OpenAI server in its own process.

Reports:
  - overhead: a whole `replay_dataset` run with every agent at latency 0: wall seconds per session and
    per LLM call spent outside the model (prompt rendering, HTTP client, cache, agents, metrics, Parquet);
  - throughput: the same replay at --latency (default 0.2 s) as calls/s, and as a ratio to the endpoint
    limit concurrency / latency. Replay chains are sequential per (persona, agent), so the ratio is
    bounded by how many chains run at once (personas × agents) against --concurrency.

Reproduce:
    .venv/bin/python bench/replay_bench.py [--personas 12] [--sessions 4] [--latency 0.2] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from personaloom.runtime.prefect_env import apply_prefect_defaults
from personaloom.testing.fake_openai import spawn_fake

ROOT = Path(__file__).resolve().parent.parent

apply_prefect_defaults()

AGENTS = ["none", "demographics-only", "golden", "learned", "learned-rag", "rag", "persona-agent", "vars"]


def replay_once(base_url: str, out: Path, personas: int, sessions: int, concurrency: int) -> dict[str, Any]:
    from personaloom.pipeline.flow import build_dataset
    from personaloom.runs.replay import replay_dataset
    from personaloom.schemas.config import BuildConfig, LLMConfig
    from personaloom.schemas.replay import ReplayConfig

    llm = LLMConfig(model="fake-model", base_url=base_url, concurrency=concurrency)
    build = BuildConfig(
        dataset="bench",
        personas=personas,
        scenes_per_persona=sessions,
        expand_hints=False,
        answerability=False,
        llm=llm,
    )
    asyncio.run(build_dataset(build, out=str(out)))
    cfg = ReplayConfig(dataset="bench", agents=AGENTS, ks=[2], shard_size=max(1, personas // 4), llm=llm)
    started = time.perf_counter()
    run_dir = Path(asyncio.run(replay_dataset(cfg, out=str(out))))
    wall = time.perf_counter() - started
    m = json.loads((run_dir / "manifest.json").read_text())
    calls = sum(u["calls"] for u in m["usage_by_role"].values())
    sessions = {r["agent"]: r["sessions"] for r in m["summary"]}
    # LLM calls per session of each agent: its own, its world's (user simulator, tools) and its judging;
    # "pairwise" is Fig. 4's judge, per session it compares
    per_agent = {
        a: u["calls"] / sessions.get(a, max(sessions.values())) for a, u in m["usage_by_agent"].items()
    }
    return {
        "wall": wall,
        "flow": m["seconds"],
        "sessions": m["sessions"],
        "calls": calls,
        "per_agent": per_agent,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--personas", type=int, default=12)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        results = {}
        for label, latency in (("overhead", 0.0), ("throughput", args.latency)):
            proc, base = spawn_fake(latency)
            try:
                results[label] = replay_once(
                    base, Path(tmp) / label, args.personas, args.sessions, args.concurrency
                )
            finally:
                proc.terminate()
                proc.wait()
    o, t = results["overhead"], results["throughput"]
    limit = args.concurrency / args.latency
    rate = t["calls"] / t["flow"]
    print(
        f"replay of {o['sessions']:.0f} sessions ({args.personas} personas × {args.sessions} sessions "
        f"× {len(AGENTS)} agent kinds, learned k=2)"
    )
    print(
        f"overhead (latency 0): {o['calls']:.0f} LLM calls in {o['flow']:.2f} s inside the flow "
        f"(+{o['wall'] - o['flow']:.2f} s Prefect start/finish) "
        f"→ {1000 * o['flow'] / o['sessions']:.1f} ms/session, "
        f"{1000 * o['flow'] / o['calls']:.2f} ms/call"
    )
    print(
        f"throughput (latency {args.latency}s, concurrency {args.concurrency}): "
        f"{t['calls']:.0f} calls in {t['flow']:.2f} s "
        f"= {rate:.1f} calls/s = {rate / limit:.2f} × the limit {limit:.0f} calls/s; "
        f"{t['sessions'] / t['flow']:.1f} sessions/s"
    )
    print(
        "LLM calls per session (agent, its world and its judge): "
        + ", ".join(f"{a} {c:.1f}" for a, c in o["per_agent"].items())
    )
    print(
        f"reproduce: .venv/bin/python bench/replay_bench.py --personas {args.personas} "
        f"--sessions {args.sessions} "
        f"--latency {args.latency} --concurrency {args.concurrency}"
    )


if __name__ == "__main__":
    main()
