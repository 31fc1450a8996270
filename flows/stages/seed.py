"""Stage 1 — seed data: structured persona skeletons sampled from the seed tables, one RNG per row."""

from __future__ import annotations

import hashlib
import random
from datetime import date, timedelta

from flows.catalogue import Catalogue
from flows.llm.client import LLM
from flows.stages.base import Progress, StageOutcome, map_async
from schemas.drafts import HintExpansion
from schemas.records import PlannedChange, SeedRow

STAGE = "seed"
FIRST_DAY = date(2025, 1, 6)


def row_seed(seed: int, index: int) -> int:
    """The sampler seed of row `index`: independent of every other row, so one persona regenerates alone."""
    return int.from_bytes(hashlib.sha256(f"personaloom:{seed}:{index}".encode()).digest()[:8], "big") >> 1


def _weighted(rng: random.Random, items: list[dict], key: str = "weight") -> dict:
    return rng.choices(items, weights=[float(i[key]) for i in items])[0]


def plan_changes(rng: random.Random, cat: Catalogue, n_changes: int, n_sessions: int) -> list[PlannedChange]:
    """Life-long drift: a few preference changes at distinct sessions after the first."""
    slots = list(range(1, n_sessions))
    n = min(n_changes, len(slots), len(cat.attributes["change_kinds"]))
    kinds = rng.sample(cat.attributes["change_kinds"], n)
    at = sorted(rng.sample(slots, n))
    return [
        PlannedChange(field=k["field"], at_session=s, from_hint=k["from_hint"], to_hint=k["to_hint"], reason=k["reason"])
        for k, s in zip(kinds, at, strict=True)
    ]


def sample_skeleton(cat: Catalogue, index: int, seed: int, *, n_sessions: int, n_changes: int) -> SeedRow:
    """One persona skeleton from its own seed."""
    rng = random.Random(seed)
    attrs = cat.attributes
    locale = _weighted(rng, cat.locales)
    gender = _weighted(rng, attrs["genders"])["value"]
    band = _weighted(rng, attrs["age_bands"])
    age = rng.randint(int(band["min"]), int(band["max"]))
    fitting = [o for o in cat.occupations if o["min_age"] <= age <= o["max_age"]] or cat.occupations
    occupation = rng.choice(fitting)
    given = cat.given_names.get((locale["locale"], gender)) or [
        n for (loc, _), names in cat.given_names.items() if loc == locale["locale"] for n in names
    ]
    name = f"{rng.choice(given)} {rng.choice(cat.family_names[locale['locale']])}"
    return SeedRow(
        persona_id=f"p{index:06d}",
        index=index,
        seed=seed,
        locale=locale["locale"],
        country=locale["country"],
        nationality=locale["nationality"],
        languages=locale["languages"],
        name=name,
        gender=gender,
        age=age,
        occupation=occupation["occupation"],
        sector=occupation["sector"],
        domain_vocabulary=occupation["domain_vocabulary"],
        mbti=_weighted(rng, attrs["mbti"])["type"],
        values_interests=rng.sample(cat.values_interests, rng.randint(3, 5)),
        formality=rng.choice(attrs["formality"]),
        verbosity=rng.choice(attrs["verbosity"]),
        proactivity=rng.choice(attrs["proactivity"]),
        emotional_tone=rng.choice(attrs["emotional_tone"]),
        hint=rng.choice(cat.hints),
        start_date=FIRST_DAY + timedelta(days=rng.randint(0, 364)),
        session_gaps_days=[0] + [rng.randint(1, 14) for _ in range(n_sessions - 1)],
        planned_changes=plan_changes(rng, cat, n_changes, n_sessions),
    )


def sample_skeletons(cat: Catalogue, n: int, seed: int, *, n_sessions: int, n_changes: int) -> list[SeedRow]:
    return [sample_skeleton(cat, i, row_seed(seed, i), n_sessions=n_sessions, n_changes=n_changes) for i in range(n)]


async def expand_hints(rows: list[SeedRow], llm: LLM, progress: Progress | None = None) -> StageOutcome[SeedRow]:
    """Self-instruct: the LLM turns each short hint into a concrete life situation for this skeleton.

    A failed expansion keeps the row with its plain hint, marked in `fallback_fields` with the raw output.
    """

    async def one(row: SeedRow) -> SeedRow:
        res = await llm.structured("seed/expand_hint", HintExpansion, stage=STAGE, max_tokens=160, seed=row)
        if res.value is None:
            return row.model_copy(update={"fallback_fields": ["expanded_hint"], "raw_output": res.raw})
        return row.model_copy(update={"expanded_hint": res.value.expanded_hint.strip()})

    return StageOutcome(records=await map_async(rows, one, progress))
