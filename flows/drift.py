"""Life-long drift by construction: code plans each change, resolves its before and after, and checks it.

The LLM writes the new value of a narrative field and the story of a change; everything a metric or an
evaluation item reads — which field, when, the value before (exactly the one in force), the value after —
is computed here.
"""

from __future__ import annotations

import random

from personaloom.catalogue import Catalogue
from personaloom.schemas.records import PlannedChange, SeedRow


def plan_changes(
    rng: random.Random, cat: Catalogue, row: SeedRow, n_changes: int, n_sessions: int
) -> list[PlannedChange]:
    """Life-long drift: a few preference changes at distinct sessions after the first."""
    slots = list(range(1, n_sessions))
    n = min(n_changes, len(slots), len(cat.attributes["change_kinds"]))
    kinds = rng.sample(cat.attributes["change_kinds"], n)
    at = sorted(rng.sample(slots, n))
    return [
        PlannedChange(
            field=k["field"], at_session=s, from_hint=k["from_hint"], to_hint=k["to_hint"], reason=k["reason"]
        )
        for k, s in zip(kinds, at, strict=True)
    ]
