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

from personaloom.errors import UserError
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.drafts import HintExpansion
from personaloom.schemas.records import SeedRow
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async
from personaloom.stages.catalogue import (
    EMPLOYMENT,
    IMMIGRANT_SCALE,
    RELIGIOUS,
    SCHOOL_LEAVING_AGE,
    Catalogue,
    Name,
    check_locales,
    fact_closure,
    fact_conflicts,
    faith_weight,
    interest_weight,
    life_stage_for,
)
from personaloom.stages.drift import (
    changes_status,
    interest_misfit,
    person_facts,
    plan_changes,
    plan_fine,
    plan_violations,
)

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
    "locale_known": "locale and country are one row of locales.csv, the nationality that locale's or (an "
    "immigrant's) another locale's",
    "occupation_known": "the occupation is a role of occupations.csv (listed or derived) for this employment "
    "status, with its sector",
    "occupation_age": "the age is inside the occupation's [min_age, max_age]",
    "qualification_age": "no licensed profession (nor its retired or unemployed form) before school-leaving "
    "age + the locale's training years (qualifications.csv, else occupations.csv)",
    "occupation_locale": "a faith-bound occupation (pastor, imam) only where 0.1% or more hold that faith "
    "(religions.csv)",
    "employment_age": "the employment status has a share above 0 at this locale, gender and age "
    "(employment_status.csv)",
    "life_stage": "life_stage follows from age and employment status (life_stage_for)",
    "hint_eligible": "the hint is one of seed_hints.csv and fits age, gender, employment, life stage, sector",
    "hint_locale": "the hint can happen in the locale: its faith held there by 0.1% or more, in its "
    "locales, an immigration hint only where migration.csv has a corridor",
    "faith_consistent": "the hint and the occupation are not bound to two different faiths",
    "name_origin": "the name is a given name (of the gender) and a family name of the locale of the person's "
    "nationality, in its order and script",
    "surname_gender": "a family name with a feminine form (Polish -ska) takes it for women and not for men",
    "name_faith": "given and family name mark no two different faiths, and a person whose hint or "
    "occupation is bound to a faith bears that faith's names where the locale has some (else unmarked ones)",
    "immigrant_background": "another locale's nationality exactly for an immigration hint: an origin of "
    "the locale's migration.csv corridors, its first language; a newcomer does not speak the local language "
    "yet, a settled immigrant does",
    "languages_locale": "a main language of the person's origin locale first, each language from its table "
    "(an immigrant: or the local language), once",
    "interaction_language": "the interaction language is the code of one of the person's languages that "
    "people write to an assistant in (language_codes.csv)",
    "interest_age": "every interest (and one a planned change adds) fits the age (values_interests.csv)",
    "interest_locale": "every interest is one of values_interests.csv with a weight above 0 in the locale "
    "or the origin (interest_locales.csv, faith), and none learns a language the person speaks",
    "facts_consistent": "the hint's and the interests' facts (facts.csv) do not conflict (no grandchildren "
    "for someone expecting a first child)",
    "event_history": "no planned life event happens twice or contradicts a fact held: the hint's, the "
    "interests', an earlier event's (no first child for a parent, no divorce after a wedding)",
    "work_change_learnable": "an event that changes the work status changes the work routine "
    "(Pattern.Usage_Pattern, the change kind with that `status`); such a kind follows only such an event",
}
# Draws of a skeleton when a build restricts its interaction languages, among the locales where someone
# speaks one of them: the rarest language of seeds/ (Welsh, 0.8% in en_GB) fails 2,000 draws 1e-7 of the time.
MAX_LANGUAGE_DRAWS = 2_000
NEWCOMER_MAX_SPEAKERS = 0.5  # a newcomer's origin: where fewer speak the local language they are learning
MAX_HINT_DRAWS = 50  # then the hints that fit the age are listed (a rare age that few hints admit)
_UNSPACED_NAME = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _weighted(rng: random.Random, items: list[dict], key: str = "weight") -> dict:
    hit = _CUMULATIVE.get(id(items))
    if hit is None or hit[0] is not items:
        hit = _CUMULATIVE[id(items)] = (items, list(accumulate(float(i[key]) for i in items)))
    return _pick(rng, items, hit[1])


