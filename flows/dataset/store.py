"""Versioned dataset layout: staging folders, Parquet shards, manifest, atomic publish."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from personaloom.errors import EnvironmentFailure, UserError
from personaloom.schemas.arrow import arrow_schema, to_table
from personaloom.schemas.config import dataset_name_problem
from personaloom.schemas.manifest import Manifest, ShardInfo

VERSION = re.compile(r"^v(\d{4,})$")
# every table a version publishes, in the order a reader meets them: the one list (personaloom.pipeline
# checks it against the tables its stages declare)
TABLES = ("seeds", "personas", "scenes", "queries", "dataset", "probes", "rejections")
# Folders this process read Parquet from (versions, staging): where a failed read looks for the damaged file.
_OPENED: dict[Path, None] = {}
_WARNED: set[Path] = set()  # stray version folders already reported by this process


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp name, renamed over `path` when the block ends and removed when it fails: a kill or a full
    disk never leaves half a file, nor a temp file holding the space a re-run needs."""
    tmp = _temp_name(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_parquet(path: Path, table: pa.Table) -> None:
    """zstd Parquet, written to a temp name and renamed: a kill never leaves half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if table.num_rows:
            pq.write_table(table, tmp, compression="zstd")
        else:
            # schema only, no row group: `datasets` sizes its batches by the first row group and fails on 0
            pq.ParquetWriter(tmp, table.schema, compression="zstd").close()


def damaged(path: Path, error: BaseException) -> EnvironmentFailure:
    """The one line for a Parquet file that does not decode: which file, and what to run."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    version = next((p for p in path.parents if VERSION.match(p.name)), None)
    if version is not None:
        todo = f"run `personaloom verify {version.parent.name}@{version.name}`, then restore or rebuild it"
    else:  # a staging shard: a re-run writes it again
        todo = "delete it and re-run the same command (it is written again)"
    return EnvironmentFailure(f"{path}: damaged Parquet file ({reason}): {todo}")


def _decodes(path: Path) -> BaseException | None:
    """Whether every row group of `path` decodes (one at a time: memory stays one row group)."""
    try:
        f = pq.ParquetFile(path)
        for i in range(f.num_row_groups):
            f.read_row_group(i)
    except (OSError, pa.ArrowException) as e:
        return e
    return None


def find_damaged() -> EnvironmentFailure | None:
    """After a read failed somewhere (a polars scan names no file): the first Parquet file of the folders
    this process opened that does not decode, as its one-line error."""
    for folder in list(_OPENED):
        for path in sorted(folder.rglob("*.parquet")):
            if (error := _decodes(path)) is not None:
                return damaged(path, error)
    return None


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
    return pa.concat_tables([_read_part(p, columns) for p in parts])


def _read_part(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        if isinstance(e, OSError) and e.errno is not None:  # missing, unreadable: not damage
            raise
        raise damaged(path, e) from None


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
        with replacing(dst) as tmp:
            shutil.copy2(src, tmp)
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


# ---------------------------------------------------------------- where a command writes

# The folders this command writes in (checked by `output_dir`): where a full disk's one line points.
WRITES: list[Path] = []


def not_a_dangling_link(path: Path, option: str) -> None:
    if path.is_symlink() and not path.exists():
        raise UserError(
            f"{option} {path} is a symlink to {os.readlink(path)}, which does not exist: "
            "remove the link or give another path"
        )


def probe(folder: Path, option: str, given: Path) -> None:
    """Create and drop a file in `folder`: the one test that sees read-only mounts, /proc, quotas, ACLs
    (and works for root, whom os.access always answers yes)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".personaloom-probe-"):
            pass
    except OSError as e:
        raise UserError(
            f"{option} {given}: cannot write in {folder} ({e.strerror}): choose another path"
        ) from None


def output_dir(path: Path, option: str) -> Path:
    """Fail in one line, before any work, when `path` cannot be the folder a command writes in (a file,
    a dangling symlink, /proc, a read-only or unwritable place); else create it. Returns `path`."""
    not_a_dangling_link(path, option)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder: give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot create it ({e.strerror}): choose another path") from None
    probe(path, option, path)
    WRITES.append(path)
    return path


# OUT/DATASET/runs/vNNNN/<kind>/<run>/: the runs derived from a version (personaloom.runs.derived), beside the
# vNNNN folders, so no version is ever written after it is published
RUNS = "runs"


def read_manifest(path: Path) -> Manifest:
    """A version's manifest.json; a damaged or foreign one is a one-line error naming the file."""
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as e:
        reason = e.errors()[0]["msg"]
        raise EnvironmentFailure(
            f"{path}: not a manifest this personaloom reads ({reason}): the file is damaged or was "
            f"written by another personaloom; restore it, or move {path.parent.name} out of "
            f"{path.parent.parent}"
        ) from None


class DatasetStore:
    """output/<dataset>/v<NNNN>/ folders, `latest` link, and the staging area builds resume from."""

    def __init__(self, out: Path, dataset: str) -> None:
        # Checked here, so no command reads, writes or removes outside --out (`gc ../other/ds` removed
        # versions there): the same rule as `build --dataset`.
        if problem := dataset_name_problem(dataset):
            raise UserError(f"dataset name {dataset!r}: {problem}")
        self.out = Path(out)
        self.dataset = dataset
        self.root = self.out / dataset

    # -------------------------------------------------------------- reading

    def _numbered(self) -> list[Path]:
        """Every vNNNN folder, with a manifest or not."""
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if VERSION.match(p.name) and p.is_dir()]

    def versions(self) -> list[str]:
        """The published versions, oldest first. A vNNNN folder without a manifest (half copied, or not
        ours) is skipped with a warning on stderr, once per process: no command trips on it."""
        found = []
        for p in self._numbered():
            if (p / "manifest.json").is_file():
                found.append(p.name)
            elif p not in _WARNED:
                _WARNED.add(p)
                print(f"warning: {p} has no manifest.json (half copied?): skipped", file=sys.stderr)
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
            version = versions[-1]
        digits = str(version).lstrip("v")
        name = f"v{int(digits):04d}" if digits.isdigit() else str(version)
        if name not in versions:
            raise UserError(
                f"dataset {self.dataset!r} has no version {version}: it has {', '.join(versions[-5:])}"
            )
        _OPENED[self.root / name] = None
        return self.root / name

    def manifest(self, version: str | None = None) -> Manifest:
        return read_manifest(self.resolve(version) / "manifest.json")

    # -------------------------------------------------------------- writing

    def staging(self, run_key: str) -> Path:
        """Where a build with this identity writes; a re-run of the same build resumes here."""
        path = self.root / ".staging" / run_key
        path.mkdir(parents=True, exist_ok=True)
        _OPENED[path] = None
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
        """(new version name, parent); call under `lock()`. Past every vNNNN folder, a stray one too."""
        n = max((int(p.name[1:]) for p in self._numbered()), default=0) + 1
        return f"v{n:04d}", self.latest()

    def remove_old(self, keep: int) -> dict[str, int]:
        """Remove all but the newest `keep` versions (never `latest`) and the runs derived from them;
        returns bytes freed per version.

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
                # the version first (a reader sees it whole or not at all), then the runs that read it
                folders = [(self.root / version, version), (self.root / RUNS / version, f"{RUNS}-{version}")]
                removed[version] = 0
                for folder, name in folders:
                    if not folder.is_dir():
                        continue
                    removed[version] += sum(
                        st.st_size
                        for f in folder.rglob("*")
                        if f.is_file() and not f.is_symlink() and (st := f.stat()).st_nlink == 1
                    )
                    trash.mkdir(exist_ok=True)
                    gone = trash / name
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
