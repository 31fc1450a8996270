"""Long histories from the user's own life: a `--context-target` build against the fake OpenAI server.

Builds a version with `conversation.context_target` (default 32k tokens, counted by personaloom.text.tokens:
Gemma 3's tokenizer with the local extra) and prints, over the kept sessions: each persona's own history
(min / median / max tokens; no padding with other users), preferences per persona, sessions and turns, the
share of asked-implicit reveals that came out stated and that the reveal judge confirmed (the fake's judge
here is the scripted calibrated one, `personaloom.testing.judge_model.reveal_judge`: a pipeline figure, not
a model's), and LLM calls per kept session and per kept probe.

Reproduce:
    .venv/bin/python bench/context_target_bench.py [--personas 20] [--target 32000] [--user-turns 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from personaloom.runtime.prefect_env import apply_prefect_defaults
from personaloom.text.tokens import count as count_tokens
from personaloom.text.tokens import tokenizer


def run(personas: int, target: int, user_turns: int, seed: int) -> None:
    from personaloom.dataset.store import read_records
    from personaloom.pipeline.flow import build_dataset
    from personaloom.schemas.config import BuildConfig, ConversationConfig, LLMConfig
    from personaloom.schemas.manifest import Manifest
    from personaloom.schemas.records import DatasetRow
    from personaloom.testing.fake_openai import FakeOpenAI
    from personaloom.testing.judge_model import reveal_judge

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(responder=reveal_judge(True)) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        conv = ConversationConfig(user_turns=user_turns, context_target=target)
        cfg = BuildConfig(
            dataset="b", personas=personas, shard_size=10, seed=seed, llm=llm, conversation=conv
        )
        start = time.perf_counter()
        version = asyncio.run(build_dataset(cfg, out=tmp))
        seconds = time.perf_counter() - start
        root = Path(tmp) / "b" / version
        rows = read_records(root / "dataset", DatasetRow)
        m = Manifest.model_validate_json((root / "manifest.json").read_text())
    own: dict[str, int] = {}
    for r in rows:
        own[r.persona_id] = own.get(r.persona_id, 0) + sum(count_tokens(t.content) for t in r.turns)
    hidden = {r.expected_response for r in rows}
    leaks = sum(t.content in hidden for r in rows for t in r.turns)
    c = m.conversations
    assert c is not None
    calls = sum(u.calls for u in m.usage.values())
    probes = m.counts["probes"].rows_out if "probes" in m.counts else 0
    print(
        f"{personas} personas, --context-target {target}, {cfg.scenes_per_persona} sessions planned, "
        f"{user_turns} user turns planned, seed {seed}: {seconds:.0f} s; tokens by {tokenizer()}"
    )
    print(
        f"  own history tokens per persona: min {min(own.values())}, median {c.history_tokens_median}, "
        f"max {max(own.values())}; personas at or past the target: "
        f"{sum(v >= target for v in own.values())}/{len(own)}"
    )
    print(
        f"  kept sessions {c.sessions}, turns per session {c.turns_per_session}, preferences per persona "
        f"{c.preferences_per_persona}, turns equal to an expected_response: {leaks}"
    )
    stated = c.implicit_stated / c.implicit_asked if c.implicit_asked else 0.0
    print(
        f"  implicit reveals asked {c.implicit_asked}: stated outright {stated:.3f}, judged implicit "
        f"{c.implicit_share()}; evidence marks {c.evidence_marks}; traps planned {c.planned_traps}"
    )
    per_item = f"{calls / probes:.1f}" if probes else "n/a"
    print(
        f"  LLM calls {calls}: {calls / max(c.sessions, 1):.1f} per kept session, {per_item} per kept probe"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=20)
    ap.add_argument("--target", type=int, default=32000)
    ap.add_argument("--user-turns", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="context-bench-"))
    apply_prefect_defaults()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        run(args.personas, args.target, args.user_turns, args.seed)
    print(
        f"\nreproduce: .venv/bin/python bench/context_target_bench.py --personas {args.personas} "
        f"--target {args.target} --user-turns {args.user_turns} --seed {args.seed}"
    )


if __name__ == "__main__":
    main()