def _pick(rng: random.Random, items: Sequence[_T], cum: list[float]) -> _T:
    """One weighted draw from precomputed cumulative weights (what `random.choices` does for one item)."""
    return items[bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)]


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
        self.origin_of = {loc["nationality"]: loc["locale"] for loc in cat.locales}
        self.roles = {o["occupation"]: o for o in cat.occupations}
        self.hints = {h["hint"]: h for h in cat.hint_rules}
        self.interests = {r["item"]: r for r in cat.interest_rules}
        self.events = {e["event"]: e for e in cat.life_events}
        self.mains = {loc: {lang for lang, _ in t["main"]} for loc, t in cat.languages.items()}
        self.known = {
            loc: self.mains[loc] | {lang for lang, _ in t["other"]} for loc, t in cat.languages.items()
        }
        self._locales: dict[tuple[str, ...] | None, tuple[list[dict], list[float]]] = {}
        self._shares: dict[tuple[str, str, int], dict[str, float]] = {}
        self._statuses: dict[tuple[str, str, int], tuple[list[str], list[float]]] = {}
        self._by_status = {s: [o for o in cat.occupations if s in o["statuses"]] for s in EMPLOYMENT}
        self._roles: dict[tuple[str, str, int], tuple[list[dict], list[float]]] = {}
        self._languages: dict[
            tuple[str, str | None], tuple[list[str], list[float], list[tuple[str, float]]]
        ] = {}
        codes = cat.language_codes
        # language name → ISO code, for the languages people write to an assistant in
        self.written = {lang: code for lang, (code, ok) in codes.items() if ok and code}
        self.fallback = {loc: _fallback_language(t, self.written) for loc, t in cat.languages.items()}
        # the local language an immigrant learns: the locale's most widely held written language
        self.local_language = self.fallback
        # locale → the interaction languages its people can have (their languages' codes, the fallback's)
        self.reachable = {
            loc: {self.written[lang] for rows in t.values() for lang, _ in rows if lang in self.written}
            for loc, t in cat.languages.items()
        }
        self._hints: dict[tuple, tuple[list[dict], list[float]]] = {}
        self._hint_groups: dict[tuple, list[dict]] = {}
        self._hint_weights: dict[str, dict[str, float]] = {}
        self._corridors: dict[tuple[str, str], tuple[list[str], list[float]]] = {}
        self._given: dict[tuple[str, str, str | None], list[Name]] = {}
        self._family: dict[tuple[str, str, str | None], list[Name]] = {}
        self._interests: dict[tuple[str, str, int], tuple[list[dict], list[float]]] = {}
        # (origin, romanized family name) → (the form's Name, the masculine table name, feminine?)
        self.family_forms: dict[str, dict[str, tuple[Name, str, bool]]] = {}
        for loc, names in cat.family_names.items():
            forms = self.family_forms[loc] = {}
            for n in names:
                forms[n[0]] = (n, n[0], False)
                fem = cat.feminine.get((loc, n[0]))
                if fem:
                    forms[fem[0]] = (fem, n[0], True)

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

    def qualified_at(self, role: dict, locale: str) -> int:
        """The earliest age a licensed role is held in this locale (0: no licence needed)."""
        if not role["training_years"]:
            return 0
        years = self.cat.qualifications.get(
            (role["base"] or role["occupation"], locale), role["training_years"]
        )
        return SCHOOL_LEAVING_AGE + years

    def occupations(self, locale: str, status: str, age: int) -> tuple[list[dict], list[float]]:
        hit = self._roles.get((locale, status, age))
        if hit is None:
            fit = [
                o
                for o in self._by_status[status]
                if o["min_age"] <= age <= o["max_age"]
                and age >= self.qualified_at(o, locale)
                and faith_weight(self.cat, o["faith"], locale) > 0
            ]
            if not fit:
                raise UserError(
                    f"seed table occupations.csv has no {status} occupation for age {age} in {locale}: "
                    "add one"
                )
            weights = [o["weight"] * faith_weight(self.cat, o["faith"], locale) for o in fit]
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

    def languages(
        self, locale: str, without: str | None = None
    ) -> tuple[list[str], list[float], list[tuple[str, float]]]:
        """(first languages, their cumulative shares, additional languages) of a locale; `without` a language
        (a newcomer's: the local one they are learning), the first languages written to an assistant."""
        hit = self._languages.get((locale, without))
        if hit is None:
            table = self.cat.languages[locale]
            mains = [
                (lang, s)
                for lang, s in table["main"]
                if without is None or (lang != without and lang in self.written)
            ]
            hit = self._languages[(locale, without)] = (
                [lang for lang, _ in mains],
                list(accumulate(s for _, s in mains)),
                [(lang, s) for lang, s in table["other"] if lang != without],
            )
        return hit

    def speakers(self, locale: str, language: str | None) -> float:
        """The share of a locale's people who speak a language (first, or additional for the others)."""
        table = self.cat.languages[locale]
        total = sum(s for _, s in table["main"])
        first = sum(s for lang, s in table["main"] if lang == language) / total
        other = sum(s for lang, s in table["other"] if lang == language)
        return first + (1 - first) * other

    def corridors(self, locale: str, background: str) -> tuple[list[str], list[float]]:
        """The origins an immigrant of this background in `locale` comes from, by migrant stock: a newcomer
        (who does not speak the local language yet) only from where fewer than half speak it and some first
        language written to an assistant is another (no Mexican learning Spanish in Spain)."""
        hit = self._corridors.get((locale, background))
        if hit is None:
            local = self.local_language.get(locale)
            rows = [
                (origin, stock)
                for origin, stock in self.cat.migration.get(locale, [])
                if background != "newcomer"
                or (self.speakers(origin, local) < NEWCOMER_MAX_SPEAKERS and self.languages(origin, local)[0])
            ]
            hit = self._corridors[(locale, background)] = (
                [o for o, _ in rows],
                list(accumulate(s for _, s in rows)),
            )
        return hit

    def background_weight(self, locale: str, background: str | None) -> float:
        """An immigration hint's weight: IMMIGRANT_SCALE x the share of residents born in a usable origin."""
        if background is None:
            return 1.0
        origins, cum = self.corridors(locale, background)
        if not origins:
            return 0.0
        return IMMIGRANT_SCALE * cum[-1] / (self.locale[locale]["population"] * 1000)

    def hint_weight(self, rule: dict, locale: str) -> float:
        """A hint's weight in a locale (1 for most): its faith's share, its locales, its immigrants."""
        if rule["locales"] is not None and locale not in rule["locales"]:
            return 0.0
        return faith_weight(self.cat, rule["faith"], locale) * self.background_weight(
            locale, rule["background"]
        )

    def hint_draw(
        self, locale: str, gender: str, employment: str, stage: str, sector: str, faith: str | None
    ) -> tuple[list[dict], list[float]]:
        """The hints that fit this person but for the age, with their cumulative weights in the locale."""
        key = (locale, gender, employment, stage, sector, faith)
        hit = self._hints.get(key)
        if hit is None:
            group = self._hint_groups.get(key[1:])
            if group is None:  # the rules that fit this profile, in any locale
                group = self._hint_groups[key[1:]] = [
                    h
                    for h in self.cat.hint_rules
                    if _hint_fits_but_age(h, gender, employment, stage, sector)
                    and not _faiths_differ(h["faith"], faith)
                ]
            weight = self._hint_weights.get(locale)
            if weight is None:
                weight = self._hint_weights[locale] = {
                    h["hint"]: self.hint_weight(h, locale) for h in self.cat.hint_rules
                }
            rules = [h for h in group if weight[h["hint"]] > 0]
            hit = self._hints[key] = (rules, list(accumulate(weight[h["hint"]] for h in rules)))
        return hit

    def hint(
        self,
        rng: random.Random,
        locale: str,
        age: int,
        gender: str,
        employment: str,
        stage: str,
        sector: str,
        faith: str | None,
    ) -> dict:
        """One hint, weighted, among those that fit this person: a draw from the hints that fit all but the
        age, again until one fits the age (the same distribution as drawing among the fitting ones)."""
        rules, cum = self.hint_draw(locale, gender, employment, stage, sector, faith)
        for _ in range(MAX_HINT_DRAWS):
            rule = _pick(rng, rules, cum) if rules else None
            if rule is None:
                break
            if rule["min_age"] <= age <= rule["max_age"]:
                return rule
        fit = [h for h in rules if h["min_age"] <= age <= h["max_age"]]
        if not fit:
            raise UserError(
                f"seed table seed_hints.csv has no hint for age {age}, {gender}, {employment}, {stage}, "
                f"{sector} in {locale}: add one with '*' eligibility"
            )
        return _pick(rng, fit, list(accumulate(self._hint_weights[locale][h["hint"]] for h in fit)))

    def given_names(self, origin: str, gender: str, faith: str | None) -> list[Name]:
        """The given names someone of this gender and faith can bear in `origin` (see `_faith_names`)."""
        key = (origin, gender, faith)
        hit = self._given.get(key)
        if hit is None:
            cat = self.cat
            own = cat.given_names.get((origin, gender)) or [
                n for (loc, _), names in cat.given_names.items() if loc == origin for n in names
            ]
            hit = self._given[key] = _faith_names(
                own, lambda n: cat.given_faiths.get((origin, n[0]), frozenset()), faith
            )
        return hit

    def family_names(self, origin: str, given: str, faith: str | None) -> list[Name]:
        """The family names that go with this given name (one community) and faith in `origin`."""
        key = (origin, given, faith)
        hit = self._family.get(key)
        if hit is None:
            cat = self.cat
            mine = cat.given_faiths.get((origin, given), frozenset())
            tags = lambda n: cat.family_faiths.get((origin, n[0]), frozenset())  # noqa: E731
            hit = self._family[key] = [
                n
                for n in _faith_names(cat.family_names[origin], tags, faith)
                if not mine or not tags(n) or tags(n) & mine
            ]
        return hit

    def interest_pool(self, locale: str, origin: str, age: int) -> tuple[list[dict], list[float]]:
        """The interests that fit this age, weighted in the locale (an immigrant's: or the origin's)."""
        key = (locale, origin, age)
        hit = self._interests.get(key)
        if hit is None:
            rules, weights = [], []
            for r in self.cat.interest_rules:
                if r["min_age"] <= age <= r["max_age"]:
                    w = max(interest_weight(self.cat, r, loc) for loc in {locale, origin})
                    if w > 0:
                        rules.append(r)
                        weights.append(w)
            hit = self._interests[key] = (rules, list(accumulate(weights)))
        return hit


