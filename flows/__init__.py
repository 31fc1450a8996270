"""personaloom: synthetic life-long persona datasets and a reference personalized agent.

The Python API (personaloom.api): `personaloom.build(...)`, `personaloom.open(...)`,
`personaloom.evaluate(...)`, `personaloom.Version`. Loaded on first use: `import personaloom` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Version", "build", "evaluate", "open"]


def __getattr__(name: str) -> Any:
    if name in ("build", "evaluate", "open", "Version"):
        return getattr(importlib.import_module("personaloom.api"), name)
    raise AttributeError(f"module 'personaloom' has no attribute {name!r}")
