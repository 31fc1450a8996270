"""Export a version's Parquet tables as JSON Lines or CSV, for tools that read neither Parquet nor Arrow."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import orjson
import polars as pl

from personaloom.errors import UserError
from personaloom.store import TABLES, DatasetStore

FORMATS = ("jsonl", "csv")
Format = Literal["jsonl", "csv"]


def _json_strings(series: pl.Series) -> pl.Series:
    """Nested values (lists, structs) as one JSON string each.

    CSV has no nesting, and JSON keeps them loadable.
    """
    return pl.Series(
        series.name,
        [None if v is None else orjson.dumps(v).decode() for v in series.to_list()],
        dtype=pl.String,
    )


def _flatten_nested(lf: pl.LazyFrame) -> pl.LazyFrame:
    nested = [c for c, t in lf.collect_schema().items() if t.is_nested()]
    return lf.with_columns(pl.col(c).map_batches(_json_strings, return_dtype=pl.String) for c in nested)


def _write_table(parts: list[Path], fmt: Format, path: Path) -> None:
    """Stream the shards into one file.

    A temp name is renamed into place: a crash never leaves half an export.
    """
    lf = pl.scan_parquet(parts)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "csv":
        _flatten_nested(lf).sink_csv(tmp)
    else:
        lf.sink_ndjson(tmp)
    os.replace(tmp, path)


def _tables(version_dir: Path) -> dict[str, list[Path]]:
    """Every table of the version.

    The six build tables, then each replay run's tables as replay/<run>/<table>.
    """
    found = {t: sorted((version_dir / t).glob("part-*.parquet")) for t in TABLES}
    for table_dir in sorted((version_dir / "replay").glob("*/*/")):
        parts = sorted(table_dir.glob("part-*.parquet"))
        if parts:
            found[f"replay/{table_dir.parent.name}/{table_dir.name}"] = parts
    return {name: parts for name, parts in found.items() if parts}


def export_version(
    out: Path | str, dataset: str, version: str | None, fmt: Format, dest: Path | str
) -> dict[str, Path]:
    """Write every table of `dataset@version` to `dest/<table>.<fmt>` (plus the manifest).

    Returns table → file.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}: choose jsonl or csv")
    version_dir = DatasetStore(Path(out), dataset).resolve(version)
    dest = Path(dest)
    written = {}
    for name, parts in _tables(version_dir).items():
        path = dest / f"{name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_table(parts, fmt, path)
        written[name] = path
    shutil.copyfile(
        version_dir / "manifest.json", dest / "manifest.json"
    )  # provenance travels with the export
    return written