def _faiths_differ(a: str | None, b: str | None) -> bool:
    """Two specific faiths that are not the same (`religious` and none go with any)."""
    return a not in (None, RELIGIOUS) and b not in (None, RELIGIOUS) and a != b


def person_faith(hint: dict | None, role: dict | None) -> str | None:
    """The specific faith a skeleton's hint or occupation binds it to (None: none; `religious` is none)."""
    for faith in (hint["faith"] if hint else None, role["faith"] if role else None):
        if faith not in (None, RELIGIOUS):
            return faith
    return None


def _faith_names(names: list[Name], tags: Callable[[Name], frozenset[str]], faith: str | None) -> list[Name]:
    """Without a faith, every name; with one, the names marking it, else (none does) those marking none."""
    if faith is None:
        return list(names)
    return [n for n in names if faith in tags(n)] or [n for n in names if not tags(n)]


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
        hit = _Lookups(cat)
        _check_names(hit)
        _LOOKUPS[id(cat)] = hit
    return hit


def _check_names(look: _Lookups) -> None:
    """Every person the tables can make gets a name: each gender a given name, and each given name a family
    name, for no faith and for each faith a row of the locale (or an immigrant's occupation) may bind."""
    cat = look.cat
    bound = {o["faith"] for o in cat.occupations} - {None, RELIGIOUS}
    genders = [g["value"] for g in cat.attributes["genders"]]
    for code in look.locale:
        faiths = {None} | bound
        faiths |= {h["faith"] for h in cat.hint_rules if look.hint_weight(h, code) > 0} - {RELIGIOUS}
        for faith in faiths:
            for gender in genders:
                for given in _some(
                    look.given_names(code, gender, faith), "given_names.csv", code, gender, faith
                ):
                    _some(look.family_names(code, given[0], faith), "family_names.csv", code, given[0], faith)


