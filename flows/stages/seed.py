"""Stage 1 — seed data: structured persona skeletons sampled from the seed tables, one RNG per row."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from bisect import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import date, timedelta
from itertools import accumulate
from typing import TypeVar

from personaloom.catalogue import EMPLOYMENT, SCHOOL_LEAVING_AGE, Catalogue, Name, check_locales
from personaloom.drift import plan_changes
from personaloom.errors import UserError
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.drafts import HintExpansion
from personaloom.schemas.records import SeedRow
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async

FIRST_DAY = date(2025, 1, 6)
_T = TypeVar("_T")


def row_seed(seed: int, index: int) -> int:
    """The sampler seed of row `index`: independent of every other row, so one persona regenerates alone."""
    return int.from_bytes(hashlib.sha256(f"personaloom:{seed}:{index}".encode()).digest()[:8], "big") >> 1


# Per-table lookups computed once, not per row (sampling a million skeletons must stay cheap). Keyed by
# the table's id and holding the table itself, so a new catalogue never sees a stale entry.
_CUMULATIVE: dict[int, tuple[list[dict], list[float]]] = {}
_LOOKUPS: dict[int, _Lookups] = {}

# statuses whose occupation is a job (held, former, or being learned): the locale's farm share applies
JOB_STATUSES = frozenset({"employed", "self_employed", "unemployed", "retired", "apprentice"})
AGRICULTURE = "agriculture"

# Every rule a skeleton obeys by construction; `skeleton_violations` names the ones a row breaks.
SKELETON_INVARIANTS: dict[str, str] = {
    "locale_known": "locale, country and nationality are one row of locales.csv",
    "occupation_known": "the occupation is a role of occupations.csv (listed or derived) for this employment "
    "status, with its sector",
    "occupation_age": "the age is inside the occupation's [min_age, max_age]",
    "qualification_age": "no licensed profession (nor its retired or unemployed form) before school-leaving "
    "age + training_years",
    "employment_age": "the employment status has a share above 0 at this locale, gender and age "
    "(employment_status.csv)",
    "life_stage": "life_stage follows from age and employment status (life_stage_for)",
    "hint_eligible": "the hint is one of seed_hints.csv and fits age, gender, employment, life stage, sector",
    "languages_locale": "a main language of the locale first, each language from the locale's table, once",
    "interaction_language": "the interaction language is the code of one of the person's languages that "
    "people write to an assistant in (language_codes.csv)",
}
# Draws of a skeleton when a build restricts its interaction languages, among the locales where someone
# speaks one of them: the rarest language of seeds/ (Welsh, 0.8% in en_GB) fails 2,000 draws 1e-7 of the time.
MAX_LANGUAGE_DRAWS = 2_000
_UNSPACED_NAME = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _weighted(rng: random.Random, items: list[dict], key: str = "weight") -> dict:
    hit = _CUMULATIVE.get(id(items))
    if hit is None or hit[0] is not items:
        hit = _CUMULATIVE[id(items)] = (items, list(accumulate(float(i[key]) for i in items)))
    return _pick(rng, items, hit[1])


def _pick(rng: random.Random, items: Sequence[_T], cum: list[float]) -> _T:
    """One weighted draw from precomputed cumulative weights (what `random.choices` does for one item)."""
    return items[bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)]


def life_stage_for(age: int, employment: str) -> str:
    """The life stage a skeleton states, from its age and work status."""
    if employment == "retired":
        return "retired"
    if employment in ("student", "apprentice") and age <= 29:
        return "student"
    if age <= 24:
        return "young_adult"
    if age <= 39:
        return "family"
    if age <= 54:
        return "midlife"
    if employment == "homemaker" and age >= 67:  # past pension age a homemaker's stage is retirement
        return "retired"
    return "pre_retirement"  # 55 and over, still working or looking for work


def status_shares(cat: Catalogue, locale: str, gender: str, age: int) -> dict[str, float]:
    """Employment status shares at this locale, gender and age; a gender without rows gets the mean."""
    table = cat.employment_status
    keys = [(locale, gender)] if (locale, gender) in table else [k for k in table if k[0] == locale]
    found = [shares for k in keys for lo, hi, shares in table[k] if lo <= age <= hi]
    return {s: sum(f[s] for f in found) / len(found) for s in EMPLOYMENT} if found else {}


def hint_fits(rule: dict, age: int, gender: str, employment: str, life_stage: str, sector: str) -> bool:
    """Whether a seed hint's eligibility (seed_hints.csv) admits this person."""
    return rule["min_age"] <= age <= rule["max_age"] and _hint_fits_but_age(
        rule, gender, employment, life_stage, sector
    )


