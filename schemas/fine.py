"""Fine-grained preferences (seeds/fine_preferences.csv): one dimension a row, 2-4 exclusive alternatives.

A persona holds one alternative of each dimension it was planted (`Persona.Fine`: id → text), and its path
is `Fine.<id>`. Code plants and changes them (stages/drift.py); the table is the ground truth of every
value, so the schemas check a path's id against the shipped table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from personaloom.paths import SEEDS_DIR

FINE_PREFIX = "Fine."
TABLE = "fine_preferences.csv"


@dataclass(frozen=True)
class FineDimension:
    id: str
    category: str
    alternatives: tuple[str, ...]
    min_age: int
    max_age: int
    employment: frozenset[str] | None  # None: any work status
    requires: frozenset[str]  # facts (facts.csv) the person must hold


def _parse(row: dict[str, str], where: str) -> FineDimension:
    alts = tuple(a.strip() for a in row["alternatives"].split("|") if a.strip())
    if not 2 <= len(alts) <= 4 or len(set(alts)) != len(alts):
        raise ValueError(f"{where}: 2-4 distinct alternatives, got {alts}")
    employment = row["employment"].strip()
    requires = row["requires"].strip()
    return FineDimension(
        id=row["id"].strip(),
        category=row["category"].strip(),
        alternatives=alts,
        min_age=int(row["min_age"]),
        max_age=int(row["max_age"]),
        employment=None if employment in ("", "*") else frozenset(employment.split(";")),
        requires=frozenset() if requires in ("", "-") else frozenset(requires.split(";")),
    )


@cache
def load_fine_table(root: Path = SEEDS_DIR) -> dict[str, FineDimension]:
    """id → dimension, in the table's order (an empty table when the file is absent)."""
    path = root / TABLE
    if not path.is_file():
        return {}
    out: dict[str, FineDimension] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if None in row:
                raise ValueError(f"{path}:{i}: too many columns (an alternative with a comma?)")
            dim = _parse(row, f"{path}:{i}")
            if dim.id in out:
                raise ValueError(f"{path}:{i}: id {dim.id!r} twice")
            out[dim.id] = dim
    return out


def fine_id(path: str) -> str | None:
    """The dimension id of a `Fine.<id>` path (None for any other path)."""
    return path[len(FINE_PREFIX) :] if path.startswith(FINE_PREFIX) else None


def fine_alternatives(key: str) -> list[str]:
    """Every alternative of a Fine key (`Fine.<id>` or the bare id), from the shipped table ([]: unknown)."""
    dim = load_fine_table().get(fine_id(key) or key)
    return list(dim.alternatives) if dim else []
