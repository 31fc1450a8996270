"""Where the project's shipped files live: `prompts/` and `seeds/` are package data of `personaloom`.

From a checkout (editable install) they are the repository's own folders; from a wheel, the copies
inside site-packages. `PERSONALOOM_HOME` points both at another tree that has the same two folders.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


_home = os.environ.get("PERSONALOOM_HOME")
PROMPTS_DIR = Path(_home) / "prompts" if _home else _package_dir("personaloom.prompts")
SEEDS_DIR = Path(_home) / "seeds" if _home else _package_dir("personaloom.seeds")
# The repository checkout the code runs from, if any (for the git commit in the code version).
SOURCE_ROOT: Path | None = Path(__file__).resolve().parent.parent
if not (SOURCE_ROOT / ".git").exists() or Path(__file__).resolve().parent.name != "flows":
    SOURCE_ROOT = None


def install_hint(extra: str) -> str:
    """`pip install -e '.[x]'` in a checkout of the repository, else `pip install 'personaloom[x]'`."""
    if SOURCE_ROOT is not None and (SOURCE_ROOT / "pyproject.toml").is_file():
        return f"pip install -e '.[{extra}]'"
    return f"pip install 'personaloom[{extra}]'"
