"""Blind baselines of the probes: can a reader without the history answer them?

Builds a version against the fake OpenAI server (no latency) in two ways — its schema-random text (a model
that follows no instruction) and the scripted probe writer (`personaloom.testing.probe_model`, a model that
writes the reply frames as asked) — and prints, over the kept items, every blind rule's accuracy beside
chance, the items per persona and the yield per type and reason.

Reproduce:
    .venv/bin/python bench/probe_blind_bench.py [--personas 200] [--sessions 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path

from personaloom.runtime.prefect_env import apply_prefect_defaults


def one(personas: int, sessions: int, seed: int, scripted: bool) -> None:
    from personaloom.dataset.store import read_records
    from personaloom.pipeline.flow import build_dataset
    from personaloom.schemas.config import BuildConfig, LLMConfig
    from personaloom.schemas.manifest import Manifest
    from personaloom.schemas.probes import ProbeItem
    from personaloom.stages.probes import baselines
    from personaloom.testing.fake_openai import FakeOpenAI
    from personaloom.testing.probe_model import probe_writer

    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeOpenAI(responder=probe_writer if scripted else None) as fake,
    ):
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        cfg = BuildConfig(
            dataset="b", personas=personas, scenes_per_persona=sessions, shard_size=50, seed=seed, llm=llm
        )
        version = asyncio.run(build_dataset(cfg, out=tmp))
        root = Path(tmp) / "b" / version
        items = read_records(root / "probes", ProbeItem)
        m = Manifest.model_validate_json((root / "manifest.json").read_text())
    judged = {i.probe_id: i.blind_judge for i in items if i.blind_judge is not None}
    table = baselines(items, judged).get("all", {})
    label = "scripted writer" if scripted else "schema-random text"
    print(f"\n{label}: {personas} personas x {sessions} sessions, seed {seed}: {len(items)} items kept")
    for rule, value in table.items():
        if rule != "items":
            print(f"  {rule:<18} {value:.3f}" + ("" if rule == "chance" else f"  ({value - 0.25:+.3f})"))
    per = Counter(Counter(i.persona_id for i in items).values())
    print(f"  items per persona (count: personas): {dict(sorted(per.items()))}")
    for t, counts in m.probe_yield.items():
        why = {k.removeprefix("rejected:"): n for k, n in counts.items() if k.startswith("rejected:")}
        print(f"  {t}: {counts['kept']} of {counts['planned']} kept; {why}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="probe-bench-"))
    apply_prefect_defaults()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        for scripted in (False, True):
            one(args.personas, args.sessions, args.seed, scripted)
    print(
        f"\nreproduce: .venv/bin/python bench/probe_blind_bench.py --personas {args.personas} "
        f"--sessions {args.sessions} --seed {args.seed}"
    )


if __name__ == "__main__":
    main()
