"""The one read model of a published version: its manifest, its tables as lazy frames, its derived runs.

Every reader opens a version this way (`open_version`, `personaloom.open`): show, verify, diff,
explore and the notebook, export, push, evaluate and replay. A `Version` only reads: the folder is
immutable once published, and what is derived from it (evaluate, replay) lives beside it (`runs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import BaseModel

from personaloom.dataset.store import TABLES, DatasetStore, read_manifest, read_records
from personaloom.errors import UserError
from personaloom.schemas.manifest import Manifest

if TYPE_CHECKING:
    from personaloom.runs.derived import Kind


def open_version(out: Path | str, dataset: str, version: str | None = None) -> Version:
    """The version (v3, v0003, 3, latest/None) of `dataset` under `out`; a one-line error if missing."""
    path = DatasetStore(Path(out), dataset).resolve(version)
    return Version(path, dataset, path.name)


@dataclass(frozen=True)
class Version:
    """One published dataset version: its manifest and its tables as lazy Polars frames."""

    path: Path
    dataset: str
    version: str

    @cached_property
    def manifest(self) -> Manifest:
        return read_manifest(self.path / "manifest.json")

    @property
    def label(self) -> str:
        return f"{self.dataset}@{self.version}"

    def parts(self, name: str) -> list[Path]:
        """The Parquet parts of a table, in order (none: the table has no part)."""
        if name not in TABLES:
            raise UserError(f"table {name!r}: a version holds {', '.join(TABLES)}")
        return sorted((self.path / name).glob("part-*.parquet"))

    def tables(self) -> list[str]:
        """The tables this version holds (each with at least one part, possibly of zero rows)."""
        return [t for t in TABLES if self.parts(t)]

    def table(self, name: str) -> pl.LazyFrame:
        """A table as a lazy frame over its Parquet parts (nothing is read until `collect`)."""
        parts = self.parts(name)
        if not parts:
            raise UserError(f"{self.label} has no {name} table")
        return pl.scan_parquet(parts)

    def records(self, name: str, model: type[BaseModel]) -> list[Any]:
        """A table's rows as validated records of `model` (none when the table has no part)."""
        self.parts(name)  # an unknown table name fails in one line
        return read_records(self.path / name, model)

    def runs(self, kind: Kind = "eval", *, complete: bool = True) -> list[Path]:
        """The derived runs of this version (`eval` or `replay`), each a folder beside the version
        (OUT/DATASET/runs/vNNNN/KIND/RUN) with its own manifest once complete."""
        from personaloom.runs.derived import run_folders

        return run_folders(self.path, kind, complete=complete)

    def to_datasets(self) -> Any:
        """A Hugging Face `datasets.DatasetDict` with one split per table that has rows."""
        try:
            import datasets
        except ImportError:
            raise UserError("to_datasets needs the datasets package: pip install datasets") from None
        splits = {}
        for name in self.tables():
            if self.table(name).select(pl.len()).collect().item():
                splits[name] = datasets.Dataset.from_parquet([str(p) for p in self.parts(name)])
        return datasets.DatasetDict(splits)