def _hint_fits_but_age(rule: dict, gender: str, employment: str, life_stage: str, sector: str) -> bool:
    return (
        (rule["genders"] is None or gender in rule["genders"])
        and (rule["employment"] is None or employment in rule["employment"])
        and (rule["life_stages"] is None or life_stage in rule["life_stages"])
        and (rule["sectors"] is None or sector in rule["sectors"])
    )


class _Lookups:
    """The conditional draws of one catalogue, each built on first use and kept."""

    def __init__(self, cat: Catalogue) -> None:
        self.cat = cat
        self.locale = {loc["locale"]: loc for loc in cat.locales}
        self.roles = {o["occupation"]: o for o in cat.occupations}
        self.hints = {h["hint"]: h for h in cat.hint_rules}
        self.mains = {loc: {lang for lang, _ in t["main"]} for loc, t in cat.languages.items()}
        self.known = {
            loc: self.mains[loc] | {lang for lang, _ in t["other"]} for loc, t in cat.languages.items()
        }
        self._locales: dict[tuple[str, ...] | None, tuple[list[dict], list[float]]] = {}
        self._shares: dict[tuple[str, str, int], dict[str, float]] = {}
        self._statuses: dict[tuple[str, str, int], tuple[list[str], list[float]]] = {}
        self._by_status = {s: [o for o in cat.occupations if s in o["statuses"]] for s in EMPLOYMENT}
        self._roles: dict[tuple[str, str, int], tuple[list[dict], list[float]]] = {}
        self._languages: dict[str, tuple[list[str], list[float], list[tuple[str, float]]]] = {}
        codes = cat.language_codes
        # language name → ISO code, for the languages people write to an assistant in
        self.written = {lang: code for lang, (code, ok) in codes.items() if ok and code}
        self.fallback = {loc: _fallback_language(t, self.written) for loc, t in cat.languages.items()}
        # locale → the interaction languages its people can have (their languages' codes, the fallback's)
        self.reachable = {
            loc: {self.written[lang] for rows in t.values() for lang, _ in rows if lang in self.written}
            for loc, t in cat.languages.items()
        }
        self._hints: dict[tuple[int, str, str, str, str], list[str]] = {}
        self._hint_groups: dict[tuple[str, str, str, str], list[dict]] = {}

    def locales(self, only: Sequence[str] | None) -> tuple[list[dict], list[float]]:
        key = tuple(only) if only else None
        hit = self._locales.get(key)
        if hit is None:
            if key is not None:
                check_locales(self.cat, key)
            rows = [loc for loc in self.cat.locales if key is None or loc["locale"] in key]
            hit = self._locales[key] = (rows, list(accumulate(loc["weight"] for loc in rows)))
        return hit

    def shares(self, locale: str, gender: str, age: int) -> dict[str, float]:
        hit = self._shares.get((locale, gender, age))
        if hit is None:
            hit = self._shares[(locale, gender, age)] = status_shares(self.cat, locale, gender, age)
        return hit

    def statuses(self, locale: str, gender: str, age: int) -> tuple[list[str], list[float]]:
        hit = self._statuses.get((locale, gender, age))
        if hit is None:
            shares = self.shares(locale, gender, age)
            allowed = [s for s in EMPLOYMENT if shares.get(s, 0) > 0]
            if not allowed:
                raise UserError(
                    f"seed table employment_status.csv gives {locale} at age {age} no status: fix it"
                )
            hit = self._statuses[(locale, gender, age)] = (
                allowed,
                list(accumulate(shares[s] for s in allowed)),
            )
        return hit

    def occupations(self, locale: str, status: str, age: int) -> tuple[list[dict], list[float]]:
        hit = self._roles.get((locale, status, age))
        if hit is None:
            fit = [o for o in self._by_status[status] if o["min_age"] <= age <= o["max_age"]]
            if not fit:
                raise UserError(
                    f"seed table occupations.csv has no {status} occupation for age {age}: add one"
                )
            weights = [o["weight"] for o in fit]
            farm = sum(w for o, w in zip(fit, weights, strict=True) if o["sector"] == AGRICULTURE)
            rest = sum(weights) - farm
            if status in JOB_STATUSES and farm and rest:  # the locale's share of work in agriculture
                share = self.locale[locale]["agriculture_share"]
                weights = [
                    w * (share / farm if o["sector"] == AGRICULTURE else (1 - share) / rest)
                    for o, w in zip(fit, weights, strict=True)
                ]
            hit = self._roles[(locale, status, age)] = (fit, list(accumulate(weights)))
        return hit

    def languages(self, locale: str) -> tuple[list[str], list[float], list[tuple[str, float]]]:
        hit = self._languages.get(locale)
        if hit is None:
            table = self.cat.languages[locale]
            mains = [lang for lang, _ in table["main"]]
            hit = self._languages[locale] = (
                mains,
                list(accumulate(s for _, s in table["main"])),
                table["other"],
            )
        return hit

    def eligible_hints(self, age: int, gender: str, employment: str, stage: str, sector: str) -> list[str]:
        key = (age, gender, employment, stage, sector)
        hit = self._hints.get(key)
        if hit is None:
            group = self._hint_groups.get(key[1:])
            if group is None:  # the rules that fit everything but the age, then the age alone
                group = self._hint_groups[key[1:]] = [
                    h for h in self.cat.hint_rules if _hint_fits_but_age(h, *key[1:])
                ]
            hit = [h["hint"] for h in group if h["min_age"] <= age <= h["max_age"]]
            if not hit:
                raise UserError(
                    f"seed table seed_hints.csv has no hint for age {age}, {gender}, {employment}, {stage}, "
                    f"{sector}: add one with '*' eligibility"
                )
            self._hints[key] = hit
        return hit


