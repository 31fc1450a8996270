"""The seed tables shipped in seeds/, loaded and checked once (the I/O edge of stage 1)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_args

import polars as pl
from pydantic import ValidationError

from personaloom.errors import UserError
from personaloom.paths import SEEDS_DIR
from personaloom.schemas.records import PERSONA_PATHS, ApiSpec, CatalogueScene, Employment, LifeStage

EMPLOYMENT: tuple[str, ...] = get_args(Employment)
LIFE_STAGES: tuple[str, ...] = get_args(LifeStage)
# the qualification-age rule: a licensed job needs `training_years` after leaving school at this age
SCHOOL_LEAVING_AGE = 18
# faiths of religions.csv that a name, hint or occupation can be bound to; `religious` rows follow the share
# who say religion is very important in their lives (column very_important)
FAITHS: tuple[str, ...] = ("christian", "muslim", "hindu", "buddhist", "jewish", "sikh")
RELIGIOUS = "religious"
MIN_FAITH_SHARE = 0.001  # a faith held by fewer people than this in a locale binds no row there
# an immigration hint weighs IMMIGRANT_SCALE x the locale's residents born in a covered origin (migration.csv)
IMMIGRANT_SCALE = 10.0
BACKGROUNDS = (
    "newcomer",
    "settled",
)  # a recent arrival who does not speak the local language yet; a settled one

TABLES: dict[str, tuple[str, ...]] = {
    "locales.csv": (
        "locale",
        "country",
        "nationality",
        "weight",
        "agriculture_share",
        "name_order",
        "english_share",
        "population",
    ),
    "given_names.csv": ("locale", "gender", "name", "native", "faith"),
    "family_names.csv": ("locale", "name", "native", "feminine", "feminine_native", "faith"),
    "occupations.csv": (
        "occupation",
        "sector",
        "min_age",
        "max_age",
        "domain_vocabulary",
        "status",
        "weight",
        "licence",
        "training_years",
        "apprenticeship",
        "faith",
    ),
    "values_interests.csv": ("item", "category", "min_age", "max_age", "faith", "facts", "learns"),
    "seed_hints.csv": (
        "hint",
        "category",
        "min_age",
        "max_age",
        "gender",
        "employment",
        "life_stages",
        "sectors",
        "faith",
        "background",
        "locales",
        "facts",
    ),
    "employment_status.csv": ("locale", "gender", "min_age", "max_age", *EMPLOYMENT),
    "languages.csv": ("locale", "language", "main", "share"),
    "language_codes.csv": ("language", "code", "assistant"),
    "scenes.csv": ("scene_id", "category", "title", "description", "apis"),
    "life_events.csv": (
        "event",
        "tags",
        "min_age",
        "max_age",
        "employment",
        "life_stages",
        "work_status",
        "excludes",
        "sets",
    ),
    "religions.csv": ("locale", *FAITHS, "folk", "other", "unaffiliated", "very_important"),
    "migration.csv": ("locale", "origin", "stock"),
    "interest_locales.csv": ("item", "locale", "weight"),
    "qualifications.csv": ("occupation", "locale", "training_years"),
    "facts.csv": ("fact", "implies", "conflicts"),
}
ATTRIBUTE_KEYS = (
    "genders",
    "age_bands",
    "mbti",
    "formality",
    "verbosity",
    "proactivity",
    "emotional_tone",
    "behavior_engagement",
    "usage",
    "emotion",
    "purchase",
    "preferred_styles",
    "preferred_formats",
    "preferred_workflows",
)
CHANGE_OPS = {"step", "switch", "replace", "add", "remove"}
# Columns that may be empty: a name's native form is blank where the locale writes the Latin script, its
# feminine form where the language has none, its faith where the name marks none.
MAY_BE_EMPTY = frozenset({"native", "feminine", "feminine_native", "faith"})
NAME_ORDERS = ("given_first", "family_first")
# A name: (romanized or Latin form, native-script form or "" when the locale writes Latin script).
Name = tuple[str, str]


@dataclass(frozen=True)
class Catalogue:
    locales: list[dict[str, Any]]
    given_names: dict[tuple[str, str], list[Name]]
    family_names: dict[str, list[Name]]
    occupations: list[dict[str, Any]]
    values_interests: list[str]
    hints: list[str]
    scenes: list[CatalogueScene]
    apis: dict[str, ApiSpec]
    attributes: dict[str, Any]
    change_kinds: list[dict[str, Any]] = field(default_factory=list)  # seeds/change_kinds.json
    life_events: list[dict[str, Any]] = field(default_factory=list)  # seeds/life_events.csv
    # (locale, gender) → [(min_age, max_age, {status: share})] from seeds/employment_status.csv
    employment_status: dict[tuple[str, str], list[tuple[int, int, dict[str, float]]]] = field(
        default_factory=dict
    )
    # locale → {"main": [(language, share)], "other": [(language, share)]} from seeds/languages.csv
    languages: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    # language name → (ISO 639-1 code or None, written to an assistant) from seeds/language_codes.csv
    language_codes: dict[str, tuple[str | None, bool]] = field(default_factory=dict)
    hint_rules: list[dict[str, Any]] = field(default_factory=list)  # seed_hints.csv with eligibility
    # values_interests.csv with ages, faith, facts and the language an item learns; interest_locales.csv
    interest_rules: list[dict[str, Any]] = field(default_factory=list)
    interest_weights: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # item -> locale or * -> weight
    # locale -> faith (and `religious`: religion very important) -> share of the people (religions.csv)
    religions: dict[str, dict[str, float]] = field(default_factory=dict)
    migration: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # locale -> [(origin, stock)]
    qualifications: dict[tuple[str, str], int] = field(
        default_factory=dict
    )  # (job, locale) -> training years
    # fact -> {"implies": facts, "conflicts": facts} (facts.csv), conflicts made symmetric
    facts: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    # (locale, name) -> faiths the name marks (given_names.csv, family_names.csv `faith`; empty: none)
    given_faiths: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    family_faiths: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    feminine: dict[tuple[str, str], Name] = field(default_factory=dict)  # (locale, surname) -> women's form
    digest: str = field(default="", compare=False)


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split(";") if p.strip()]


def _read_csv(root: Path, name: str) -> pl.DataFrame:
    path = root / name
    if not path.exists():
        raise UserError(f"seed table {path} is missing: restore it from the repository or pass --seeds DIR")
    try:
        df = pl.read_csv(path, infer_schema=False)
    except Exception as e:  # polars raises several kinds for a broken CSV
        raise UserError(
            f"seed table {path} is not a readable CSV ({type(e).__name__}): fix or restore it"
        ) from None
    missing = [c for c in TABLES[name] if c not in df.columns]
    if missing:
        raise UserError(
            f"seed table {path} lacks column(s) {', '.join(missing)}: expected {', '.join(TABLES[name])}"
        )
    nulls = [c for c in TABLES[name] if c not in MAY_BE_EMPTY and df[c].null_count()]
    if nulls:
        raise UserError(f"seed table {path} has empty values in column(s) {', '.join(nulls)}: fill them")
    return df


def _read_json(root: Path, name: str) -> Any:
    path = root / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"seed file {path} is missing: restore it from the repository") from None
    except json.JSONDecodeError as e:
        raise UserError(f"seed file {path} is not valid JSON (line {e.lineno}): fix it") from None


def load_catalogue(root: Path = SEEDS_DIR) -> Catalogue:
    """Read and check every seed table; a broken table is a one-line UserError naming file and column.

    Loaded once per process and folder state: the CLI checks the tables before Prefect starts, and the
    flow it then runs in the same process reuses that load.
    """
    root = Path(root).resolve()
    state = tuple(
        (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.glob("*")) if p.is_file()
    )
    return _load_catalogue(root, state)


@cache
def _load_catalogue(root: Path, state: tuple[tuple[str, int, int], ...]) -> Catalogue:
    t = {name: _read_csv(root, name) for name in TABLES}
    attributes = _read_json(root, "attributes.json")
    missing = [k for k in ATTRIBUTE_KEYS if k not in attributes]
    if missing:
        raise UserError(f"seed file {root / 'attributes.json'} lacks key(s) {', '.join(missing)}")
    try:
        apis = {a["name"]: ApiSpec.model_validate(a) for a in _read_json(root, "apis.json")}
    except (ValidationError, KeyError, TypeError) as e:
        raise UserError(
            f"seed file {root / 'apis.json'} has an invalid API spec: {str(e).splitlines()[0]}"
        ) from None

    given: dict[tuple[str, str], list[Name]] = {}
    given_faiths: dict[tuple[str, str], frozenset[str]] = {}
    for row in t["given_names.csv"].iter_rows(named=True):
        given.setdefault((row["locale"], row["gender"]), []).append((row["name"], row["native"] or ""))
        given_faiths[(row["locale"], row["name"])] = _faith_tags(root / "given_names.csv", row)
    family: dict[str, list[Name]] = {}
    family_faiths: dict[tuple[str, str], frozenset[str]] = {}
    feminine: dict[tuple[str, str], Name] = {}
    for row in t["family_names.csv"].iter_rows(named=True):
        family.setdefault(row["locale"], []).append((row["name"], row["native"] or ""))
        family_faiths[(row["locale"], row["name"])] = _faith_tags(root / "family_names.csv", row)
        if row["feminine"]:
            if bool(row["native"]) != bool(row["feminine_native"]):
                raise UserError(
                    f"seed table {root / 'family_names.csv'}: {row['name']!r} needs feminine_native exactly "
                    "where it has a native form"
                )
            feminine[(row["locale"], row["name"])] = (row["feminine"], row["feminine_native"] or "")
    locales = [
        _locale_row(root / "locales.csv", r)
        for r in t["locales.csv"].iter_rows(named=True)
        if r["locale"] in family
    ]
    if not locales:
        raise UserError(f"seed tables in {root}: no locale of locales.csv has family names")
    codes = [loc["locale"] for loc in locales]
    nationalities = Counter(loc["nationality"] for loc in locales)
    if max(nationalities.values()) > 1:
        raise UserError(
            f"seed table {root / 'locales.csv'}: column nationality names "
            f"{nationalities.most_common(1)[0][0]!r} twice: a nationality tells an immigrant's origin, so "
            "each belongs to one locale"
        )
    facts = _facts(root / "facts.csv", t["facts.csv"])
    skeleton = _skeleton_tables(root, t, locales, attributes, facts)
    scenes = [
        CatalogueScene(**{**r, "apis": _split(r["apis"])}) for r in t["scenes.csv"].iter_rows(named=True)
    ]
    unknown = sorted({a for s in scenes for a in s.apis} - apis.keys())
    if unknown:
        raise UserError(
            f"seed table {root / 'scenes.csv'} names API(s) not in apis.json: {', '.join(unknown[:5])}"
        )
    change_kinds, life_events = _drift_tables(root, facts)
    religions = _religions(root / "religions.csv", t["religions.csv"], codes)
    migration = _migration(root / "migration.csv", t["migration.csv"], codes)
    interests = _interests(root, t, codes, facts)
    _check_bound_rows(root, skeleton, religions, migration, codes, facts)
    qualifications = _qualifications(root / "qualifications.csv", t["qualifications.csv"], skeleton, codes)
    digest = hashlib.sha256()
    for p in sorted(root.glob("*.csv")) + sorted(root.glob("*.json")):
        digest.update(p.name.encode() + p.read_bytes())
    return Catalogue(
        locales=locales,
        given_names=given,
        family_names=family,
        occupations=skeleton["occupations"],
        values_interests=t["values_interests.csv"]["item"].to_list(),
        hints=[h["hint"] for h in skeleton["hint_rules"]],
        scenes=scenes,
        apis=apis,
        attributes=attributes,
        change_kinds=change_kinds,
        life_events=life_events,
        employment_status=skeleton["employment_status"],
        languages=skeleton["languages"],
        language_codes=skeleton["language_codes"],
        hint_rules=skeleton["hint_rules"],
        interest_rules=interests[0],
        interest_weights=interests[1],
        religions=religions,
        migration=migration,
        qualifications=qualifications,
        facts=facts,
        given_faiths=given_faiths,
        family_faiths=family_faiths,
        feminine=feminine,
        digest=digest.hexdigest()[:16],
    )


def _locale_row(path: Path, r: dict[str, Any]) -> dict[str, Any]:
    if r["name_order"] not in NAME_ORDERS:
        raise UserError(
            f"seed table {path}: column name_order of {r['locale']} holds {r['name_order']!r}: "
            f"use {' or '.join(NAME_ORDERS)}"
        )
    return {
        **r,
        "weight": _number(path, "weight", r["weight"]),
        "agriculture_share": _number(path, "agriculture_share", r["agriculture_share"], 1),
        "english_share": _number(path, "english_share", r["english_share"], 1),
        "population": _number(path, "population", r["population"]),
    }


def _drift_tables(
    root: Path, facts: dict[str, dict[str, frozenset[str]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The change catalogue and the life events that motivate changes, checked (see stages/drift.py)."""
    path = root / "change_kinds.json"
    kinds = _read_json(root, "change_kinds.json")
    for i, k in enumerate(kinds if isinstance(kinds, list) else [None]):
        if not isinstance(k, dict) or not {"kind", "field", "op", "direction", "tags"} <= k.keys():
            raise UserError(f"seed file {path} entry {i} needs kind, field, op, direction and tags")
        if k["field"] not in PERSONA_PATHS or k["field"].startswith("Demographics."):
            raise UserError(
                f"seed file {path} entry {k['kind']}: field {k['field']!r} is not a learnable path"
            )
        if k["op"] not in CHANGE_OPS or (k["op"] == "step" and k.get("delta") not in (1, -1)):
            raise UserError(f"seed file {path} entry {k['kind']}: op must be one of {sorted(CHANGE_OPS)}")
        if k["op"] == "switch" and not k.get("to"):
            raise UserError(f"seed file {path} entry {k['kind']}: a switch names its target value in `to`")
        if k.get("status") is not None and (k["status"] not in EMPLOYMENT or k["op"] != "replace"):
            raise UserError(
                f"seed file {path} entry {k['kind']}: `status` names the work status a replace change follows"
            )
    events_path = root / "life_events.csv"
    df = _read_csv(root, "life_events.csv")
    events = [
        {
            "event": r["event"],
            "tags": set(_split(r["tags"])),
            "min_age": int(r["min_age"]),
            "max_age": int(r["max_age"]),
            "employment": None if r["employment"] == "*" else set(_split(r["employment"])),
            "life_stages": None if r["life_stages"] == "*" else set(_split(r["life_stages"])),
            "work_status": _one_of(events_path, "work_status", r["work_status"], EMPLOYMENT),
            "excludes": _fact_list(events_path, "excludes", r["excludes"], facts),
            "sets": _fact_list(events_path, "sets", r["sets"], facts),
        }
        for r in df.iter_rows(named=True)
    ]
    followed = {k["status"] for k in kinds if k.get("status")}
    unfollowed = sorted({e["work_status"] for e in events if e["work_status"]} - followed)
    if unfollowed:
        raise UserError(
            f"seed file {path}: no change kind with `status` follows work status(es) "
            f"{', '.join(unfollowed)} of life_events.csv: add one (a work-status event changes the work "
            "routine)"
        )
    return kinds, events