def sample_skeleton(
    cat: Catalogue,
    index: int,
    seed: int,
    *,
    n_sessions: int,
    n_changes: int,
    locales: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
    n_fine: int = 0,
    n_fine_changes: int = 0,
) -> SeedRow:
    """One persona skeleton from its own seed: status and occupation conditioned on locale, gender and age.

    `languages` (ISO 639-1 codes) keeps only people who write to an assistant in one of them: a draw
    whose person speaks none is drawn again from a seed derived from this one, and the row stores the
    seed that made it, so `sample_skeleton(cat, index, row.seed, languages=...)` gives the row back.
    `n_fine` fine-grained preferences (and `n_fine_changes` changes of them) come from an RNG of their own
    (`fine_rng`), so the rest of a skeleton is the same with or without them.
    """
    if not languages:
        row = _sample_skeleton(cat, index, seed, n_sessions, n_changes, locales, None)
        assert row is not None
        return _with_fine(cat, row, n_fine, n_fine_changes, n_sessions)
    allowed = frozenset(languages)
    places = writing_locales(cat, locales, allowed)
    draw = seed
    for attempt in range(MAX_LANGUAGE_DRAWS):
        row = _sample_skeleton(cat, index, draw, n_sessions, n_changes, places, allowed)
        if row is not None:
            return _with_fine(cat, row, n_fine, n_fine_changes, n_sessions)
        draw = row_seed(seed, -1 - attempt)
    raise UserError(
        f"languages: persona {index} drew no writer of {', '.join(sorted(allowed))} in {MAX_LANGUAGE_DRAWS} "
        f"draws from {', '.join(places)}: restrict --locales to where the language is spoken"
    )