def _fallback_language(table: dict[str, list[tuple[str, float]]], written: dict[str, str]) -> str | None:
    """The locale's most widely held language that people write to an assistant in (main or other)."""
    held = [(share, lang) for rows in table.values() for lang, share in rows if lang in written]
    return max(held, key=lambda h: h[0])[1] if held else None


def full_name(given: Name, family: Name, order: str) -> tuple[str, str]:
    """(name in the locale's script, name in Latin script), in the locale's order.

    Han, kana and Hangul names are written without a space between family and given name.
    """
    parts = [given, family] if order == "given_first" else [family, given]
    romanized = " ".join(p[0] for p in parts)
    if not all(p[1] for p in parts):
        return romanized, romanized
    sep = "" if all(_UNSPACED_NAME.search(p[1]) for p in parts) else " "
    return sep.join(p[1] for p in parts), romanized


def interaction_language(
    rng: random.Random, look: _Lookups, locale: dict, languages: list[str], allowed: frozenset[str] | None
) -> tuple[list[str], str | None]:
    """(languages, ISO code of the language the person writes to an assistant in; None: none allowed).

    The first of their languages people write to an assistant in; English instead with the locale's
    `english_share` when they speak it. Someone whose languages are all unwritten there (Nahuatl, Luhya)
    also holds the locale's most widely held written language. With `allowed` (a build's `languages`),
    a natural draw outside it falls back to their first allowed language, or to None when they speak none.
    """
    codes = [look.written[lang] for lang in languages if lang in look.written]
    if not codes:
        extra = look.fallback[locale["locale"]]
        if extra is None:
            raise UserError(f"seed tables: no language of {locale['locale']} is written to an assistant")
        languages = [*languages, extra]
        codes = [look.written[extra]]
    code = codes[0]
    if code != "en" and "en" in codes and rng.random() < locale["english_share"]:
        code = "en"
    if allowed is not None and code not in allowed:
        code = next((c for c in codes if c in allowed), None)
    return languages, code