# ---------------------------------------------------------------- stage 1: the skeleton tables

RETIRED_MIN_AGE = 45  # the youngest a derived "retired X" may be; employment_status.csv decides who retires
APPRENTICE_AGES = (16, 40)  # ages of a derived "apprentice X" (the share comes from employment_status.csv)


def _number(path: Path, column: str, value: str, top: float | None = None) -> float:
    """A number in 0..top from a seed cell, or a one-line error naming the file and the column."""
    try:
        x = float(value)
    except ValueError:
        raise UserError(f"seed table {path}: column {column} holds {value!r}, not a number") from None
    if not 0 <= x <= (top if top is not None else float("inf")):
        bound = f"0..{top:g}" if top is not None else "0 or more"
        raise UserError(f"seed table {path}: column {column} holds {value!r}, outside {bound}")
    return x


def _whole(path: Path, column: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"seed table {path}: column {column} holds {value!r}, not a whole number") from None


def _choices(path: Path, column: str, value: str, allowed: Any) -> frozenset[str] | None:
    """`*` (anyone: None) or a `;` list whose items all belong to `allowed`."""
    if value.strip() == "*":
        return None
    items = frozenset(_split(value))
    bad = sorted(items - set(allowed)) if items else [value]
    if bad:
        raise UserError(
            f"seed table {path}: column {column} holds unknown value(s) {', '.join(map(repr, bad))}: "
            f"use '*' or a ';' list of {', '.join(sorted(allowed))}"
        )
    return items


