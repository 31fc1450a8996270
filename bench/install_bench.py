"""The embedded model's first install: minutes to compile llama-cpp-python, as shipped vs as `make` builds it.

Each row compiles the pinned llama-cpp-python sdist into a wheel from scratch (no pip cache), one after
the other in one run so both share the machine's load:
  - `as shipped`: llama-cpp-python's defaults (llama.cpp, its common library, and the multimodal `mtmd`
    library that only its llava/mtmd chat handlers load);
  - `make`: the Makefile's LLAMA_CMAKE_ARGS: no multimodal library (`-DLLAVA_BUILD=OFF`) and no llama.cpp
    `common` library (flows/llm/llama_only.cmake): what personaloom.llm.embedded_server loads, libllama
    and ggml, nothing else.

Reproduce:
    .venv/bin/python bench/install_bench.py [--version 0.3.36]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_ONLY = Path(__file__).resolve().parents[1] / "flows" / "llm" / "llama_only.cmake"
MAKE_ARGS = f"-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE={LLAMA_ONLY}"


def compile_minutes(sdist: Path, cmake_args: str, out: Path) -> tuple[float, int]:
    env = {**os.environ, "CMAKE_ARGS": cmake_args}
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "-q",
            "-w",
            str(out),
            str(sdist),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if res.returncode:
        sys.exit(f"compile failed ({cmake_args or 'defaults'}): {res.stderr.strip().splitlines()[-1:]}")
    wheel = next(out.glob("*.whl"))
    return (time.perf_counter() - t0) / 60, wheel.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="0.3.36")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="install-bench-") as tmp:
        root = Path(tmp)
        spec = f"llama-cpp-python=={a.version}"
        get = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            spec,
        ]
        subprocess.run(get, check=True, capture_output=True)
        sdist = next(root.glob("llama_cpp_python-*.tar.gz"))
        rows = []
        for label, args in (("as shipped", ""), ("make (libllama and ggml only)", MAKE_ARGS)):
            minutes, size = compile_minutes(sdist, args, root / label.split()[0])
            rows.append((label, minutes))
            print(f"{label:<30} {minutes:5.1f} min  wheel {size / 1e6:5.1f} MB", flush=True)
    print(f"make's compile takes {rows[1][1] / rows[0][1]:.2f} of the shipped build's time")
    print("reproduce: .venv/bin/python bench/install_bench.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