def _lookups(cat: Catalogue) -> _Lookups:
    hit = _LOOKUPS.get(id(cat))
    if hit is None or hit.cat is not cat:
        hit = _LOOKUPS[id(cat)] = _Lookups(cat)
    return hit


def sample_skeleton(
    cat: Catalogue,
    index: int,
    seed: int,
    *,
    n_sessions: int,
    n_changes: int,
    locales: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
) -> SeedRow:
    """One persona skeleton from its own seed: status and occupation conditioned on locale, gender and age.

    `languages` (ISO 639-1 codes) keeps only people who write to an assistant in one of them: a draw
    whose person speaks none is drawn again from a seed derived from this one, and the row stores the
    seed that made it, so `sample_skeleton(cat, index, row.seed, languages=...)` gives the row back.
    """
    if not languages:
        row = _sample_skeleton(cat, index, seed, n_sessions, n_changes, locales, None)
        assert row is not None
        return row
    allowed = frozenset(languages)
    places = writing_locales(cat, locales, allowed)
    draw = seed
    for attempt in range(MAX_LANGUAGE_DRAWS):
        row = _sample_skeleton(cat, index, draw, n_sessions, n_changes, places, allowed)
        if row is not None:
            return row
        draw = row_seed(seed, -1 - attempt)
    raise UserError(
        f"languages: persona {index} drew no writer of {', '.join(sorted(allowed))} in {MAX_LANGUAGE_DRAWS} "
        f"draws from {', '.join(places)}: restrict --locales to where the language is spoken"
    )


def writing_locales(cat: Catalogue, locales: Sequence[str] | None, allowed: frozenset[str]) -> list[str]:
    """The locales (of `locales`, default all) where someone writes in one of `allowed` (else UserError)."""
    look = _lookups(cat)
    if locales is not None:
        check_locales(cat, locales)
    pool = list(locales) if locales else [loc["locale"] for loc in cat.locales]
    places = [loc for loc in pool if look.reachable.get(loc, set()) & allowed]
    if not places:
        raise UserError(
            f"languages: nobody in {', '.join(pool) if locales else 'any locale'} writes to an assistant in "
            f"{', '.join(sorted(allowed))}: add a locale where it is spoken"
        )
    return places


