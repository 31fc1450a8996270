"""`personaloom filter`: stage 5's text filter over any Parquet file (the file I/O edge of the engine)."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from personaloom.errors import UserError
from personaloom.filtering import filter_texts
from personaloom.schemas.filtering import FilterConfig
from personaloom.store import write_parquet


def read_input(path: Path, column: str) -> pl.DataFrame:
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a Parquet file")
    try:
        meta = pq.ParquetFile(path)
    except Exception:  # pyarrow raises ArrowInvalid/OSError for non-Parquet bytes
        raise UserError(
            f"{path} is not a Parquet file: convert it first (e.g. polars write_parquet)"
        ) from None
    names = meta.schema_arrow.names
    if column not in names:
        raise UserError(
            f"{path} has no column {column!r}: its columns are {', '.join(names[:20])}; pass --column"
        )
    if meta.metadata.num_rows == 0:
        raise UserError(f"{path} has no rows: nothing to filter")
    df = pl.read_parquet(path)
    if df.schema[column] != pl.String:
        raise UserError(
            f"column {column!r} of {path} holds {df.schema[column]}, not text: pass a text --column"
        )
    return df


def filter_config(
    threshold: float | None, min_words: int | None, max_words: int | None, lang: str | None
) -> FilterConfig:
    cfg = FilterConfig()
    if threshold is not None:
        if not 0 < threshold <= 100:
            raise UserError(
                f"--threshold {threshold} is outside (0, 100]: e.g. 90 drops pairs at least 90% alike"
            )
        cfg.near_dup.threshold = threshold
    if min_words is not None:
        cfg.rules.min_words = min_words
    if max_words is not None:
        cfg.rules.max_words = max_words
    if lang:
        cfg.lang_id.enabled = True
        cfg.lang_id.allowed = [code.strip() for code in lang.split(",") if code.strip()]
    return FilterConfig.model_validate(cfg.model_dump())


def filter_parquet(
    path: Path,
    *,
    column: str,
    out: Path,
    threshold: float | None = None,
    min_words: int | None = None,
    max_words: int | None = None,
    id_column: str | None = None,
    lang: str | None = None,
    lang_column: str | None = None,
) -> tuple[int, int]:
    """Write OUT/kept.parquet and OUT/rejections.parquet; returns (kept, rejected) row counts.

    `lang_column` names each row's intended language (ISO 639-1): rows detected in another language
    are dropped as wrong_language, with the detected language and its probability.
    """
    df = read_input(path, column)
    if id_column is not None and id_column not in df.columns:
        raise UserError(f"{path} has no column {id_column!r} for --id-column")
    if lang_column is not None:
        if lang_column not in df.columns:
            raise UserError(f"{path} has no column {lang_column!r} for --lang-column")
        if df.schema[lang_column] != pl.String:
            raise UserError(
                f"column {lang_column!r} of {path} holds {df.schema[lang_column]}, not ISO 639-1 codes "
                "such as zh or ru: pass a text --lang-column"
            )
    cfg = filter_config(threshold, min_words, max_words, lang)

    def report(stage: str, done: int, total: int) -> None:
        print(f"\r{stage:<12} {done:>10,}/{total:,}", end="", file=sys.stderr, flush=True)

    result = filter_texts(df, column, cfg, id_column=id_column, progress=report, lang_column=lang_column)
    print(file=sys.stderr)
    write_parquet(out / "kept.parquet", result.kept.to_arrow())
    write_parquet(out / "rejections.parquet", result.rejected.to_arrow())
    reasons = ", ".join(f"{r}={n}" for r, n in result.counts.items() if r != "kept" and n)
    print(
        f"kept {len(result.kept):,} of {len(df):,} rows; "
        f"dropped {len(result.rejected):,} ({reasons or 'none'}) → {out}"
    )
    return len(result.kept), len(result.rejected)
