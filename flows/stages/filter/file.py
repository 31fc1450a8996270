"""`personaloom filter`: stage 5's text filter over any Parquet file (the file I/O edge of the engine)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from personaloom.dataset.store import ParquetAppender, output_dir, write_parquet
from personaloom.errors import UserError
from personaloom.runtime.progress import stage_reporter
from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.filter import filter_texts
from personaloom.stages.filter.engine import FilterOutcome
from personaloom.stages.filter.sharded import ShardedFilter, Spill


@dataclass
class ParquetInput:
    """IN: one Parquet file, or a folder of Parquet parts read in name order as one table."""

    parts: list[Path]
    schema: pl.Schema
    n_rows: int

    def read(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        """Rows [start, stop) (all by default), of `columns` (all by default)."""
        scan = pl.scan_parquet(self.parts)
        if columns is not None:
            scan = scan.select(columns)
        stop = self.n_rows if stop is None else stop
        return scan.slice(start, stop - start).collect()


def input_parts(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a Parquet file or a folder of Parquet parts")
    if not path.is_dir():
        return [path]
    parts = sorted(path.glob("*.parquet"))
    if not parts:
        raise UserError(f"{path} holds no *.parquet file: pass a Parquet file or a folder of Parquet parts")
    return parts


def open_input(path: Path, column: str) -> ParquetInput:
    """IN checked from its metadata alone (no rows read): Parquet, one schema, rows, a text `column`."""
    parts = input_parts(path)
    n_rows = 0
    schema: pl.Schema | None = None
    for part in parts:
        try:
            n_rows += pq.ParquetFile(part).metadata.num_rows
            part_schema = pl.read_parquet_schema(part)
        except Exception:  # pyarrow raises ArrowInvalid/OSError for non-Parquet bytes
            raise UserError(
                f"{part} is not a Parquet file: convert it first (e.g. polars write_parquet)"
            ) from None
        if schema is not None and part_schema != schema:
            raise UserError(f"{part} has other columns than {parts[0]}: the parts of IN need one schema")
        schema = part_schema
    assert schema is not None
    if column not in schema:
        raise UserError(
            f"{path} has no column {column!r}: its columns are {', '.join(list(schema)[:20])}; pass --column"
        )
    if n_rows == 0:
        raise UserError(f"{path} has no rows: nothing to filter")
    if schema[column] != pl.String:
        raise UserError(f"column {column!r} of {path} holds {schema[column]}, not text: pass a text --column")
    return ParquetInput(parts=parts, schema=schema, n_rows=n_rows)


def check_columns(path: Path, source: ParquetInput, id_column: str | None, lang_column: str | None) -> None:
    if id_column is not None and id_column not in source.schema:
        raise UserError(f"{path} has no column {id_column!r} for --id-column")
    if lang_column is not None:
        if lang_column not in source.schema:
            raise UserError(f"{path} has no column {lang_column!r} for --lang-column")
        if source.schema[lang_column] != pl.String:
            raise UserError(
                f"column {lang_column!r} of {path} holds {source.schema[lang_column]}, not ISO 639-1 codes "
                "such as zh or ru: pass a text --lang-column"
            )


def filter_config(
    threshold: float | None,
    min_words: int | None,
    max_words: int | None,
    lang: str | None,
    base: FilterConfig | None = None,
) -> FilterConfig:
    """`base` (default: the defaults) with the command's flags applied."""
    cfg = base.model_copy(deep=True) if base is not None else FilterConfig()
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


# a `\r` line redrawn on a terminal; plain lines every 10 s in a log file (personaloom.runtime.progress)
report = stage_reporter(sys.stderr)


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
    shards: int | None = None,
    config: FilterConfig | None = None,
) -> FilterOutcome:
    """Write OUT/kept.parquet and OUT/rejections.parquet; returns the outcome (counts, stats).

    `config` holds the settings no flag names (default: the defaults); the flags override it.
    `lang_column` names each row's intended language (ISO 639-1): rows detected in another language
    are dropped as wrong_language, with the detected language and its probability. `shards` filters
    the rows that many slices at a time, spilling to disk (bounded memory); the result is the same.
    """
    source = open_input(path, column)
    check_columns(path, source, id_column, lang_column)
    if shards is not None and shards < 1:
        raise UserError(f"--shards {shards}: pass 1 or more (the rows are filtered in that many slices)")
    cfg = filter_config(threshold, min_words, max_words, lang, config)
    output_dir(out, "--out")  # a file, /proc, a dangling link: one line before any row is read
    if shards is None:
        result = filter_texts(
            source.read(), column, cfg, id_column=id_column, progress=report, lang_column=lang_column
        )
        write_parquet(out / "kept.parquet", result.kept.to_arrow())
        write_parquet(out / "rejections.parquet", result.rejected.to_arrow())
        kept = result.kept.height
    else:
        result = filter_sharded(
            source, column, cfg, shards, out, id_column=id_column, lang_column=lang_column
        )
        kept = result.counts["kept"]
    if sys.stderr.isatty():
        print(file=sys.stderr)  # end the redrawn line
    reasons = ", ".join(f"{r}={n}" for r, n in result.counts.items() if r != "kept" and n)
    print(
        f"kept {kept:,} of {source.n_rows:,} rows; "
        f"dropped {source.n_rows - kept:,} ({reasons or 'none'}) → {out}"
    )
    return result


def filter_sharded(
    source: ParquetInput,
    column: str,
    config: FilterConfig,
    shards: int,
    out: Path,
    *,
    id_column: str | None,
    lang_column: str | None,
) -> FilterOutcome:
    """The sharded filter, its rows streamed to OUT, its working files in OUT/.spill-PID (removed after)."""
    spill = out / f".spill-{os.getpid()}"
    spill.mkdir(parents=True, exist_ok=True)
    kept, rejected = ParquetAppender(out / "kept.parquet"), ParquetAppender(out / "rejections.parquet")
    try:
        run = ShardedFilter(
            read=source.read,
            n_rows=source.n_rows,
            column=column,
            config=config,
            shards=shards,
            spill=Spill(spill),
            id_column=id_column,
            lang_column=lang_column,
            progress=report,
        )

        def write(kept_rows: pl.DataFrame, rejected_rows: pl.DataFrame) -> None:
            kept.write(kept_rows.to_arrow())
            rejected.write(rejected_rows.to_arrow())

        result = run.run(write)
        kept.close()
        rejected.close()
        return result
    finally:
        kept.abort()
        rejected.abort()
        shutil.rmtree(spill, ignore_errors=True)