def fine_rng(seed: int) -> random.Random:
    """The RNG of a row's fine-grained preferences (independent of the rest of its draws)."""
    return random.Random(seed ^ 0xF1E5EED)


def _with_fine(cat: Catalogue, row: SeedRow, n_fine: int, n_changes: int, n_sessions: int) -> SeedRow:
    if n_fine <= 0:
        return row
    fine, planned = plan_fine(fine_rng(row.seed), cat, row, n_fine, n_changes, n_sessions)
    return row.model_copy(update={"fine": fine, "planned_fine": planned})


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
    life_stage = life_stage_for(age, employment)
    # the hint before the name: an immigration hint draws the person's origin, a faith-bound one their names
    hint = look.hint(
        rng, code, age, gender, employment, life_stage, occupation["sector"], occupation["faith"]
    )
    background = hint["background"]
    origin = _pick(rng, *look.corridors(code, background)) if background else code
    home = look.locale[origin]
    faith = person_faith(hint, occupation)
    given = rng.choice(
        _some(look.given_names(origin, gender, faith), "given_names.csv", origin, gender, faith)
    )
    family = rng.choice(
        _some(look.family_names(origin, given[0], faith), "family_names.csv", origin, given[0], faith)
    )
    feminine = cat.feminine.get((origin, family[0]))
    if feminine and gender != "male" and (gender == "female" or rng.random() < 0.5):
        family = feminine  # the women's form (Polish -ska); a nonbinary person has either
    name, romanized = full_name(given, family, home["name_order"])
    local = look.local_language[code]
    mains, main_cum, others = look.languages(origin, local if background == "newcomer" else None)
    languages = [_pick(rng, mains, main_cum)]
    for language, share in others:  # one draw per listed language, held already or not
        if rng.random() < share and language not in languages:
            languages.append(language)
    if background == "settled" and local and local not in languages:
        languages.append(local)  # years in the country, and a language test for citizenship
    row = SeedRow(
        persona_id=f"p{index:06d}",
        index=index,
        seed=seed,
        locale=code,
        country=locale["country"],
        nationality=home["nationality"],
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
        values_interests=_interests(rng, look, code, origin, age, languages, hint["facts"]),
        formality=rng.choice(attrs["formality"]),
        verbosity=rng.choice(attrs["verbosity"]),
        proactivity=rng.choice(attrs["proactivity"]),
        emotional_tone=rng.choice(attrs["emotional_tone"]),
        hint=hint["hint"],
        start_date=FIRST_DAY + timedelta(days=rng.randint(0, 364)),
        # 1..14 days, uniform; `random()` is several times cheaper than `randint` for the many gaps of a row
        session_gaps_days=[0] + [1 + int(rng.random() * 14) for _ in range(n_sessions - 1)],
        planned_changes=[],
    )
    # drawn last, from the same RNG: a change must fit the person sampled above (personaloom.stages.drift)
    planned = plan_changes(rng, cat, row, n_changes, n_sessions)
    # then the language they write to an assistant in (drawn after everything else, so the rest of a
    # skeleton is the same whether or not a build restricts its languages)
    languages, written = interaction_language(rng, look, home, languages, allowed)
    if written is None:
        return None
    return row.model_copy(
        update={"planned_changes": planned, "languages": languages, "interaction_language": written}
    )


