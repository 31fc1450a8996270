"""Integrity of a published version: every shard the manifest lists is there, unchanged, with its rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from personaloom.dataset.audit import audit, broken
from personaloom.dataset.store import sha256_file
from personaloom.schemas.manifest import Manifest
from personaloom.stages.catalogue import Catalogue


def verify_version(folder: Path, manifest: Manifest) -> list[str]:
    """Problems found (empty when the version is intact), one line each."""
    problems = []
    listed = {s.path for s in manifest.shards}
    for shard in manifest.shards:
        path = folder / shard.path
        if not path.is_file():
            problems.append(f"{shard.path}: missing")
            continue
        if sha256_file(path) != shard.sha256:
            problems.append(f"{shard.path}: checksum differs from the manifest (the file was changed)")
            continue
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as e:  # its checksum matched: damaged before it was recorded
            problems.append(f"{shard.path}: not readable as Parquet ({str(e).splitlines()[0]})")
            continue
        if rows != shard.rows:
            problems.append(f"{shard.path}: {rows} rows, the manifest says {shard.rows}")
    for path in sorted(folder.glob("*/part-*.parquet")):
        rel = str(path.relative_to(folder))
        if rel not in listed:
            problems.append(f"{rel}: not in the manifest (added after publishing)")
    rows_out = sum(s.rows for s in manifest.shards if s.path.startswith("dataset/"))
    if rows_out != manifest.counts["filter"].rows_out:
        problems.append(
            f"dataset/: {rows_out} rows, the manifest counts {manifest.counts['filter'].rows_out}"
        )
    return problems


def verify_invariants(folder: Path, manifest: Manifest, catalogue: Catalogue) -> list[str]:
    """The version's invariants re-run on its tables (a non-zero count is a bug in the build)."""
    counts = audit(folder, catalogue)
    problems = [f"invariant {line}" for line in broken(counts)]
    recorded = {k: v for k, v in manifest.invariants.items() if v}
    if recorded:
        problems.append(f"the manifest records broken invariants: {recorded}")
    return problems