def _derived(job: dict[str, Any], status: str) -> dict[str, Any]:
    """`retired X`, `unemployed X`, `apprentice X` from job X: the former job, or the trade being learned."""
    vocab = job["domain_vocabulary"][:3]
    role = {**job, "occupation": f"{status} {job['occupation']}", "statuses": frozenset({status})}
    role["base"] = job["occupation"]
    if status == "retired":
        role.update(min_age=max(RETIRED_MIN_AGE, job["min_age"] + 10), max_age=120)
        role["domain_vocabulary"] = [*vocab, "pension"]
    elif status == "unemployed":
        role["domain_vocabulary"] = [*vocab, "job applications"]
    else:
        role.update(min_age=APPRENTICE_AGES[0], max_age=APPRENTICE_AGES[1], licence="", training_years=0)
        role["domain_vocabulary"] = [*vocab, "apprenticeship"]
    return role


def _occupations(path: Path, df: pl.DataFrame) -> list[dict[str, Any]]:
    """Jobs, study and home roles as listed, plus the roles derived from each job (see seeds/README.md)."""
    listed = []
    for r in df.iter_rows(named=True):
        name = r["occupation"]
        statuses = _choices(path, "status", r["status"], EMPLOYMENT)
        if statuses is None:
            raise UserError(f"seed table {path}: column status of {name!r} must name statuses, not '*'")
        if r["apprenticeship"] not in ("yes", "no"):
            raise UserError(f"seed table {path}: column apprenticeship of {name!r} must be yes or no")
        role = {
            "occupation": name,
            "sector": r["sector"],
            "min_age": _whole(path, "min_age", r["min_age"]),
            "max_age": _whole(path, "max_age", r["max_age"]),
            "domain_vocabulary": _split(r["domain_vocabulary"]),
            "statuses": statuses,
            "weight": _number(path, "weight", r["weight"]),
            "licence": "" if r["licence"].strip() == "-" else r["licence"].strip(),
            "training_years": _whole(path, "training_years", r["training_years"]),
            "apprenticeship": r["apprenticeship"] == "yes",
            "faith": _faith_of(path, r["faith"]),
            "base": None,
        }
        if role["min_age"] > role["max_age"] or role["weight"] <= 0:
            raise UserError(f"seed table {path}: {name!r} needs min_age <= max_age and a weight above 0")
        if role["training_years"] and role["min_age"] < SCHOOL_LEAVING_AGE + role["training_years"]:
            raise UserError(
                f"seed table {path}: column min_age of {name!r} ({role['min_age']}) breaks the "
                f"qualification-age rule: at least {SCHOOL_LEAVING_AGE} + training_years "
                f"({role['training_years']})"
            )
        listed.append(role)
    roles = list(listed)
    for job in listed:
        if job["statuses"] & {"employed", "self_employed"}:
            roles.append(_derived(job, "retired"))
        if "employed" in job["statuses"]:
            roles.append(_derived(job, "unemployed"))
        if job["apprenticeship"]:
            roles.append(_derived(job, "apprentice"))
    seen: set[str] = set()
    for role in roles:
        if role["occupation"] in seen:
            raise UserError(
                f"seed table {path}: column occupation names {role['occupation']!r} twice "
                "(or once and as a derived retired/unemployed/apprentice role)"
            )
        seen.add(role["occupation"])
    return roles


