"""Stage 1 — seed data: structured persona skeletons sampled from the seed tables, one RNG per row."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from datetime import date, timedelta
from itertools import accumulate

from personaloom.catalogue import Catalogue
from personaloom.drift import plan_changes
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.drafts import HintExpansion
from personaloom.schemas.records import SeedRow
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async

FIRST_DAY = date(2025, 1, 6)


def row_seed(seed: int, index: int) -> int:
    """The sampler seed of row `index`: independent of every other row, so one persona regenerates alone."""
    return int.from_bytes(hashlib.sha256(f"personaloom:{seed}:{index}".encode()).digest()[:8], "big") >> 1


# Per-table lookups computed once, not per row (sampling a million skeletons must stay cheap). Keyed by
# the table's id and holding the table itself, so a new catalogue never sees a stale entry.
_CUMULATIVE: dict[int, tuple[list[dict], list[float]]] = {}
_FITTING: dict[tuple[int, int], tuple[list[dict], list[dict]]] = {}


def _weighted(rng: random.Random, items: list[dict], key: str = "weight") -> dict:
    hit = _CUMULATIVE.get(id(items))
    if hit is None or hit[0] is not items:
        hit = _CUMULATIVE[id(items)] = (items, list(accumulate(float(i[key]) for i in items)))
    # the same draw as `choices(items, weights=...)`, which accumulates the weights itself
    return rng.choices(items, cum_weights=hit[1])[0]


def _fitting(occupations: list[dict], age: int) -> list[dict]:
    hit = _FITTING.get((id(occupations), age))
    if hit is None or hit[0] is not occupations:
        fit = [o for o in occupations if o["min_age"] <= age <= o["max_age"]] or occupations
        hit = _FITTING[(id(occupations), age)] = (occupations, fit)
    return hit[1]


def _life_stage(age: int) -> str:
    for top, stage in ((24, "young_adult"), (39, "family"), (54, "midlife"), (66, "pre_retirement")):
        if age <= top:
            return stage
    return "retired"


def sample_skeleton(cat: Catalogue, index: int, seed: int, *, n_sessions: int, n_changes: int) -> SeedRow:
    """One persona skeleton from its own seed."""
    rng = random.Random(seed)
    attrs = cat.attributes
    locale = _weighted(rng, cat.locales)
    gender = _weighted(rng, attrs["genders"])["value"]
    band = _weighted(rng, attrs["age_bands"])
    age = rng.randint(int(band["min"]), int(band["max"]))
    occupation = rng.choice(_fitting(cat.occupations, age))
    given = cat.given_names.get((locale["locale"], gender)) or [
        n for (loc, _), names in cat.given_names.items() if loc == locale["locale"] for n in names
    ]
    name = f"{rng.choice(given)} {rng.choice(cat.family_names[locale['locale']])}"
    row = SeedRow(
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
        employment="employed",  # placeholder until occupations carry a status
        life_stage=_life_stage(age),
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
        planned_changes=[],
    )
    # drawn last, from the same RNG: a change must fit the person sampled above (personaloom.drift)
    return row.model_copy(update={"planned_changes": plan_changes(rng, cat, row, n_changes, n_sessions)})


def sample_skeletons(
    cat: Catalogue, rows: Iterable[int], seed: int, *, n_sessions: int, n_changes: int
) -> list[SeedRow]:
    """The skeletons of persona indices `rows` only: each row has its own seed, a shard samples its slice."""
    return [
        sample_skeleton(cat, i, row_seed(seed, i), n_sessions=n_sessions, n_changes=n_changes) for i in rows
    ]


def _expanded(row: SeedRow, res: LLMResult[HintExpansion]) -> SeedRow:
    """A failed expansion keeps the row with its plain hint, marked in `fallback_fields`, raw output kept."""
    if res.value is None:
        return row.model_copy(update={"fallback_fields": ["expanded_hint"], "raw_output": res.raw})
    return row.model_copy(update={"expanded_hint": res.value.expanded_hint.strip()})


EXPAND_HINT: LLMCall[SeedRow, SeedRow] = LLMCall(
    name="seed/expand_hint",
    variables=("seed",),
    render=lambda row: {"seed": row},
    build=_expanded,
    response=HintExpansion,
    max_tokens=160,
    sample=lambda s: s.seed,
)


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[SeedRow]:
    """Sample this shard's skeletons; self-instruct: the LLM turns each short hint into a life situation."""
    cfg = ctx.config
    rows = sample_skeletons(
        ctx.catalogue,
        ctx.rows,
        cfg.seed,
        n_sessions=cfg.scenes_per_persona,
        n_changes=cfg.changes_per_persona,
    )
    if not cfg.expand_hints:
        ctx.advance(len(rows))
        return StageOutcome(records=rows)
    return StageOutcome(records=await map_async(rows, lambda r: ctx.llm.run(EXPAND_HINT, r), ctx.advance))


STAGE = Stage(
    name="seed",
    inputs=(),
    output="seeds",
    record=SeedRow,
    run=run,
    calls=(EXPAND_HINT,),
    rows_in=lambda cfg, n: cfg.personas,
)
