"""Marginal CPU of a whole `personaloom build` command per LLM call, against the fake OpenAI server.

Runs `personaloom build` as a user does (a new process) for 1 persona and for N personas, same settings
otherwise, and reads each build's CPU (user + system) from this process's RUSAGE_CHILDREN delta. The
fake server and a standing Prefect server (`personaloom server`, reached through PREFECT_API_URL) run in
their own processes and are reaped only at the end, so neither is counted. The figure
    (CPU_N - CPU_1) / (calls_N - calls_1)
is what each further LLM call costs the command: client, stages, Prefect tasks, writing, filtering.
The fixed cost (imports, Prefect flow run, publish) cancels out.

`--http-client aiohttp,httpx` measures each HTTP client under the SDK (PERSONALOOM_HTTP_CLIENT) in the same
run, interleaved, and prints each one's figure against the first's.

On this shared machine the same 1-persona build reads 3.7 to 5.6 s of CPU from one run to the next (the
host's load inflates CPU time too), so one pair's difference is noisy. The figure is therefore taken from
the least CPU each build size read over the repeats, (min CPU_N - min CPU_1) / (calls_N - calls_1): noise
only ever adds CPU. The median of the pairs' own differences is printed beside it.

Reproduce:
    .venv/bin/python bench/client_cpu.py [--personas 100] [--sessions 10] [--latency 0.2] [--repeat 1]
        [--http-client aiohttp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from personaloom.testing.fake_openai import spawn_fake

EXE = [sys.executable, "-m", "personaloom"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_build(
    base_url: str, root: Path, env: dict[str, str], name: str, personas: int, args: argparse.Namespace
) -> tuple[float, int]:
    """(CPU seconds of the build process, LLM calls it made); a fresh cache so every call is made."""
    cmd = [
        *EXE,
        "build",
        "--dataset",
        name,
        "--personas",
        str(personas),
        "--scenes-per-persona",
        str(args.sessions),
        "--concurrency",
        str(args.concurrency),
        "--base-url",
        base_url,
        "--out",
        str(root / "out"),
        "--cache-dir",
        str(root / f"cache-{name}"),
        "--no-progress",
    ]
    before = children_cpu()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    cpu = children_cpu() - before
    if res.returncode:
        sys.exit(f"build failed: {res.stderr.strip().splitlines()[-3:]}")
    manifest = json.loads((root / "out" / name / "latest" / "manifest.json").read_text())
    return cpu, sum(int(u["calls"]) for u in manifest["usage"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1, help="pairs of builds (median reported)")
    ap.add_argument("--http-client", default="aiohttp", help="comma-separated: aiohttp, httpx")
    args = ap.parse_args()
    clients = args.http_client.split(",")
    fake, base_url = spawn_fake(args.latency)
    figures: dict[str, list[float]] = {c: [] for c in clients}
    builds: dict[str, list[tuple[float, int, float, int]]] = {c: [] for c in clients}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            drop = ("PREFECT_API_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")
            env = {k: v for k, v in os.environ.items() if k not in drop}
            env["PREFECT_HOME"] = str(root / "prefect")
            server = subprocess.Popen(
                [*EXE, "server", "--port", str(free_port())], env=env, stdout=subprocess.PIPE, text=True
            )
            try:
                assert server.stdout is not None
                ready = server.stdout.readline()  # "Prefect server at http://…/api: personaloom commands …"
                env["PREFECT_API_URL"] = ready.split(" at ", 1)[1].split(": ", 1)[0]
                one_build(base_url, root, env, "warm", 1, args)  # the server's first flow run, OS caches
                for i in range(args.repeat):
                    for client in clients:
                        env["PERSONALOOM_HTTP_CLIENT"] = client
                        cpu1, calls1 = one_build(base_url, root, env, f"one{i}{client}", 1, args)
                        cpun, callsn = one_build(base_url, root, env, f"many{i}{client}", args.personas, args)
                        per_call = (cpun - cpu1) / (callsn - calls1) * 1000
                        figures[client].append(per_call)
                        builds[client].append((cpu1, calls1, cpun, callsn))
                        print(
                            f"{client}: 1 persona: {cpu1:.2f} s CPU, {calls1} calls; "
                            f"{args.personas} personas: "
                            f"{cpun:.2f} s CPU, {callsn} calls; marginal {per_call:.3f} ms CPU per call"
                        )
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(timeout=60)
    finally:
        fake.terminate()
        fake.wait()

    def least(client: str) -> float:
        runs = builds[client]
        cpu1, cpun = min(r[0] for r in runs), min(r[2] for r in runs)
        return (cpun - cpu1) / (runs[0][3] - runs[0][1]) * 1000

    first = least(clients[0])
    for client in clients:
        figure = least(client)
        versus = f" ({figure / first:.2f} of {clients[0]}'s)" if client != clients[0] else ""
        print(
            f"whole command, {client}: {figure:.3f} ms CPU per LLM call (least CPU of {args.repeat} builds "
            f"each; median of the pairs {statistics.median(figures[client]):.3f}){versus}"
        )
    print(
        f"reproduce: .venv/bin/python bench/client_cpu.py --personas {args.personas} "
        f"--sessions {args.sessions} --latency {args.latency} --concurrency {args.concurrency} "
        f"--repeat {args.repeat} --http-client {args.http_client}"
    )


if __name__ == "__main__":
    main()
