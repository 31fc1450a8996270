"""filter_texts: rules -> exact dedup -> near-dup -> language ID (optional, or per row's intended language).

Cheap checks run first so the expensive ones see fewer rows. Every input row ends up in exactly
one of `kept` / `rejected`; a rejected row carries why (drop_reason) and, for duplicates, which
kept row it duplicates (dup_of) and how sure we are (dup_score, dup_method).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.filter.normalize import normalize, text_hash_expr
from personaloom.stages.filter.rules import build_rules

Progress = Callable[[str, int, int], None]

EXACT = "exact_duplicate"
NEAR = "near_duplicate"
LANGUAGE = "language"
WRONG_LANGUAGE = "wrong_language"


@dataclass
class FilterOutcome:
    kept: pl.DataFrame
    rejected: pl.DataFrame
    counts: dict[str, int]
    stats: dict[str, float] = field(default_factory=dict)


def drop_reasons(config: FilterConfig, intended: bool = False) -> list[str]:
    """Every drop reason this config can produce, in check order (`intended`: rows name their language)."""
    reasons = [rule.name for rule in build_rules(config.rules)]
    if config.exact_dedup:
        reasons.append(EXACT)
    if config.near_dup.enabled:
        reasons.append(NEAR)
    if config.lang_id.enabled:
        reasons.append(LANGUAGE)
    if intended and config.lang_id.match_intended:
        reasons.append(WRONG_LANGUAGE)
    return reasons


def detected_columns(columns: list[str]) -> tuple[str, str]:
    """Where rejected rows hold the detected language and its probability: `lang`, `lang_score`, or
    `detected_lang`, `detected_lang_score` when the input has a column of either name (its own)."""
    if {"lang", "lang_score"} & set(columns):
        return "detected_lang", "detected_lang_score"
    return "lang", "lang_score"


def wrong_language_detail(row: dict, lang_column: str = "language") -> str | None:
    """'detected ru (0.98), intended zh' for a rejected row dropped as wrong_language, else None."""
    if row.get("drop_reason") != WRONG_LANGUAGE:
        return None
    lang, score = detected_columns([lang_column])
    return f"detected {row.get(lang)} ({row.get(score) or 0:.2f}), intended {row.get(lang_column)}"


def evaluate_rules(df: pl.DataFrame, column: str, config: FilterConfig) -> pl.DataFrame:
    """One row per input row: drop_reason (first failing rule), rule_score, normalized text, hash."""
    text = pl.col(column).cast(pl.String)
    rules = build_rules(config.rules)
    scores = [rule.score(text).cast(pl.Float64).alias(f"__s{i}") for i, rule in enumerate(rules)]
    # common subexpressions (word counts, lowercasing) are computed once across rules
    frame = df.lazy().select(*scores).collect()
    norm = normalize(df[column])
    frame = frame.with_columns(norm.alias("norm"), text_hash_expr(pl.lit(norm)).alias("hash"))
    fails = [~rule.keep(pl.col(f"__s{i}")).fill_null(True) for i, rule in enumerate(rules)]
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    score: pl.Expr = pl.lit(None, dtype=pl.Float64)
    # Built back to front so the first failing rule wins.
    for i in reversed(range(len(rules))):
        reason = pl.when(fails[i]).then(pl.lit(rules[i].name)).otherwise(reason)
        score = pl.when(fails[i]).then(pl.col(f"__s{i}")).otherwise(score)
    return frame.select(reason.alias("drop_reason"), score.alias("rule_score"), "norm", "hash")


def exact_duplicates(hashes: np.ndarray, norm: pl.Series, candidates: np.ndarray) -> np.ndarray:
    """For rows in `candidates` (ascending indices): index of the first row with the same
    normalized text, or -1. A hash match is confirmed on the text, so a 64-bit collision
    can never drop a row."""
    sub = pl.DataFrame({"i": candidates, "h": hashes[candidates], "t": norm.gather(candidates)})
    first = sub.select(
        pl.col("i").first().over("h").alias("f"),
        (pl.col("t") == pl.col("t").first().over("h")).alias("same"),
    )
    f = first["f"].to_numpy()
    same = first["same"].to_numpy()
    out = np.full(candidates.shape[0], -1, dtype=np.int64)
    hit = (f != candidates) & same
    out[hit] = f[hit]
    return out


@dataclass
class Verdicts:
    """Per input row, in input order: why it is dropped (None: kept) and, for a duplicate, the row number
    of the kept row it duplicates (-1: none), how alike they are and how that was found. The in-memory
    and the sharded filter both fill one; `part` is a view of some rows, so a shard writes through it."""

    reason: np.ndarray  # object: drop reason or None
    rule_score: np.ndarray  # float64
    dup_of: np.ndarray  # int64 row number, -1 when not a duplicate
    dup_score: np.ndarray  # float64
    dup_method: np.ndarray  # object: "exact", "near" or None
    lang: np.ndarray | None = None  # object: detected language, where language ID ran
    lang_score: np.ndarray | None = None  # float64

    @classmethod
    def blank(cls, n: int) -> Verdicts:
        return cls(
            reason=np.full(n, None, dtype=object),
            rule_score=np.full(n, np.nan, dtype=np.float64),
            dup_of=np.full(n, -1, dtype=np.int64),
            dup_score=np.full(n, np.nan, dtype=np.float64),
            dup_method=np.full(n, None, dtype=object),
        )

    def track_languages(self) -> None:
        """Add the detected-language columns (language ID runs)."""
        self.lang = np.full(self.reason.shape[0], None, dtype=object)
        self.lang_score = np.full(self.reason.shape[0], np.nan, dtype=np.float64)

    def part(self, start: int, stop: int) -> Verdicts:
        cut = slice(start, stop)
        lang, score = self.lang, self.lang_score
        return Verdicts(
            self.reason[cut],
            self.rule_score[cut],
            self.dup_of[cut],
            self.dup_score[cut],
            self.dup_method[cut],
            None if lang is None else lang[cut],
            None if score is None else score[cut],
        )

    def alive(self) -> np.ndarray:
        """Indices of the rows no check has dropped yet."""
        return np.flatnonzero(is_none(self.reason))

    def screened(self, evaluated: pl.DataFrame) -> None:
        """Take the rules' verdicts (`evaluate_rules` output)."""
        self.reason[:] = evaluated["drop_reason"].to_numpy().astype(object)
        self.rule_score[:] = evaluated["rule_score"].to_numpy().astype(np.float64)

    def duplicates(self, rows: np.ndarray, of: np.ndarray, score: np.ndarray | float, method: str) -> None:
        self.reason[rows] = EXACT if method == "exact" else NEAR
        self.dup_of[rows] = of
        self.dup_score[rows] = score
        self.dup_method[rows] = method

    def repoint_exact(self) -> None:
        """An exact copy of a row that turned out to be a near-duplicate points at the kept row of that
        group, so every dup_of names a kept row (row numbers index these arrays: all rows, not a part)."""
        exact_rows = np.flatnonzero(self.dup_method == "exact")
        moved = exact_rows[self.dup_method[self.dup_of[exact_rows]] == "near"]
        target = self.dup_of[moved]
        self.reason[moved] = NEAR
        self.dup_score[moved] = self.dup_score[target]
        self.dup_method[moved] = "near"
        self.dup_of[moved] = self.dup_of[target]

    def counts(self, config: FilterConfig, intended: bool) -> dict[str, int]:
        """Rows per drop reason (every reason the config can produce, 0 or not), and kept rows."""
        counts = {name: 0 for name in drop_reasons(config, intended)}
        dropped = self.reason[~is_none(self.reason)].astype(str)
        for name, count in zip(*np.unique(dropped, return_counts=True), strict=True):
            counts[str(name)] = int(count)
        counts["kept"] = self.reason.shape[0] - dropped.shape[0]
        return counts