MAX_INTEREST_DRAWS = 1_000


def _some(names: list[Name], table: str, origin: str, who: str, faith: str | None) -> list[Name]:
    if not names:
        raise UserError(
            f"seed table {table} has no name for {who} ({faith or 'any faith'}) in {origin}: add one"
        )
    return names


def _interests(
    rng: random.Random,
    look: _Lookups,
    locale: str,
    origin: str,
    age: int,
    languages: list[str],
    facts: frozenset[str],
) -> list[str]:
    """3-5 distinct interests weighted for the locale and age, none learning a language the person speaks
    nor stating a fact that conflicts with the hint's (grandchildren for someone expecting a first child)."""
    rules, cum = look.interest_pool(locale, origin, age)
    want = rng.randint(3, 5)
    chosen: list[str] = []
    held = fact_closure(look.cat, facts)
    for _ in range(MAX_INTEREST_DRAWS):
        if len(chosen) == want:
            return chosen
        r = _pick(rng, rules, cum)
        if r["item"] in chosen or (r["learns"] and r["learns"] in languages):
            continue
        if r["facts"] and fact_conflicts(look.cat, held | r["facts"]):
            continue
        chosen.append(r["item"])
        held = fact_closure(look.cat, held | r["facts"])
    if len(chosen) == want:
        return chosen
    raise UserError(
        f"seed table values_interests.csv has too few interests for age {age} in {locale}: add some"
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
    n_fine: int = 0,
    n_fine_changes: int = 0,
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
            n_fine=n_fine,
            n_fine_changes=n_fine_changes,
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
        n_fine=cfg.fine_preferences,
        n_fine_changes=cfg.fine_changes_per_persona,
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


def _parse_name(look: _Lookups, row: SeedRow, origin: str) -> tuple[Name, Name, str, bool] | None:
    """(given, family as written, the family name's table form, feminine form?) that make the row's name in
    the origin's order and script, or None when no pair of the origin's tables does."""
    cat = look.cat
    order = look.locale[origin]["name_order"]
    romanized = row.name_romanized or row.name
    own = cat.given_names.get((origin, row.gender)) or [
        n for (loc, _), names in cat.given_names.items() if loc == origin for n in names
    ]
    forms = look.family_forms.get(origin, {})
    for given in own:
        if order == "given_first":
            rest = romanized.removeprefix(given[0] + " ") if romanized.startswith(given[0] + " ") else None
        else:
            rest = romanized.removesuffix(" " + given[0]) if romanized.endswith(" " + given[0]) else None
        form = forms.get(rest) if rest is not None else None
        if form is not None and full_name(given, form[0], order) == (row.name, romanized):
            return given, form[0], form[1], form[2]
    return None


def skeleton_violations(row: SeedRow, cat: Catalogue) -> list[tuple[str, str]]:
    """Every rule of SKELETON_INVARIANTS the row breaks, as (invariant name, detail); [] when it is sound."""
    look = _lookups(cat)
    found: list[tuple[str, str]] = []
    loc = look.locale.get(row.locale)
    origin = look.origin_of.get(row.nationality)
    if loc is None or loc["country"] != row.country or origin is None:
        found.append(("locale_known", f"{row.locale} / {row.country} / {row.nationality}"))
    role = look.roles.get(row.occupation)
    if role is None or row.employment not in role["statuses"] or role["sector"] != row.sector:
        found.append(("occupation_known", f"{row.occupation!r} ({row.sector}) as {row.employment}"))
    if role is not None and not role["min_age"] <= row.age <= role["max_age"]:
        found.append(
            ("occupation_age", f"{row.occupation} at {row.age}: {role['min_age']}-{role['max_age']}")
        )
    if role is not None and row.age < (earliest := look.qualified_at(role, row.locale)):
        found.append(
            (
                "qualification_age",
                f"{row.occupation} ({role['licence']}) at {row.age} < {earliest} in {row.locale}",
            )
        )
    if role is not None and faith_weight(cat, role["faith"], row.locale) <= 0:
        found.append(("occupation_locale", f"{row.occupation} ({role['faith']}) in {row.locale}"))
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
    if rule is not None and loc is not None and look.hint_weight(rule, row.locale) <= 0:
        found.append(("hint_locale", f"{row.hint!r} in {row.locale}"))
    if rule is not None and role is not None and _faiths_differ(rule["faith"], role["faith"]):
        found.append(
            ("faith_consistent", f"{row.hint!r} ({rule['faith']}) as {row.occupation} ({role['faith']})")
        )
    home = origin if origin is not None and origin in look.locale else row.locale
    if loc is not None and home in look.locale:
        found += _name_violations(look, row, home, rule, role)
        found += _background_violations(look, row, home, rule)
    langs = row.languages
    mains, known = look.mains.get(home, set()), look.known.get(home, set())
    if home != row.locale and row.locale in look.local_language:
        known = known | {look.local_language[row.locale]}
    if not langs or langs[0] not in mains or not set(langs) <= known or len(set(langs)) != len(langs):
        found.append(("languages_locale", f"{langs} of {home} (main: {', '.join(sorted(mains))})"))
    written = {look.written[lang] for lang in langs if lang in look.written}
    # None: a row sampled before interaction languages existed (its text is English), nothing to check
    if row.interaction_language is not None and row.interaction_language not in written:
        found.append(("interaction_language", f"{row.interaction_language} for {langs}"))
    found += _interest_violations(cat, look, row, home)
    if conflicts := fact_conflicts(cat, person_facts(cat, row)):
        found.append(("facts_consistent", f"{row.hint!r} with {row.values_interests}: {conflicts}"))
    found += [(name, detail) for name, detail in plan_violations(cat, row) if name in SKELETON_INVARIANTS]
    return found


def _name_violations(
    look: _Lookups, row: SeedRow, origin: str, hint: dict | None, role: dict | None
) -> list[tuple[str, str]]:
    parsed = _parse_name(look, row, origin)
    if parsed is None:
        return [("name_origin", f"{row.name!r} ({row.name_romanized}) is no {row.gender} name of {origin}")]
    found = []
    given, family, table_form, is_feminine = parsed
    if (origin, table_form) in look.cat.feminine and (
        (row.gender == "female" and not is_feminine) or (row.gender == "male" and is_feminine)
    ):
        found.append(("surname_gender", f"{row.gender} {family[0]} ({origin})"))
    faith = person_faith(hint, role)
    if given not in look.given_names(origin, row.gender, faith) or not any(
        n[0] == table_form for n in look.family_names(origin, given[0], faith)
    ):
        found.append(("name_faith", f"{given[0]} {table_form} ({origin}) for {faith or 'no faith'}"))
    return found


def _background_violations(
    look: _Lookups, row: SeedRow, origin: str, hint: dict | None
) -> list[tuple[str, str]]:
    background = hint["background"] if hint else None
    if origin == row.locale:
        return (
            [("immigrant_background", f"{row.hint!r} with the nationality of {row.locale}")]
            if background
            else []
        )
    if background is None:
        return [("immigrant_background", f"{row.nationality} in {row.locale} without an immigration hint")]
    found = []
    if origin not in look.corridors(row.locale, background)[0]:
        found.append(("immigrant_background", f"{background} from {origin} in {row.locale}: no corridor"))
    local = look.local_language.get(row.locale)
    if (background == "newcomer") == (local in row.languages):
        found.append(("immigrant_background", f"{background} in {row.locale} with languages {row.languages}"))
    return found


def _interest_violations(cat: Catalogue, look: _Lookups, row: SeedRow, origin: str) -> list[tuple[str, str]]:
    found = []
    added = [
        p.target for p in row.planned_changes if p.field == "Personality.Values_and_Interests" and p.target
    ]
    for item in [*row.values_interests, *added]:
        if item not in look.interests:
            found.append(("interest_locale", f"{item!r} is not in values_interests.csv"))
        elif why := interest_misfit(cat, row, item, origin):
            found.append(why)
    return found


def _share(rows: Sequence[SeedRow], hit: Callable[[SeedRow], bool]) -> str:
    return f"{sum(map(hit, rows)) / len(rows):.3f} of {len(rows):,}" if rows else "- (nobody)"


def audit_summary(rows: Sequence[SeedRow], cat: Catalogue) -> list[str]:
    """A short audit of a sample: status by age band, students, retirees, languages, locales, invariants, and
    the joint checks (names, immigrants, faith, interests, life events), re-run by `personaloom verify`."""
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
    lines += _joint_summary(rows, cat)
    per_row = [
        {name for name, _ in skeleton_violations(r, cat)}
        | {name for name, _ in plan_violations(cat, r) if name == "change_event_eligible"}
        for r in rows
    ]
    broken = Counter(name for names in per_row for name in names)
    bad = sum(1 for names in per_row if names)
    detail = f" ({', '.join(f'{k} {v}' for k, v in broken.most_common())})" if broken else ""
    lines.append(f"rows breaking a skeleton invariant: {bad}{detail}")
    joint = [*JOINT_CHECKS, "change_event_eligible"]
    lines.append("joint checks, rows breaking each: " + ", ".join(f"{k} {broken[k]}" for k in joint))
    return lines


# the rules of issue 30: what a demographer checks in the joint draws (their counts close the audit)
JOINT_CHECKS = (
    "surname_gender",
    "name_origin",
    "name_faith",
    "immigrant_background",
    "hint_locale",
    "occupation_locale",
    "faith_consistent",
    "qualification_age",
    "interest_age",
    "interest_locale",
    "facts_consistent",
    "event_history",
    "work_change_learnable",
)


def _joint_summary(rows: Sequence[SeedRow], cat: Catalogue) -> list[str]:
    look = _lookups(cat)
    n = len(rows)
    lines = []
    gendered = {(loc, name) for loc, name in cat.feminine} | {
        (loc, f[0]) for (loc, _), f in cat.feminine.items()
    }
    women = [r for r in rows if r.gender == "female" and _surname_key(look, r) in gendered]
    if women:
        fem = {(loc, f[0]) for (loc, _), f in cat.feminine.items()}
        lines.append(
            "women whose surname has a feminine form (Polish -ska) who bear it: "
            f"{_share(women, lambda r: _surname_key(look, r) in fem)}"
        )
    movers = [r for r in rows if look.origin_of.get(r.nationality) != r.locale]
    origins = Counter(look.origin_of.get(r.nationality) for r in movers).most_common(3)
    lines.append(
        f"immigrants (another locale's nationality): {len(movers) / n:.2%}"
        + (f", from {', '.join(f'{o} {c}' for o, c in origins)}" if movers else "")
    )
    bound = Counter(
        f for r in rows if (f := person_faith(look.hints.get(r.hint), look.roles.get(r.occupation)))
    )
    lines.append(
        "hint or occupation bound to a faith, per 1,000: "
        + (", ".join(f"{f} {1000 * c / n:.1f}" for f, c in bound.most_common()) or "none")
    )
    changed = sum(any(changes_status(e, s) for e, s in _status_steps(cat, r)) for r in rows)
    lines.append(f"a planned event changes the work status (the work routine follows): {changed / n:.1%}")
    return lines


def _surname_key(look: _Lookups, row: SeedRow) -> tuple[str | None, str]:
    """(origin locale, the last word of the romanized name): where a given-first family name is found."""
    return look.origin_of.get(row.nationality), (row.name_romanized or row.name).split()[-1]


def _status_steps(cat: Catalogue, row: SeedRow) -> list[tuple[dict, str]]:
    """(event, work status before it) for each planned change whose event is known."""
    events = _lookups(cat).events
    out, status = [], row.employment
    for p in row.planned_changes:
        e = events.get(p.event)
        if e is not None:
            out.append((e, status))
            if changes_status(e, status):
                status = e["work_status"]
    return out
