"""Growing versions: a first build, the identical build again, `--grow N`, and a fresh build of the total.

All in one process on the fake server (no latency) with Prefect already up, so the figures are the
build's own work. Reports, from one run: wall time and LLM calls of each, the grown version's kept rows
against the fresh build's, and how much of the grown version's disk it shares with its parent.

Reproduce:
    .venv/bin/python bench/growth_bench.py [--personas 100] [--scenes 5] [--grow 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from personaloom.runtime.prefect_env import apply_prefect_defaults

apply_prefect_defaults()


def timed_build(cfg: object, out: Path, **kw: object) -> tuple[str, float]:
    from personaloom.pipeline.flow import build_dataset

    t0 = time.perf_counter()
    version = asyncio.run(build_dataset(cfg, out=str(out), **kw))  # type: ignore[arg-type]
    return version, time.perf_counter() - t0


def disk(folder: Path) -> tuple[int, int]:
    """Bytes of the version's files, and of those that are hard links shared with another version."""
    total = shared = 0
    for f in folder.rglob("*.parquet"):
        st = f.stat()
        total += st.st_size
        shared += st.st_size if st.st_nlink > 1 else 0
    return total, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=100)
    ap.add_argument("--scenes", type=int, default=5)
    ap.add_argument("--grow", type=int, default=10)
    args = ap.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from personaloom.dataset.store import DatasetStore
    from personaloom.schemas.config import BuildConfig, LLMConfig
    from personaloom.testing.fake_openai import FakeOpenAI

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
        out = Path(tmp) / "out"
        with prefect_test_harness(server_startup_timeout=120), FakeOpenAI(latency=0.0) as fake:
            llm = LLMConfig(model="bench", base_url=fake.base_url, concurrency=32)

            def cfg(dataset: str, personas: int) -> BuildConfig:
                n = args.scenes
                return BuildConfig(dataset=dataset, personas=personas, scenes_per_persona=n, llm=llm)

            def calls() -> int:
                return fake.stats.by_path.get("/v1/chat/completions", 0)

            rows: list[tuple[str, str, float, int]] = []
            for label, c, kw in (
                (f"first build, {args.personas} personas", cfg("g", args.personas), {}),
                ("the identical build again", cfg("g", args.personas), {}),
                (f"--grow {args.grow}", cfg("g", args.personas), {"grow": args.grow}),
                # its own response cache: the grown build's answers would make it free
                (
                    f"fresh build of {args.personas + args.grow}",
                    cfg("f", args.personas + args.grow),
                    {"cache_dir": str(Path(tmp) / "fresh-cache")},
                ),
            ):
                before = calls()
                version, seconds = timed_build(c, out, **kw)
                rows.append((label, version, seconds, calls() - before))
        grown, fresh = DatasetStore(out, "g"), DatasetStore(out, "f")
        total, shared = disk(grown.resolve("latest"))
        kept_grown = grown.manifest("latest").counts["filter"].rows_out
        kept_fresh = fresh.manifest("latest").counts["filter"].rows_out
        print(f"kept rows: grown {kept_grown}, fresh {kept_fresh}")
    for label, version, seconds, n in rows:
        print(f"{label:<32} {version}  {seconds:6.1f} s  {n:6,} LLM calls")
    first, grow, whole = rows[0], rows[2], rows[3]
    print(
        f"--grow {args.grow}: {grow[2]:.1f} s and {grow[3]:,} calls = {grow[2] / whole[2]:.2f} of the time "
        f"and {grow[3] / whole[3]:.2f} of the calls of a fresh build of {args.personas + args.grow} "
        f"(first build {first[2]:.1f} s)"
    )
    print(
        f"grown version on disk: {total / 1024:.0f} KB, {shared / 1024:.0f} KB of it shared with its parent"
    )
    print(
        f"reproduce: .venv/bin/python bench/growth_bench.py --personas {args.personas} "
        f"--scenes {args.scenes} --grow {args.grow}"
    )


if __name__ == "__main__":
    main()