def check_languages(
    texts: pl.Series, intended: pl.Series | None, config: FilterConfig, verdicts: Verdicts, alive: np.ndarray
) -> np.ndarray:
    """Language ID of the `alive` rows (`texts`, `intended`: theirs, in order); drops rows in a language
    not allowed (`language`) or not the row's intended one (`wrong_language`). Returns the rows left."""
    from personaloom.stages.filter.langid import mismatch, top_languages

    assert verdicts.lang is not None and verdicts.lang_score is not None
    tops = top_languages(texts)
    found_lang = np.array([top[0][0] if top else None for top in tops], dtype=object)
    found_score = np.array([top[0][1] if top else np.nan for top in tops], dtype=np.float64)
    verdicts.lang[alive] = found_lang
    verdicts.lang_score[alive] = found_score
    bad = np.zeros(alive.shape[0], dtype=bool)
    if config.lang_id.enabled:
        allowed = set(config.lang_id.allowed)
        bad = np.array([lang not in allowed for lang in found_lang], dtype=bool) | ~(
            found_score >= config.lang_id.min_score
        )
        # A dropped group representative takes its duplicates' dup_of along: they stay
        # pointing at it (in `rejected`, reason "language"), as their text is the same language.
        verdicts.reason[alive[bad]] = LANGUAGE
    if intended is not None:
        minimum = config.lang_id.mismatch_min_score
        rows = zip(tops, intended.to_list(), texts.fill_null("").to_list(), strict=True)
        wrong = ~bad & np.array([mismatch(top, w, minimum, text) for top, w, text in rows], dtype=bool)
        verdicts.reason[alive[wrong]] = WRONG_LANGUAGE
        verdicts.rule_score[alive[wrong]] = found_score[wrong]
        bad |= wrong
    return alive[~bad]


