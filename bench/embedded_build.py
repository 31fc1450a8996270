"""`make build`'s workload on the embedded model (Gemma 3 270M via llama.cpp, no key, no network).

Runs `personaloom build` with no endpoint configured into a temporary output folder and prints the
wall time, the model's output rate and the dataset it made, from the version's manifest.

Reproduce: .venv/bin/python bench/embedded_build.py [--personas 3] [--scenes 4]
(needs the 'local' extra: `make build` installs it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=4)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "personaloom",
            "build",
            "--dataset",
            "demo",
            "--personas",
            str(args.personas),
            "--scenes-per-persona",
            str(args.scenes),
            "--out",
            str(out),
            "--no-progress",
        ]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - started
        m = json.loads((out / "demo" / "latest" / "manifest.json").read_text())
    completion = sum(u["completion_tokens"] for u in m["usage"].values())
    calls = sum(u["calls"] for u in m["usage"].values())
    generate = m["timings"]["generate"]
    print(
        f"embedded build {args.personas} personas x {args.scenes} scenes: {wall / 60:.1f} min wall "
        f"({generate:.0f} s generating, {wall - generate:.0f} s start-up incl. Prefect and model load)"
    )
    print(
        f"model {m['model']}: {calls} calls, {completion} completion tokens, "
        f"{completion / generate:.1f} tokens/s "
        f"end to end (prompt processing and JSON-grammar sampling included)"
    )
    print(
        f"dataset rows {m['counts']['filter']['rows_out']}, rejected {sum(m['rejection_reasons'].values())} "
        f"{m['rejection_reasons']}"
    )
    print(
        f"reproduce: .venv/bin/python bench/embedded_build.py --personas {args.personas} "
        f"--scenes {args.scenes}"
    )


if __name__ == "__main__":
    main()
