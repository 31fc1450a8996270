"""Re-runs and faults, as a user meets them: whole `personaloom build` processes against the fake server.

Reports, from one run: LLM calls and wall time of
  - a first build;
  - the identical re-run after it completed, with --force (a new version from the cache);
  - a build killed with SIGKILL at ~50% of its calls, then re-run (the re-run's calls and wall time);
  - a build against a server injecting 10% faults (429, 500, hangs, malformed JSON, truncation);
each as a ratio to the first build. Wall times include Prefect's start-up (~12-20 s here).

Reproduce: .venv/bin/python bench/resume_bench.py [--personas 60] [--scenes 5] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from personaloom.llm.local import free_port
from personaloom.runtime.prefect_env import apply_prefect_defaults
from personaloom.testing.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent

apply_prefect_defaults()


def calls(fake: FakeOpenAI) -> int:
    return fake.stats.by_path.get("/v1/chat/completions", 0)


def build(
    args: list[str], fake: FakeOpenAI, out: Path, env: dict[str, str], kill_at: int | None = None
) -> tuple[int, float]:
    cmd = [
        sys.executable,
        "-m",
        "personaloom",
        "build",
        *args,
        "--base-url",
        fake.base_url,
        "--out",
        str(out),
        "--no-progress",
    ]
    before, started = calls(fake), time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    if kill_at is not None:
        while calls(fake) - before < kill_at and proc.poll() is None:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"build failed: {err.decode()[-500:]}")
    return calls(fake) - before, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=60)
    ap.add_argument("--scenes", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.2)
    a = ap.parse_args()
    args = [
        "--dataset",
        "bench",
        "--personas",
        str(a.personas),
        "--scenes-per-persona",
        str(a.scenes),
        "--shard-size",
        "10",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
        env["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        port = free_port()
        with FakeOpenAI(port=port, latency=a.latency) as fake:
            build(
                ["--personas", "1", "--scenes-per-persona", "1", "--dataset", "warm"],
                fake,
                Path(tmp) / "warm",
                env,
            )  # Prefect DB
            c1, t1 = build(args, fake, Path(tmp) / "a", env)
            c2, t2 = build([*args, "--force"], fake, Path(tmp) / "a", env)  # else: up to date, no version
            c3a, t3a = build(args, fake, Path(tmp) / "b", env, kill_at=c1 // 2)
            c3, t3 = build(args, fake, Path(tmp) / "b", env)
        with FakeOpenAI(
            latency=a.latency, fault_rate=0.1, retry_after=0.05, hang_seconds=120, seed=1
        ) as faulty:
            c4, t4 = build([*args, "--config", str(_timeout_config(Path(tmp)))], faulty, Path(tmp) / "c", env)
    print(f"first build: {c1} calls, {t1:.1f} s")
    print(
        f"identical re-run after completion: {c2} calls ({c2 / c1:.3f} of the first), "
        f"{t2:.1f} s ({t2 / t1:.2f} of the first)"
    )
    print(
        f"killed at {c3a} calls ({c3a / c1:.2f}), re-run: {c3} calls "
        f"({c3 / c1:.3f} of the first; killed+re-run "
        f"{(c3a + c3) / c1:.3f}), {t3:.1f} s ({t3 / t1:.2f} of the first)"
    )
    print(
        f"10% faults: {c4} requests ({c4 / c1:.2f} of a clean build), "
        f"{t4:.1f} s ({t4 / t1:.2f} of a clean build)"
    )
    print(
        f"reproduce: .venv/bin/python bench/resume_bench.py --personas {a.personas} "
        f"--scenes {a.scenes} --latency {a.latency}"
    )


def _timeout_config(tmp: Path) -> Path:
    """A 5 s request timeout, so an injected hang costs a retry, not two minutes."""
    p = tmp / "timeout.toml"
    p.write_text("[llm]\ntimeout = 5.0\nmax_retries = 8\n")
    return p


if __name__ == "__main__":
    main()
