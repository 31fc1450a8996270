"""The embedded build, timed: `make build`'s dataset (3 personas × 4 sessions) on Gemma 3 270M.

Each row is one whole `personaloom build` command (a new process, its own output folder and LLM cache,
the embedded model started by the build itself), in one run so the rows share the machine's load:
  - `baseline`: llama-cpp-python's own server (`python -m llama_cpp.server`, alpaca chat format), one
    request at a time: what `make build` ran before personaloom.llm.embedded_server (skipped when
    llama-cpp-python's server extra is not installed);
  - `slots=N`: personaloom.llm.embedded_server decoding N requests in one batch;
  - `redraws=R` (with `--redraws`): answers stage 5 would drop drawn again up to R times (`build --redraws`).
Figures, summed over the build seeds given: the commands' wall time; the generation seconds (manifest
`timings.generate`); LLM calls; completion tokens; output tokens per second of generation; rows kept
per table and rejections by reason (a 270M base model's rows vary a lot from seed to seed); in how many
builds the answerability judge passed its calibration (personaloom.stages.calibration).

Reproduce:
    .venv/bin/python bench/embedded_build.py [--slots 1,2,4] [--redraws 0,1,2] [--baseline] [--seeds 0,1]
    (also --personas 3 --scenes 4 --user-turns 1 --languages en, make build's shape;
    the baseline needs `pip install 'llama-cpp-python[server]'`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# Runs in the build's own process: chooses which server the embedded endpoint starts, then the CLI.
RUNNER = """
import sys
import personaloom.llm.endpoint as endpoint
import personaloom.llm.local as local
server, slots = sys.argv[1], int(sys.argv[2])
endpoint.EMBEDDED_SLOTS = slots
if server == "baseline":
    local.embedded_command = lambda port, slots=1: [
        sys.executable, "-m", "llama_cpp.server", "--model", str(local.gguf_path()), "--host", "127.0.0.1",
        "--port", str(port), "--model_alias", local.MODEL_NAME, "--chat_format", "alpaca",
        "--n_ctx", "4096", "--n_threads", "2",
    ]
else:
    command = local.embedded_command
    local.embedded_command = lambda port, s=slots: command(port, s)
from personaloom.cli import main
sys.argv = ["personaloom", *sys.argv[3:]]
main()
"""


def one_build(
    server: str,
    slots: int,
    personas: int,
    scenes: int,
    seed: int,
    out: Path,
    redraws: int | None = None,
    user_turns: int = 1,
    languages: str = "en",
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    args = ["build", "--dataset", "demo", "--personas", str(personas), "--sessions", str(scenes)]
    args += ["--seed", str(seed), "--out", str(out), "--no-progress", "--user-turns", str(user_turns)]
    if languages:
        args += ["--languages", languages]
    if redraws is not None:
        args += ["--redraws", str(redraws)]
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", RUNNER, server, str(slots), *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"{server} build failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    m = json.loads((out / "demo" / "latest" / "manifest.json").read_text())
    usage = m["usage"].values()
    gen = m["timings"]["generate"]
    completion = sum(u["completion_tokens"] for u in usage)
    return {
        "wall": wall,
        "generate": gen,
        "calls": sum(u["calls"] for u in usage),
        "failures": sum(u["failures"] for u in usage),
        "redrawn": sum(u.get("redraws", 0) for u in usage),
        "judge_trusted": int(bool(m.get("judges", {}).get("filter/answerability", {}).get("trusted"))),
        "completion": completion,
        "tok_s": completion / gen if gen else 0.0,
        "rows": Counter({k: c["rows_out"] for k, c in m["counts"].items()}),
        "rejected": Counter(m["rejection_reasons"]),
    }


def total(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' builds as one: times, calls and tokens add up, and so do rows and rejections."""
    out = {k: sum((r[k] for r in runs[1:]), runs[0][k]) for k in runs[0] if k != "tok_s"}
    out["tok_s"] = out["completion"] / out["generate"] if out["generate"] else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", default="1", help="comma-separated slot counts to run")
    ap.add_argument("--baseline", action="store_true", help="also run llama-cpp-python's server")
    ap.add_argument("--personas", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--user-turns", type=int, default=1, help="user messages a session (make build: 1)")
    ap.add_argument("--languages", default="en", help="personas who write these (make build: en; '' for all)")
    ap.add_argument("--seeds", default="0", help="comma-separated build seeds: rows kept add up over them")
    ap.add_argument("--redraws", default=None, help="comma-separated redraw counts (default: the build's)")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    redraws = [int(r) for r in a.redraws.split(",")] if a.redraws else [None]
    runs = [("embedded", int(n), r) for n in a.slots.split(",") for r in redraws]
    if a.baseline:
        try:
            import llama_cpp.server  # noqa: F401

            runs.insert(0, ("baseline", 1, redraws[0]))
        except ImportError:
            print("baseline skipped: llama-cpp-python[server] is not installed")
    print(
        f"personaloom build --personas {a.personas} --sessions {a.scenes} --user-turns {a.user_turns} "
        f"--languages {a.languages or 'all'} "
        f"--seed {a.seeds}"
        ", embedded Gemma 3 270M (figures summed over the seeds)"
    )
    results = []
    for server, slots, redraw in runs:
        builds = []
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="embedded-bench-") as tmp:
                shape = (a.personas, a.scenes, seed, Path(tmp), redraw, a.user_turns, a.languages)
                builds.append(one_build(server, slots, *shape))
        r = total(builds)
        label = "baseline (llama_cpp.server)" if server == "baseline" else f"slots={slots}"
        if redraw is not None:
            label += f" redraws={redraw}"
        results.append((label, r))
        print(
            f"{label:<28} wall {r['wall']:6.1f} s  generate {r['generate']:6.1f} s  calls {r['calls']:4d}"
            f" (failed {r['failures']}, redrawn {r['redrawn']})  completion tokens {r['completion']:6d}"
            f"  {r['tok_s']:5.1f} tok/s"
            f"\n{'':<28} rows {dict(r['rows'])}\n{'':<28} rejected {dict(r['rejected'])}"
            f"\n{'':<28} answerability judge trusted in {r['judge_trusted']} of {len(seeds)} builds",
            flush=True,
        )
    if len(results) > 1:
        base_label, base = results[0]
        for label, r in results[1:]:
            print(
                f"{label}: wall {r['wall'] / base['wall']:.2f} of {base_label}'s,"
                f" output tokens/s {r['tok_s'] / base['tok_s']:.2f}×, dataset rows kept"
                f" {r['rows']['filter']} vs {base['rows']['filter']}"
            )
    print("reproduce: .venv/bin/python bench/embedded_build.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
