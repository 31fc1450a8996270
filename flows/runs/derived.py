"""One skeleton for every run derived from a published version (evaluate, replay).

A derived run lives beside the version it reads, never inside it — a published version is immutable:
`OUT/DATASET/runs/vNNNN/<kind>/<run>/`. The skeleton is the same for every kind, as `run_stage` is for the
stages: claim the folder for one identity (`run.key`), run the shards skipping those done (a shard is done
when its last table's part exists: it is written last), then `summary.md` and `manifest.json` (last: it
existing means the run is complete, and a complete run is never rewritten), then the Prefect artifact.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from personaloom.dataset.store import RUNS, replacing, write_records
from personaloom.errors import UserError

if TYPE_CHECKING:
    from personaloom.dataset.version import Version

Kind = Literal["eval", "replay"]


def runs_root(version_dir: Path) -> Path:
    """Where the derived runs of the version in `version_dir` (OUT/DATASET/vNNNN) live."""
    return version_dir.parent / RUNS / version_dir.name


def run_folders(version_dir: Path, kind: Kind, *, complete: bool = True) -> list[Path]:
    """The runs of `kind` over the version in `version_dir`, by name: complete ones (a manifest each), or
    with `complete=False` every run folder (one being written too). Runs an older personaloom wrote inside
    the version folder (vNNNN/<kind>/<run>/) are read as well."""
    places = (runs_root(version_dir) / kind, version_dir / kind)
    found = [p for place in places for p in place.glob("*") if p.is_dir()]
    return sorted((p for p in found if not complete or (p / "manifest.json").is_file()), key=lambda p: p.name)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


@dataclass(frozen=True)
class DerivedRun:
    """A claimed run folder: `tables` (name → row model) are written per shard, in this order."""

    kind: Kind
    dataset: str
    version: str
    folder: Path
    tables: Mapping[str, type[BaseModel]]

    @classmethod
    def claim(
        cls,
        version: Version,
        kind: Kind,
        name: str,
        key: str,
        tables: Mapping[str, type[BaseModel]],
    ) -> DerivedRun:
        """The folder of run `name`, for the identity `key`: resuming it with other settings would mix
        results, so a folder claimed by another key is a one-line error."""
        folder = runs_root(version.path) / kind / name
        marker = folder / "run.key"
        if marker.exists() and marker.read_text().strip() != key:
            raise UserError(
                f"{kind} run {name!r} exists with other settings: pick another --run or delete {folder}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            with replacing(marker) as tmp:
                tmp.write_text(key)
        return cls(kind, version.dataset, version.version, folder, dict(tables))

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def complete(self) -> bool:
        return (self.folder / "manifest.json").is_file()

    def part(self, table: str, shard: int) -> Path:
        return self.folder / table / f"part-{shard:05d}.parquet"

    def shard_done(self, shard: int) -> bool:
        return self.part(list(self.tables)[-1], shard).exists()

    async def run_shard(self, shard: int, work: Callable[[], Awaitable[Mapping[str, Sequence[Any]]]]) -> bool:
        """`work()`'s rows of each table into the shard's parts (off the event loop), unless the shard is
        done; True when it ran."""
        if self.shard_done(shard):
            return False
        rows = await work()
        await asyncio.to_thread(self._write_shard, shard, rows)
        return True

    def _write_shard(self, shard: int, rows: Mapping[str, Sequence[Any]]) -> None:
        for table, model in self.tables.items():  # the last table last: it existing means the shard is done
            write_records(self.part(table, shard), model, rows[table])

    def finish(self, manifest: BaseModel, markdown: str) -> None:
        """summary.md, then manifest.json: written last, each whole (a kill leaves the old file or none)."""
        with replacing(self.folder / "summary.md") as tmp:
            tmp.write_text(markdown)
        with replacing(self.folder / "manifest.json") as tmp:
            tmp.write_text(manifest.model_dump_json(indent=2))

    async def artifact(self, markdown: str, description: str) -> None:
        """The summary as a Prefect artifact of the flow run that made it."""
        from prefect.artifacts import acreate_markdown_artifact

        key = artifact_key(self.kind, self.dataset, self.version, self.name)
        await acreate_markdown_artifact(markdown=markdown, key=key, description=description)