def _employment_status(
    path: Path, df: pl.DataFrame, locales: list[str], genders: list[str], ages: tuple[int, int]
) -> dict[tuple[str, str], list[tuple[int, int, dict[str, float]]]]:
    """Status shares per locale, gender and age band; each row sums to 1 and the bands cover `ages`."""
    table: dict[tuple[str, str], list[tuple[int, int, dict[str, float]]]] = {}
    for r in df.iter_rows(named=True):
        if r["gender"] not in genders:
            raise UserError(
                f"seed table {path}: column gender holds {r['gender']!r}, not one of attributes.json"
            )
        shares = {s: _number(path, s, r[s], 1) for s in EMPLOYMENT}
        lo, hi = _whole(path, "min_age", r["min_age"]), _whole(path, "max_age", r["max_age"])
        if abs(sum(shares.values()) - 1) > 0.01:
            raise UserError(
                f"seed table {path}: the shares of {r['locale']} {r['gender']} {lo}-{hi} sum to "
                f"{sum(shares.values()):.3f}, not 1: fix columns {', '.join(EMPLOYMENT)}"
            )
        table.setdefault((r["locale"], r["gender"]), []).append((lo, hi, shares))
    for locale in locales:
        keys = [k for k in table if k[0] == locale]
        if not keys:
            raise UserError(f"seed table {path}: column locale has no rows for {locale}: add its shares")
        for key in keys:
            bands = table[key] = sorted(table[key], key=lambda b: b[0])
            edges = [bands[0][0] <= ages[0], bands[-1][1] >= ages[1]]
            edges += [b[0] == a[1] + 1 for a, b in zip(bands, bands[1:], strict=False)]
            if not all(edges):
                raise UserError(
                    f"seed table {path}: the bands of {key[0]} {key[1]} must cover ages {ages[0]}-{ages[1]} "
                    "without gaps or overlaps (columns min_age, max_age)"
                )
    return table


