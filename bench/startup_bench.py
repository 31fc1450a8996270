"""Fixed cost of a `personaloom build`: where the seconds go before and after the LLM calls.

A 1-persona × 1-session build on the fake server (no latency), as a user runs it (a new process each
time), three ways in one run:
  - a fresh PREFECT_HOME (first build on a machine: Prefect creates its database),
  - the same PREFECT_HOME again (each command still starts a temporary Prefect server),
  - with `personaloom server` running: no server start (each command still imports Prefect, the SDK and
    the stages itself).
Each row splits the wall time into: the run up to the first stage (manifest `endpoint_start`: Prefect
flow-run start, endpoint, catalogue), the stages (`generate`), and the rest (Python imports, Prefect
server start before the flow, publish, artifacts, exit); the imports alone (`import personaloom.cli,
personaloom.pipeline.flow` in a new process) are printed once.

Reproduce:
    .venv/bin/python bench/startup_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from personaloom.testing.fake_openai import spawn_fake

EXE = [sys.executable, "-m", "personaloom"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env(home: Path) -> dict[str, str]:
    drop = ("PREFECT_API_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PREFECT_HOME": str(home)}


def import_seconds(env: dict[str, str]) -> float:
    code = "import time; t = time.perf_counter(); import personaloom.cli, personaloom.pipeline.flow; "
    code += "print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)


def one_build(base_url: str, out: Path, env: dict[str, str], name: str) -> dict[str, float]:
    args = ["build", "--dataset", name, "--personas", "1", "--scenes-per-persona", "1", "--no-progress"]
    t0 = time.perf_counter()
    res = subprocess.run(
        [*EXE, *args, "--base-url", base_url, "--out", str(out)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"build failed: {res.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((out / name / "latest" / "manifest.json").read_text())
    return {"wall": wall, **manifest["timings"]}


def row(label: str, runs: list[dict[str, float]]) -> str:
    wall = statistics.median(r["wall"] for r in runs)
    start = statistics.median(r["endpoint_start"] for r in runs)
    gen = statistics.median(r["generate"] for r in runs)
    rest = wall - start - gen
    return (
        f"{label:<34} {wall:6.1f} s = to first stage {start:4.1f} + stages {gen:4.1f}"
        f" + imports, server start, publish, exit {rest:5.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="builds per warm mode (median reported)")
    args = ap.parse_args()
    proc, base_url = spawn_fake(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home, out = Path(tmp) / "prefect", Path(tmp) / "out"
            env = user_env(home)
            imports = import_seconds(env)
            cold = [one_build(base_url, out, env, "cold")]
            warm = [one_build(base_url, out, env, f"warm{i}") for i in range(args.repeat)]
            server = subprocess.Popen(
                [*EXE, "server", "--port", str(free_port())], env=env, stdout=subprocess.PIPE, text=True
            )
            try:
                server.stdout.readline() if server.stdout else None  # ready line
                standing = [one_build(base_url, out, env, f"standing{i}") for i in range(args.repeat)]
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(timeout=60)
    finally:
        proc.terminate()
        proc.wait()
    print(f"imports alone (a new process): {imports:.1f} s")
    print(row("fresh PREFECT_HOME", cold))
    print(row("temporary server each time", warm))
    print(row("personaloom server", standing))
    med = {k: statistics.median(r["wall"] for r in v) for k, v in (("w", warm), ("s", standing))}
    print(
        f"standing server: {med['s']:.1f} s per build = {med['s'] / med['w']:.2f} of a temporary"
        f" server's {med['w']:.1f} s"
    )
    print(f"reproduce: .venv/bin/python bench/startup_bench.py --repeat {args.repeat}")


if __name__ == "__main__":
    main()
