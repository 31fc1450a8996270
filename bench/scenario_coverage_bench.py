"""Distinct scenarios of a default build against the fake OpenAI server (issue 28 item 5).

Builds `--personas` personas with the default settings (sessions per persona, revisit share, dedup
thresholds; only the endpoint is the fake, in its own process) and prints the manifest's scenarios: distinct
(catalogue scenes used + distinct written ones), per category, the category fallbacks, the scenes stage's
LLM calls per session (the cost the categories must keep flat: they ride on the existing list call), and
the same count recomputed from the scenes table at looser title thresholds, with the time it takes.

The fake writes schema-random titles, so its written scenes rarely repeat one another: its figure is an
upper bound on what a real model gives, whose titles repeat across personas ("Plan a birthday party").

Reproduce:
    .venv/bin/python bench/scenario_coverage_bench.py [--personas 200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from personaloom.runtime.prefect_env import apply_prefect_defaults
from personaloom.testing.fake_openai import spawn_fake

apply_prefect_defaults()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    proc, base_url = spawn_fake(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
            from personaloom.dataset.store import DatasetStore
            from personaloom.pipeline.flow import build_dataset
            from personaloom.schemas.config import BuildConfig, LLMConfig
            from personaloom.stages.catalogue import load_catalogue
            from personaloom.stages.scenarios import read_refs, scenario_stats

            cfg = BuildConfig(
                dataset="scenarios",
                personas=args.personas,
                llm=LLMConfig(model="bench", base_url=base_url, concurrency=args.concurrency),
            )
            out = Path(tmp) / "out"
            t0 = time.perf_counter()
            version = asyncio.run(build_dataset(cfg, out=str(out)))
            wall = time.perf_counter() - t0
            m = DatasetStore(out, "scenarios").manifest(version)
            sc = m.scenarios
            assert sc is not None
            scenes = m.usage["scenes"]
            sessions = m.counts["scenes"].rows_out
            print(f"command: .venv/bin/python bench/{Path(__file__).name} " + " ".join(sys.argv[1:]))
            print(
                f"build: {cfg.personas} personas x {cfg.scenes_per_persona} sessions (defaults), "
                f"{wall:.0f} s; scenes stage {scenes.calls + scenes.cache_hits} LLM calls for {sessions} "
                f"sessions = {(scenes.calls + scenes.cache_hits) / max(sessions, 1):.3f} per session"
            )
            print(
                f"distinct scenarios: {sc.distinct} = {sc.from_catalogue} of {sc.catalogue_size} catalogue "
                f"scenes + {sc.written} written (from {sc.written_sessions} written sessions; "
                f"{sc.matched_catalogue} repeat a catalogue scene); {sc.category_fallbacks} category "
                f"fallbacks; title threshold {sc.threshold:g}"
            )
            print(
                "per category (scenarios/sessions): "
                + ", ".join(f"{c} {n}/{sc.sessions_by_category.get(c, 0)}" for c, n in sc.by_category.items())
            )
            cat, root = load_catalogue(), out / "scenarios" / version
            refs = read_refs(root)
            for threshold in (85.0, 70.0, 50.0):
                t = time.perf_counter()
                again = scenario_stats(refs, cat, threshold)
                took = time.perf_counter() - t
                print(
                    f"recomputed from the scenes table at threshold {threshold:g}: {again.distinct} distinct "
                    f"({again.written} written) in {took:.2f} s"
                )
                if threshold == sc.threshold:
                    assert again == sc, "the manifest's scenarios differ from the scenes table's"
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