def _sample_skeleton(
    cat: Catalogue,
    index: int,
    seed: int,
    n_sessions: int,
    n_changes: int,
    locales: Sequence[str] | None,
    allowed: frozenset[str] | None,
) -> SeedRow | None:
    rng = random.Random(seed)
    attrs = cat.attributes
    look = _lookups(cat)
    locale = _pick(rng, *look.locales(locales))
    code = locale["locale"]
    gender = _weighted(rng, attrs["genders"])["value"]
    band = _weighted(rng, attrs["age_bands"])
    age = rng.randint(int(band["min"]), int(band["max"]))
    employment = _pick(rng, *look.statuses(code, gender, age))
    occupation = _pick(rng, *look.occupations(code, employment, age))
    given = cat.given_names.get((code, gender)) or [
        n for (loc, _), names in cat.given_names.items() if loc == code for n in names
    ]
    name, romanized = full_name(rng.choice(given), rng.choice(cat.family_names[code]), locale["name_order"])
    mains, main_cum, others = look.languages(code)
    languages = [_pick(rng, mains, main_cum)]
    for language, share in others:  # one draw per listed language, held already or not
        if rng.random() < share and language not in languages:
            languages.append(language)
    life_stage = life_stage_for(age, employment)
    row = SeedRow(
        persona_id=f"p{index:06d}",
        index=index,
        seed=seed,
        locale=code,
        country=locale["country"],
        nationality=locale["nationality"],
        languages=languages,
        name=name,
        name_romanized=romanized,
        gender=gender,
        age=age,
        occupation=occupation["occupation"],
        sector=occupation["sector"],
        employment=employment,
        life_stage=life_stage,
        domain_vocabulary=list(occupation["domain_vocabulary"]),
        mbti=_weighted(rng, attrs["mbti"])["type"],
        values_interests=rng.sample(cat.values_interests, rng.randint(3, 5)),
        formality=rng.choice(attrs["formality"]),
        verbosity=rng.choice(attrs["verbosity"]),
        proactivity=rng.choice(attrs["proactivity"]),
        emotional_tone=rng.choice(attrs["emotional_tone"]),
        hint=rng.choice(look.eligible_hints(age, gender, employment, life_stage, occupation["sector"])),
        start_date=FIRST_DAY + timedelta(days=rng.randint(0, 364)),
        # 1..14 days, uniform; `random()` is several times cheaper than `randint` for the many gaps of a row
        session_gaps_days=[0] + [1 + int(rng.random() * 14) for _ in range(n_sessions - 1)],
        planned_changes=[],
    )
    # drawn last, from the same RNG: a change must fit the person sampled above (personaloom.drift)
    planned = plan_changes(rng, cat, row, n_changes, n_sessions)
    # then the language they write to an assistant in (drawn after everything else, so the rest of a
    # skeleton is the same whether or not a build restricts its languages)
    languages, written = interaction_language(rng, look, locale, languages, allowed)
    if written is None:
        return None
    return row.model_copy(
        update={"planned_changes": planned, "languages": languages, "interaction_language": written}
    )