def _languages(
    path: Path, df: pl.DataFrame, locales: list[str]
) -> dict[str, dict[str, list[tuple[str, float]]]]:
    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for r in df.iter_rows(named=True):
        if r["main"] not in ("yes", "no"):
            raise UserError(f"seed table {path}: column main holds {r['main']!r}: use yes or no")
        share = _number(path, "share", r["share"], 1)
        kind = "main" if r["main"] == "yes" else "other"
        held = out.setdefault(r["locale"], {"main": [], "other": []})[kind]
        if share == 0 or any(lang == r["language"] for lang, _ in held):
            raise UserError(
                f"seed table {path}: {r['locale']} {r['language']} (main={r['main']}) is listed twice "
                "or has share 0 (column share)"
            )
        held.append((r["language"], share))
    missing = [loc for loc in locales if not out.get(loc, {}).get("main")]
    if missing:
        raise UserError(f"seed table {path}: column main has no 'yes' row for {', '.join(missing)}")
    return out


def _language_codes(
    path: Path, df: pl.DataFrame, languages: dict[str, dict[str, list[tuple[str, float]]]]
) -> dict[str, tuple[str | None, bool]]:
    """Language name → (ISO 639-1 code or None, whether its speakers write to an assistant in it)."""
    out: dict[str, tuple[str | None, bool]] = {}
    for r in df.iter_rows(named=True):
        code = r["code"].strip()
        if r["assistant"] not in ("yes", "no"):
            raise UserError(f"seed table {path}: column assistant of {r['language']!r} must be yes or no")
        if code != "-" and not (len(code) == 2 and code.isascii() and code.isalpha() and code.islower()):
            raise UserError(
                f"seed table {path}: column code of {r['language']!r} holds {code!r}: "
                "use a two-letter ISO 639-1 code or '-'"
            )
        if code == "-" and r["assistant"] == "yes":
            raise UserError(
                f"seed table {path}: {r['language']!r} is written to an assistant but has no code"
            )
        out[r["language"]] = (None if code == "-" else code, r["assistant"] == "yes")
    named = sorted({lang for t in languages.values() for rows in t.values() for lang, _ in rows} - out.keys())
    if named:
        raise UserError(f"seed table {path}: add a row for language(s) {', '.join(named)} of languages.csv")
    return out


def _hint_rules(
    path: Path,
    df: pl.DataFrame,
    genders: list[str],
    sectors: set[str],
    locales: list[str],
    facts: dict[str, dict[str, frozenset[str]]],
) -> list[dict[str, Any]]:
    rules = []
    for r in df.iter_rows(named=True):
        rule = {
            "hint": r["hint"],
            "category": r["category"],
            "min_age": _whole(path, "min_age", r["min_age"]),
            "max_age": _whole(path, "max_age", r["max_age"]),
            "genders": _choices(path, "gender", r["gender"], genders),
            "employment": _choices(path, "employment", r["employment"], EMPLOYMENT),
            "life_stages": _choices(path, "life_stages", r["life_stages"], LIFE_STAGES),
            "sectors": _choices(path, "sectors", r["sectors"], sectors),
            "faith": _faith_of(path, r["faith"]),
            "background": _choices(path, "background", r["background"], BACKGROUNDS),
            "locales": _choices(path, "locales", r["locales"], locales),
            "facts": _fact_list(path, "facts", r["facts"], facts),
        }
        if rule["min_age"] > rule["max_age"]:
            raise UserError(f"seed table {path}: hint {r['hint']!r} has min_age above max_age")
        if rule["background"] is not None:
            if len(rule["background"]) != 1:
                raise UserError(f"seed table {path}: column background of {r['hint']!r} names one background")
            rule["background"] = next(iter(rule["background"]))
            if "immigrant" not in facts or "immigrant" not in rule["facts"]:
                raise UserError(
                    f"seed table {path}: hint {r['hint']!r} has a background: state fact immigrant"
                )
        rules.append(rule)
    return rules