def split_rows(
    df: pl.DataFrame, verdicts: Verdicts, dup_ids: Callable[[np.ndarray], list[str | None]]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept rows, rejected rows with their verdict columns) of `df`, whose rows `verdicts` describes.
    `dup_ids` names the rows that dup_of numbers (row numbers, all >= 0)."""
    keep_mask = is_none(verdicts.reason)
    rejected_idx = np.flatnonzero(~keep_mask)
    rejected_dup = verdicts.dup_of[rejected_idx]
    has_dup = rejected_dup >= 0
    dup_names = np.full(rejected_idx.shape[0], None, dtype=object)
    if has_dup.any():
        dup_names[has_dup] = dup_ids(rejected_dup[has_dup])
    extra = [
        pl.Series("drop_reason", verdicts.reason[rejected_idx].tolist(), dtype=pl.String),
        pl.Series("rule_score", verdicts.rule_score[rejected_idx], dtype=pl.Float64).fill_nan(None),
        pl.Series("dup_of", dup_names.tolist(), dtype=pl.String),
        pl.Series("dup_score", verdicts.dup_score[rejected_idx], dtype=pl.Float64).fill_nan(None),
        pl.Series("dup_method", verdicts.dup_method[rejected_idx].tolist(), dtype=pl.String),
    ]
    if verdicts.lang is not None and verdicts.lang_score is not None:
        names = detected_columns(df.columns)
        extra += [
            pl.Series(names[0], verdicts.lang[rejected_idx].tolist(), dtype=pl.String),
            pl.Series(names[1], verdicts.lang_score[rejected_idx], dtype=pl.Float64).fill_nan(None),
        ]
    return df.filter(pl.Series(keep_mask)), df.gather(rejected_idx).with_columns(extra)


def row_names(df: pl.DataFrame, id_column: str | None) -> Callable[[np.ndarray], list[str | None]]:
    """Row numbers -> their `id_column` values, or the row numbers as text without one."""
    if id_column is None:
        return lambda rows: [str(r) for r in rows.tolist()]
    ids = df[id_column].cast(pl.String)
    return lambda rows: ids.gather(rows).to_list()


def filter_texts(
    df: pl.DataFrame,
    column: str,
    config: FilterConfig,
    id_column: str | None = None,
    progress: Progress | None = None,
    lang_column: str | None = None,
) -> FilterOutcome:
    """Filter the texts of `df[column]`. Returns kept rows (original columns and order) and
    rejected rows with drop_reason, rule_score, dup_of, dup_score, dup_method (+ lang, lang_score
    when language ID ran; detected_lang, detected_lang_score when the input has a `lang` column).

    `lang_column` names each row's intended language (ISO 639-1; null: unknown): a row detected in
    another language is dropped as `wrong_language`, its rule_score the detection's probability.
    """
    report = progress or (lambda stage, done, total: None)
    n = df.height
    stats: dict[str, float] = {"rows": n}
    t_all = time.perf_counter()

    report("rules", 0, n)
    t = time.perf_counter()
    evaluated = evaluate_rules(df, column, config)
    norm = evaluated["norm"]
    hashes = evaluated["hash"].fill_null(0).to_numpy()
    verdicts = Verdicts.blank(n)
    verdicts.screened(evaluated)
    alive = verdicts.alive()
    stats["rules_s"] = time.perf_counter() - t
    report("rules", n, n)

    if config.exact_dedup and alive.shape[0]:
        report("exact_dedup", 0, alive.shape[0])
        t = time.perf_counter()
        first = exact_duplicates(hashes, norm, alive)
        hit = first >= 0
        verdicts.duplicates(alive[hit], first[hit], 100.0, "exact")
        alive = alive[~hit]
        stats["exact_s"] = time.perf_counter() - t
        report("exact_dedup", alive.shape[0], alive.shape[0])

    if config.near_dup.enabled and alive.shape[0] > 1:
        from personaloom.stages.filter.neardup import find_near_duplicates

        report("near_dup", 0, alive.shape[0])
        t = time.perf_counter()
        near = find_near_duplicates(norm.gather(alive), config.near_dup, normalized=True)
        hit = near.dup_of >= 0
        verdicts.duplicates(alive[hit], alive[near.dup_of[hit]], near.dup_score[hit], "near")
        verdicts.repoint_exact()
        alive = alive[~hit]
        stats["near_s"] = time.perf_counter() - t
        stats.update({f"near_{k}": v for k, v in near.stats.items()})
        report("near_dup", alive.shape[0], alive.shape[0])

    intended = lang_column is not None and config.lang_id.match_intended
    if (config.lang_id.enabled or intended) and alive.shape[0]:
        report("lang_id", 0, alive.shape[0])
        t = time.perf_counter()
        verdicts.track_languages()
        texts = df[column].cast(pl.String).gather(alive)
        want = df[lang_column].cast(pl.String).gather(alive) if intended else None  # type: ignore[index]
        checked = alive.shape[0]
        alive = check_languages(texts, want, config, verdicts, alive)
        stats["langid_s"] = time.perf_counter() - t
        stats["langid_rows_per_s"] = checked / max(stats["langid_s"], 1e-9)
        report("lang_id", alive.shape[0], alive.shape[0])

    kept, rejected = split_rows(df, verdicts, row_names(df, id_column))
    counts = verdicts.counts(config, lang_column is not None)
    stats["total_s"] = time.perf_counter() - t_all
    stats["rows_per_s"] = n / max(stats["total_s"], 1e-9)
    return FilterOutcome(kept=kept, rejected=rejected, counts=counts, stats=stats)


def is_none(values: np.ndarray) -> np.ndarray:
    """True where an object array holds None."""
    return np.fromiter((v is None for v in values), dtype=bool, count=values.shape[0])