def sample_skeletons(
    cat: Catalogue,
    rows: Iterable[int],
    seed: int,
    *,
    n_sessions: int,
    n_changes: int,
    locales: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
) -> list[SeedRow]:
    """The skeletons of persona indices `rows` only: each row has its own seed, a shard samples its slice.

    `locales` restricts the locales drawn (a build's `locales`, `personaloom sample --locales`),
    `languages` the interaction languages (a build's `languages`, `--languages`).
    """
    return [
        sample_skeleton(
            cat,
            i,
            row_seed(seed, i),
            n_sessions=n_sessions,
            n_changes=n_changes,
            locales=locales,
            languages=languages,
        )
        for i in rows
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
    # A worker thread, so other shards' LLM replies are not held up meanwhile (pure: same rows)
    rows = await asyncio.to_thread(
        sample_skeletons,
        ctx.catalogue,
        ctx.rows,
        cfg.seed,
        n_sessions=cfg.scenes_per_persona,
        n_changes=cfg.changes_per_persona,
        locales=cfg.locales,
        languages=cfg.languages,
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


# ---------------------------------------------------------------- invariants and the audit of a sample


def skeleton_violations(row: SeedRow, cat: Catalogue) -> list[tuple[str, str]]:
    """Every rule of SKELETON_INVARIANTS the row breaks, as (invariant name, detail); [] when it is sound."""
    look = _lookups(cat)
    found: list[tuple[str, str]] = []
    loc = look.locale.get(row.locale)
    if loc is None or (loc["country"], loc["nationality"]) != (row.country, row.nationality):
        found.append(("locale_known", f"{row.locale} / {row.country} / {row.nationality}"))
    role = look.roles.get(row.occupation)
    if role is None or row.employment not in role["statuses"] or role["sector"] != row.sector:
        found.append(("occupation_known", f"{row.occupation!r} ({row.sector}) as {row.employment}"))
    if role is not None and not role["min_age"] <= row.age <= role["max_age"]:
        found.append(
            ("occupation_age", f"{row.occupation} at {row.age}: {role['min_age']}-{role['max_age']}")
        )
    if role is not None and role["training_years"]:
        earliest = SCHOOL_LEAVING_AGE + role["training_years"]
        if row.age < earliest:
            found.append(
                ("qualification_age", f"{row.occupation} ({role['licence']}) at {row.age} < {earliest}")
            )
    if look.shares(row.locale, row.gender, row.age).get(row.employment, 0) <= 0:
        found.append(("employment_age", f"{row.employment} at {row.age} ({row.locale}, {row.gender})"))
    if row.life_stage != life_stage_for(row.age, row.employment):
        want = life_stage_for(row.age, row.employment)
        found.append(("life_stage", f"{row.life_stage} at {row.age} as {row.employment}, not {want}"))
    rule = look.hints.get(row.hint)
    if rule is None or not hint_fits(rule, row.age, row.gender, row.employment, row.life_stage, row.sector):
        found.append(
            ("hint_eligible", f"{row.hint!r} for {row.age}, {row.gender}, {row.employment}, {row.sector}")
        )
    mains, known = look.mains.get(row.locale, set()), look.known.get(row.locale, set())
    langs = row.languages
    if not langs or langs[0] not in mains or not set(langs) <= known or len(set(langs)) != len(langs):
        found.append(("languages_locale", f"{langs} in {row.locale} (main: {', '.join(sorted(mains))})"))
    written = {look.written[lang] for lang in langs if lang in look.written}
    # None: a row sampled before interaction languages existed (its text is English), nothing to check
    if row.interaction_language is not None and row.interaction_language not in written:
        found.append(("interaction_language", f"{row.interaction_language} for {langs}"))
    return found


def _share(rows: Sequence[SeedRow], hit: Callable[[SeedRow], bool]) -> str:
    return f"{sum(map(hit, rows)) / len(rows):.3f} of {len(rows):,}" if rows else "- (nobody)"


def audit_summary(rows: Sequence[SeedRow], cat: Catalogue) -> list[str]:
    """A short audit of a sample: status by age band, students, retirees, languages, locales, invariants."""
    if not rows:
        return ["no rows"]
    short = {
        "self_employed": "self-emp",
        "apprentice": "apprent",
        "unemployed": "unempl",
        "homemaker": "homemkr",
    }
    lines = ["employment status by age band (share of the band):"]
    lines.append(f"  {'ages':<7}{'people':>8}" + "".join(f"{short.get(s, s):>9}" for s in EMPLOYMENT))
    for band in cat.attributes["age_bands"]:
        lo, hi = int(band["min"]), int(band["max"])
        inside = [r for r in rows if lo <= r.age <= hi]
        counts = Counter(r.employment for r in inside)
        cells = "".join(f"{counts[s] / len(inside):>9.3f}" if inside else f"{'-':>9}" for s in EMPLOYMENT)
        lines.append(f"  {f'{lo}-{hi}':<7}{len(inside):>8,}{cells}")
    young = [r for r in rows if r.age <= 21]
    old = [r for r in rows if r.age >= 70]
    lines.append(
        f"students among those aged 21 or under: {_share(young, lambda r: r.employment == 'student')}; "
        f"retired among those aged 70 or over: {_share(old, lambda r: r.employment == 'retired')}"
    )
    n_langs = Counter(min(len(r.languages), 4) for r in rows)
    spread = ", ".join(f"{k if k < 4 else '4+'}: {n_langs[k] / len(rows):.1%}" for k in sorted(n_langs))
    mean = sum(len(r.languages) for r in rows) / len(rows)
    lines.append(f"languages per person: mean {mean:.2f} ({spread})")
    writes = Counter(r.interaction_language or "en" for r in rows).most_common()
    lines.append("interaction languages: " + ", ".join(f"{c} {n / len(rows):.1%}" for c, n in writes))
    mix = Counter(r.locale for r in rows).most_common()
    lines.append("locales: " + ", ".join(f"{loc} {n / len(rows):.1%}" for loc, n in mix))
    per_row = [{name for name, _ in skeleton_violations(r, cat)} for r in rows]
    broken = Counter(name for names in per_row for name in names)
    bad = sum(1 for names in per_row if names)
    detail = f" ({', '.join(f'{k} {v}' for k, v in broken.most_common())})" if broken else ""
    lines.append(f"rows breaking a skeleton invariant: {bad}{detail}")
    return lines
