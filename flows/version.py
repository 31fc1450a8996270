"""The code version recorded in manifests: package version plus git commit when run from a checkout."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib import metadata

from personaloom.paths import SOURCE_ROOT


@cache
def code_version() -> str:
    try:
        version = metadata.version("personaloom")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    if SOURCE_ROOT is None:  # an installed wheel: its version is the whole story
        return version
    try:
        sha = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(SOURCE_ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "flows",
                "schemas",
                "prompts",
                "seeds",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{version}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version
