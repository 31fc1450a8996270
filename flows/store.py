"""Versioned dataset layout: staging folders, Parquet shards, manifest, atomic publish."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from personaloom.errors import UserError
from personaloom.schemas.arrow import arrow_schema, to_table
from personaloom.schemas.manifest import Manifest, ShardInfo

VERSION = re.compile(r"^v(\d{4,})$")
TABLES = ("seeds", "personas", "scenes", "queries", "rejections", "dataset", "probes")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_parquet(path: Path, table: pa.Table) -> None:
    """zstd Parquet, written to a temp name and renamed: a kill never leaves half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    if table.num_rows:
        pq.write_table(table, tmp, compression="zstd")
    else:
        # schema only, no row group: `datasets` sizes its batches by the first row group and fails on 0
        pq.ParquetWriter(tmp, table.schema, compression="zstd").close()
    os.replace(tmp, path)


class ParquetAppender:
    """One Parquet file written table after table (as `write_parquet`: zstd, a temp name renamed by
    `close`; `abort` drops an unclosed one). Empty tables add no row group, only the schema."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = _temp_name(path)
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        if table.num_rows:
            self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


def write_records(path: Path, model: type[BaseModel], records: Iterable[BaseModel]) -> int:
    table = to_table(model, records)
    write_parquet(path, table)
    return table.num_rows


def read_table(
    path: Path, model: type[BaseModel] | None = None, columns: list[str] | None = None
) -> pa.Table:
    """One shard file, or all shards of a table folder (zero rows, with the schema, when there are none)."""
    parts = [path] if path.is_file() else sorted(path.glob("part-*.parquet"))
    if not parts:
        if model is None:
            raise FileNotFoundError(path)
        empty = arrow_schema(model).empty_table()
        return empty.select(columns) if columns else empty
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts])


def read_records(path: Path, model: type[BaseModel]) -> list:
    return [model.model_validate(r) for r in read_table(path, model).to_pylist()]


def link_or_copy(src: Path, dst: Path) -> bool:
    """`dst` becomes a hard link to `src` (True), or a copy where the filesystem refuses links (False).

    A link already in place (a resumed publish) is kept. Shards are never modified in place (every write
    is a new file renamed over the old name), so a linked file stays what both versions recorded.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if os.path.samefile(src, dst):
            return True
        dst.unlink()
    try:
        os.link(src, dst)
        return True
    except OSError:  # another filesystem, no link support, too many links: a copy, written atomically
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        return False


def shard_infos(root: Path) -> list[ShardInfo]:
    return [
        ShardInfo(
            path=str(p.relative_to(root)),
            rows=pq.ParquetFile(p).metadata.num_rows,
            bytes=p.stat().st_size,
            sha256=sha256_file(p),
        )
        for p in sorted(root.glob("*/part-*.parquet"))
    ]


class DatasetStore:
    """output/<dataset>/v<NNNN>/ folders, `latest` link, and the staging area builds resume from."""

    def __init__(self, out: Path, dataset: str) -> None:
        self.out = Path(out)
        self.dataset = dataset
        self.root = self.out / dataset

    # -------------------------------------------------------------- reading

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if VERSION.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda v: int(v[1:]))

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def resolve(self, version: str | None) -> Path:
        """The folder of `version` (v3, v0003, 3 or latest/None); a one-line UserError if missing."""
        versions = self.versions()
        if not versions:
            raise UserError(
                f"dataset {self.dataset!r} has no versions under {self.out}: "
                f"run `personaloom build --dataset {self.dataset}`"
            )
        if version in (None, "", "latest"):
            return self.root / versions[-1]
        digits = str(version).lstrip("v")
        name = f"v{int(digits):04d}" if digits.isdigit() else str(version)
        if name not in versions:
            raise UserError(
                f"dataset {self.dataset!r} has no version {version}: it has {', '.join(versions[-5:])}"
            )
        return self.root / name

    def manifest(self, version: str | None = None) -> Manifest:
        return Manifest.model_validate_json((self.resolve(version) / "manifest.json").read_text())

    # -------------------------------------------------------------- writing

    def staging(self, run_key: str) -> Path:
        """Where a build with this identity writes; a re-run of the same build resumes here."""
        path = self.root / ".staging" / run_key
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def claim(self, staging: Path) -> Iterator[None]:
        """One build per staging folder: a second identical build started meanwhile stops at once.

        The kernel drops the lock when its holder dies, so a killed build never blocks the re-run.
        """
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{staging.name}.lock").open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"an identical build of {self.dataset!r} is running now (staging {staging}): "
                    "wait for it, "
                    "or change --seed or another setting to build a different version"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serializes version numbering between concurrent builds of one dataset."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def next_version(self) -> tuple[str, str | None]:
        """(new version name, parent); call under `lock()`."""
        latest = self.latest()
        n = int(latest[1:]) + 1 if latest else 1
        return f"v{n:04d}", latest

    def remove_old(self, keep: int) -> dict[str, int]:
        """Remove all but the newest `keep` versions (never `latest`); returns bytes freed per version.

        Safe by construction: a shard a newer version inherits is a hard link (or a copy), so removing
        the older version unlinks one name of the file and the newer version keeps it. Each version is
        first renamed out of sight (atomic), then deleted: a reader sees it whole or not at all.
        """
        if keep < 1:
            raise UserError(f"--keep {keep}: keep at least 1 version (the latest is never removed)")
        trash = self.root / ".trash"
        removed: dict[str, int] = {}
        with self.lock():
            shutil.rmtree(trash, ignore_errors=True)  # what an interrupted removal left behind
            versions = self.versions()
            link = self.root / "latest"
            protected = {versions[-1]} if versions else set()
            if link.is_symlink():
                protected.add(Path(os.readlink(link)).name)
            for version in [v for v in versions[:-keep] if v not in protected]:
                folder = self.root / version
                removed[version] = sum(
                    st.st_size
                    for f in folder.rglob("*")
                    if f.is_file() and not f.is_symlink() and (st := f.stat()).st_nlink == 1
                )
                trash.mkdir(exist_ok=True)
                gone = trash / version
                os.rename(folder, gone)
                shutil.rmtree(gone)
        return removed

    def publish(self, staging: Path, version: str) -> Path:
        """Rename the finished staging folder into place and point `latest` at it (under `lock()`)."""
        target = self.root / version
        if target.exists():
            raise UserError(f"{target} already exists: versions are never overwritten")
        os.rename(staging, target)
        link = self.root / "latest"
        tmp = self.root / f".latest.{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(version)
        os.replace(tmp, link)  # atomic: readers see the old or the new latest, never none
        return target