def _skeleton_tables(
    root: Path,
    t: dict[str, pl.DataFrame],
    locales: list[dict[str, Any]],
    attributes: dict[str, Any],
    facts: dict[str, dict[str, frozenset[str]]],
) -> dict[str, Any]:
    """Occupations with statuses, employment shares, languages and hint eligibility, checked together."""
    genders = [g["value"] for g in attributes["genders"]]
    ages = (
        min(int(b["min"]) for b in attributes["age_bands"]),
        max(int(b["max"]) for b in attributes["age_bands"]),
    )
    codes = [loc["locale"] for loc in locales]
    occupations = _occupations(root / "occupations.csv", t["occupations.csv"])
    status = _employment_status(
        root / "employment_status.csv", t["employment_status.csv"], codes, genders, ages
    )
    covered: dict[str, set[int]] = {s: set() for s in EMPLOYMENT}
    for role in occupations:
        for s in role["statuses"]:
            covered[s].update(range(role["min_age"], role["max_age"] + 1))
    for (locale, gender), bands in status.items():
        for lo, hi, shares in bands:
            for s, share in shares.items():
                gap = [a for a in range(max(lo, ages[0]), min(hi, ages[1]) + 1) if a not in covered[s]]
                if share > 0 and gap:
                    raise UserError(
                        f"seed table {root / 'employment_status.csv'}: column {s} gives {locale} {gender} "
                        f"{lo}-{hi} a share, but no occupation with status {s} fits age {gap[0]}: "
                        "add one to occupations.csv or set the share to 0"
                    )
    languages = _languages(root / "languages.csv", t["languages.csv"], codes)
    return {
        "occupations": occupations,
        "employment_status": status,
        "languages": languages,
        "language_codes": _language_codes(root / "language_codes.csv", t["language_codes.csv"], languages),
        "hint_rules": _hint_rules(
            root / "seed_hints.csv",
            t["seed_hints.csv"],
            genders,
            {o["sector"] for o in occupations},
            codes,
            facts,
        ),
    }


def _faith_of(path: Path, value: str | None) -> str | None:
    """A row's faith: None (`-`), one of FAITHS, or `religious` (for whom religion is very important)."""
    value = (value or "-").strip()
    if value == "-":
        return None
    if value not in (*FAITHS, RELIGIOUS):
        raise UserError(
            f"seed table {path}: column faith holds {value!r}: use '-', {RELIGIOUS} or one of "
            f"{', '.join(FAITHS)}"
        )
    return value


def _faith_tags(path: Path, row: dict[str, Any]) -> frozenset[str]:
    tags = frozenset(_split(row["faith"] or ""))
    if tags - set(FAITHS):
        raise UserError(
            f"seed table {path}: column faith of {row['name']!r} holds {row['faith']!r}: use a ';' list of "
            f"{', '.join(FAITHS)} (empty: the name marks no faith)"
        )
    return tags


def _one_of(path: Path, column: str, value: str, allowed: Any) -> str | None:
    if value.strip() == "-":
        return None
    if value.strip() not in allowed:
        raise UserError(
            f"seed table {path}: column {column} holds {value!r}: use '-' or one of {', '.join(allowed)}"
        )
    return value.strip()


def _fact_list(path: Path, column: str, value: str, facts: dict[str, Any]) -> frozenset[str]:
    items = frozenset() if value.strip() == "-" else frozenset(_split(value))
    unknown = sorted(items - facts.keys())
    if unknown:
        raise UserError(
            f"seed table {path}: column {column} holds unknown fact(s) {', '.join(unknown)}: "
            "use '-' or a ';' list of facts.csv"
        )
    return items


def _facts(path: Path, df: pl.DataFrame) -> dict[str, dict[str, frozenset[str]]]:
    """facts.csv: each fact with what it implies and what it conflicts with (made symmetric)."""
    names = df["fact"].to_list()
    if len(set(names)) != len(names):
        raise UserError(f"seed table {path}: column fact names a fact twice")
    out: dict[str, dict[str, frozenset[str]]] = {}
    for r in df.iter_rows(named=True):
        implies = frozenset() if r["implies"] == "-" else frozenset(_split(r["implies"]))
        conflicts = frozenset() if r["conflicts"] == "-" else frozenset(_split(r["conflicts"]))
        unknown = sorted((implies | conflicts) - set(names))
        if unknown:
            raise UserError(
                f"seed table {path}: fact {r['fact']!r} names unknown fact(s) {', '.join(unknown)}"
            )
        out[r["fact"]] = {"implies": implies, "conflicts": conflicts}
    for fact, rule in list(out.items()):
        for other in rule["conflicts"]:
            out[other] = {**out[other], "conflicts": out[other]["conflicts"] | {fact}}
    return out


