"""The seed tables shipped in seeds/, loaded and checked once (the I/O edge of stage 1)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from personaloom.errors import UserError
from personaloom.paths import SEEDS_DIR
from personaloom.schemas.records import ApiSpec, CatalogueScene

TABLES: dict[str, tuple[str, ...]] = {
    "locales.csv": ("locale", "country", "nationality", "languages", "weight"),
    "given_names.csv": ("locale", "gender", "name"),
    "family_names.csv": ("locale", "name"),
    "occupations.csv": ("occupation", "sector", "min_age", "max_age", "domain_vocabulary"),
    "values_interests.csv": ("item", "category"),
    "seed_hints.csv": ("hint", "category"),
    "scenes.csv": ("scene_id", "category", "title", "description", "apis"),
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
    "change_kinds",
)


@dataclass(frozen=True)
class Catalogue:
    locales: list[dict[str, Any]]
    given_names: dict[tuple[str, str], list[str]]
    family_names: dict[str, list[str]]
    occupations: list[dict[str, Any]]
    values_interests: list[str]
    hints: list[str]
    scenes: list[CatalogueScene]
    apis: dict[str, ApiSpec]
    attributes: dict[str, Any]
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
    nulls = [c for c in TABLES[name] if df[c].null_count()]
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

    given: dict[tuple[str, str], list[str]] = {}
    for row in t["given_names.csv"].iter_rows(named=True):
        given.setdefault((row["locale"], row["gender"]), []).append(row["name"])
    family: dict[str, list[str]] = {}
    for row in t["family_names.csv"].iter_rows(named=True):
        family.setdefault(row["locale"], []).append(row["name"])
    locales = [
        {**r, "languages": _split(r["languages"]), "weight": float(r["weight"])}
        for r in t["locales.csv"].iter_rows(named=True)
        if r["locale"] in family
    ]
    if not locales:
        raise UserError(f"seed tables in {root}: no locale of locales.csv has family names")
    occupations = [
        {
            **r,
            "min_age": int(r["min_age"]),
            "max_age": int(r["max_age"]),
            "domain_vocabulary": _split(r["domain_vocabulary"]),
        }
        for r in t["occupations.csv"].iter_rows(named=True)
    ]
    scenes = [
        CatalogueScene(**{**r, "apis": _split(r["apis"])}) for r in t["scenes.csv"].iter_rows(named=True)
    ]
    unknown = sorted({a for s in scenes for a in s.apis} - apis.keys())
    if unknown:
        raise UserError(
            f"seed table {root / 'scenes.csv'} names API(s) not in apis.json: {', '.join(unknown[:5])}"
        )
    digest = hashlib.sha256()
    for p in sorted(root.glob("*.csv")) + sorted(root.glob("*.json")):
        digest.update(p.name.encode() + p.read_bytes())
    return Catalogue(
        locales=locales,
        given_names=given,
        family_names=family,
        occupations=occupations,
        values_interests=t["values_interests.csv"]["item"].to_list(),
        hints=t["seed_hints.csv"]["hint"].to_list(),
        scenes=scenes,
        apis=apis,
        attributes=attributes,
        digest=digest.hexdigest()[:16],
    )