def _religions(path: Path, df: pl.DataFrame, locales: list[str]) -> dict[str, dict[str, float]]:
    """religions.csv: per locale, each faith's share, and `religious`: the share for whom it is very
    important."""
    out: dict[str, dict[str, float]] = {}
    parts = (*FAITHS, "folk", "other", "unaffiliated")
    for r in df.iter_rows(named=True):
        shares = {c: _number(path, c, r[c], 1) for c in parts}
        if abs(sum(shares.values()) - 1) > 0.02:
            raise UserError(
                f"seed table {path}: the shares of {r['locale']} sum to {sum(shares.values()):.3f}, not 1: "
                f"fix columns {', '.join(parts)}"
            )
        out[r["locale"]] = {f: shares[f] for f in FAITHS} | {
            RELIGIOUS: _number(path, "very_important", r["very_important"], 1)
        }
    missing = [loc for loc in locales if loc not in out]
    if missing:
        raise UserError(f"seed table {path}: column locale has no row for {', '.join(missing)}")
    return out


def _migration(path: Path, df: pl.DataFrame, locales: list[str]) -> dict[str, list[tuple[str, float]]]:
    """migration.csv: per locale, the residents born in each covered origin locale (thousands)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for r in df.iter_rows(named=True):
        if r["locale"] not in locales or r["origin"] not in locales or r["locale"] == r["origin"]:
            raise UserError(
                f"seed table {path}: {r['locale']} <- {r['origin']}: columns locale and origin name two "
                "different locales of locales.csv"
            )
        stock = _number(path, "stock", r["stock"])
        if stock <= 0 or any(o == r["origin"] for o, _ in out.get(r["locale"], [])):
            raise UserError(
                f"seed table {path}: {r['locale']} <- {r['origin']} is listed twice or has stock 0"
            )
        out.setdefault(r["locale"], []).append((r["origin"], stock))
    return out


def _interests(
    root: Path, t: dict[str, pl.DataFrame], locales: list[str], facts: dict[str, dict[str, frozenset[str]]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """values_interests.csv with ages, faith, facts and learned language; interest_locales.csv weights."""
    path = root / "values_interests.csv"
    rules = []
    for r in t["values_interests.csv"].iter_rows(named=True):
        rule = {
            "item": r["item"],
            "category": r["category"],
            "min_age": _whole(path, "min_age", r["min_age"]),
            "max_age": _whole(path, "max_age", r["max_age"]),
            "faith": _faith_of(path, r["faith"]),
            "facts": _fact_list(path, "facts", r["facts"], facts),
            "learns": None if r["learns"] == "-" else r["learns"],
        }
        if rule["min_age"] > rule["max_age"]:
            raise UserError(f"seed table {path}: item {r['item']!r} has min_age above max_age")
        rules.append(rule)
    items = {r["item"] for r in rules}
    wpath = root / "interest_locales.csv"
    weights: dict[str, dict[str, float]] = {}
    for r in t["interest_locales.csv"].iter_rows(named=True):
        if r["item"] not in items or (r["locale"] != "*" and r["locale"] not in locales):
            raise UserError(
                f"seed table {wpath}: {r['item']!r} in {r['locale']}: column item names an item of "
                "values_interests.csv, column locale a locale or '*'"
            )
        weights.setdefault(r["item"], {})[r["locale"]] = _number(wpath, "weight", r["weight"])
    return rules, weights


def _qualifications(
    path: Path, df: pl.DataFrame, skeleton: dict[str, Any], locales: list[str]
) -> dict[tuple[str, str], int]:
    """qualifications.csv: a licensed job's training years in a locale, never below occupations.csv's."""
    jobs = {o["occupation"]: o for o in skeleton["occupations"] if o["base"] is None}
    out: dict[tuple[str, str], int] = {}
    for r in df.iter_rows(named=True):
        job = jobs.get(r["occupation"])
        years = _whole(path, "training_years", r["training_years"])
        if job is None or not job["licence"] or r["locale"] not in locales:
            raise UserError(
                f"seed table {path}: {r['occupation']!r} in {r['locale']}: column occupation names a "
                "licensed job of occupations.csv, column locale a locale"
            )
        if years < job["training_years"]:
            raise UserError(
                f"seed table {path}: column training_years of {r['occupation']!r} in {r['locale']} "
                f"({years}) is below occupations.csv's {job['training_years']}, the shortest path: lower "
                "that one instead"
            )
        out[(r["occupation"], r["locale"])] = years
    return out


def _check_bound_rows(
    root: Path,
    skeleton: dict[str, Any],
    religions: dict[str, dict[str, float]],
    migration: dict[str, list[tuple[str, float]]],
    locales: list[str],
    facts: dict[str, dict[str, frozenset[str]]],
) -> None:
    """A hint bound to a background needs a corridor somewhere; one bound to a faith, a locale holding it."""
    for rule in skeleton["hint_rules"]:
        where = [loc for loc in locales if rule["locales"] is None or loc in rule["locales"]]
        if rule["background"] and not any(migration.get(loc) for loc in where):
            raise UserError(
                f"seed table {root / 'seed_hints.csv'}: hint {rule['hint']!r} needs immigrants, but no "
                "locale it may happen in has a row in migration.csv"
            )
        if rule["faith"] and not any(religions[loc][rule["faith"]] >= MIN_FAITH_SHARE for loc in where):
            raise UserError(
                f"seed table {root / 'seed_hints.csv'}: hint {rule['hint']!r} is bound to {rule['faith']}, "
                f"held by fewer than {MIN_FAITH_SHARE:.1%} in every locale it may happen in (religions.csv)"
            )
    closure_conflicts = [f for f in facts if _closure(facts, {f}) & _conflicts_of(facts, {f})]
    if closure_conflicts:
        raise UserError(
            f"seed table {root / 'facts.csv'}: fact(s) {', '.join(closure_conflicts)} imply a conflict"
        )


def _closure(facts: dict[str, dict[str, frozenset[str]]], held: Any) -> frozenset[str]:
    out, todo = set(held), list(held)
    while todo:
        for implied in facts[todo.pop()]["implies"]:
            if implied not in out:
                out.add(implied)
                todo.append(implied)
    return frozenset(out)


def _conflicts_of(facts: dict[str, dict[str, frozenset[str]]], held: Any) -> frozenset[str]:
    return frozenset(c for f in held for c in facts[f]["conflicts"])


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


def faith_weight(cat: Catalogue, faith: str | None, locale: str) -> float:
    """A faith-bound row's weight factor in a locale: the faith's share (0 below MIN_FAITH_SHARE), else 1."""
    if faith is None:
        return 1.0
    share = cat.religions.get(locale, {}).get(faith, 0.0)
    return share if share >= MIN_FAITH_SHARE else 0.0


def interest_weight(cat: Catalogue, rule: dict[str, Any], locale: str) -> float:
    """An item's weight in a locale: interest_locales.csv (the locale's row, else `*`, else 1) x faith."""
    rows = cat.interest_weights.get(rule["item"], {})
    return rows.get(locale, rows.get("*", 1.0)) * faith_weight(cat, rule["faith"], locale)


def fact_closure(cat: Catalogue, held: Any) -> frozenset[str]:
    """The facts `held` with every fact they imply (facts.csv `implies`)."""
    return _closure(cat.facts, held)


def fact_conflicts(cat: Catalogue, held: Any) -> list[tuple[str, str]]:
    """The pairs of `held` facts (with what they imply) that cannot both be true (facts.csv `conflicts`)."""
    full = _closure(cat.facts, held)
    return sorted({tuple(sorted((f, c))) for f in full for c in cat.facts[f]["conflicts"] if c in full})  # type: ignore[misc]


def settle_facts(cat: Catalogue, held: Any, new: Any) -> frozenset[str]:
    """The facts after an event sets `new`: those that conflict with them (or imply one that does) go."""
    added = _closure(cat.facts, new)
    against = _conflicts_of(cat.facts, added)
    kept = {f for f in _closure(cat.facts, held) if not _closure(cat.facts, {f}) & against}
    return _closure(cat.facts, kept | added)


def check_locales(cat: Catalogue, locales: Any, option: str = "locales") -> None:
    """A build's or sample's `locales` must name locales of the seed tables (one-line error otherwise)."""
    if locales is None:
        return
    known = [loc["locale"] for loc in cat.locales]
    unknown = [loc for loc in locales if loc not in known]
    if unknown or not locales:
        raise UserError(
            f"{option}: unknown locale(s) {', '.join(unknown) or '(none given)'}: "
            f"choose from {', '.join(known)} (comma-separated)"
        )


def check_languages(cat: Catalogue, languages: Any, option: str = "languages", locales: Any = None) -> None:
    """A build's `languages` must be ISO 639-1 codes people write to an assistant in, and someone in the
    build's `locales` must speak one of them (one-line error otherwise)."""
    if languages is None:
        return
    known = sorted({code for code, ok in cat.language_codes.values() if ok and code})
    unknown = [code for code in languages if code not in known]
    if unknown or not languages:
        raise UserError(
            f"{option}: unknown language code(s) {', '.join(unknown) or '(none given)'}: "
            f"choose from {', '.join(known)} (ISO 639-1, comma-separated)"
        )
    pool = list(locales) if locales else list(cat.languages)
    written = {lang: code for lang, (code, ok) in cat.language_codes.items() if ok and code}
    spoken = {
        written[lang]
        for loc in pool
        for rows in cat.languages.get(loc, {}).values()
        for lang, _ in rows
        if lang in written
    }
    if not spoken & set(languages):
        raise UserError(
            f"{option}: nobody in {', '.join(pool) if locales else 'any locale'} writes to an assistant in "
            f"{', '.join(languages)}: add a locale where it is spoken (--locales)"
        )
