"""The filter over more rows than fit in memory: shard by shard, joined on disk, same answer as in memory.

Rows keep their global number (input order) throughout, and every step is the in-memory filter's own
(engine.py, neardup.py), so a duplicate pair split across shards is found and the same row is kept
(the earliest):

1. screen, shard by shard: rules; exact duplicates against a table of the first occurrence of every
   text hash seen so far (earlier shards) and within the shard; the survivors' shingles, their counts and
   the texts they are verified on are spilled to disk.
2. document frequency: every shard's sorted (shingle, count) arrays are merged one hash range at a time;
   each shard gets back the shingles whose global frequency is in [min_df, max_df].
3. sign, shard by shard: MinHash of the kept shingles -> LSH band entries (band key, row), sorted, spilled,
   of the word index and of the character index.
4. candidates, band by band (and key range by key range): the shards' sorted entries are merged, and rows
   sharing a key become candidate pairs, across shards as within one.
5. verify, one range of first rows at a time: the range's pairs of every band merged (a pair found in
   several bands is scored once), scored on the spilled texts of the rows in pairs; then the few pairs a
   few characters may join (`char_edits`), on their rows' normalized texts (read and normalized again);
   components over all rows.
6. write, shard by shard: language ID of the rows left, kept and rejected rows with reason and dup_of.

Memory is one shard's working set, arrays over all rows (verdicts, ~50 bytes a row), the verification
texts of the rows in pairs (a Python string each, ~170 bytes) and one range of pairs; the rest waits on
disk in `spill` (~700 bytes a row): 0.7 GB for 1M rows in 4 shards, 3.0 GB for 10M in 10
(bench/filter_bench.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.filter import neardup
from personaloom.stages.filter.engine import (
    FilterOutcome,
    Progress,
    Verdicts,
    check_languages,
    evaluate_rules,
    exact_duplicates,
    split_rows,
)
from personaloom.stages.filter.normalize import normalize

# Reads rows [start, stop) of the input: the given columns, or all columns for None.
ReadRows = Callable[[int, int, list[str] | None], pl.DataFrame]
# Receives one shard's kept and rejected rows, in input order.
WriteRows = Callable[[pl.DataFrame, pl.DataFrame], None]

T = TypeVar("T")

SECOND_HASH_SEED = 0x2545F491  # confirms a cross-shard text-hash match (the text itself is in another shard)
DF_BUCKET = 1 << 24  # distinct (shingle, shard) entries merged at once: ~256 MB
BAND_BUCKET = 1 << 25  # band entries merged and sorted at once: 256 MB
PAIR_RANGE = 1 << 23  # candidate pairs (of all bands, before dropping repeats) merged at once: 64 MB
BAND_KINDS = ("bands", "cbands")  # spilled band entries of the word index and of the character index


@dataclass
class Spill:
    """The on-disk working set: raw arrays, one file per kind and shard (or band). Slices are read with
    plain file reads, not kept memory-mapped: mapped pages would count as this process's memory."""

    folder: Path
    layout: dict[tuple[str, int], tuple[np.dtype, tuple[int, ...]]] = field(default_factory=dict)

    def path(self, kind: str, index: int) -> Path:
        return self.folder / f"{kind}-{index:05d}.bin"

    def save(self, kind: str, index: int, array: np.ndarray) -> None:
        np.ascontiguousarray(array).tofile(self.path(kind, index))
        self.layout[kind, index] = (array.dtype, array.shape)

    def load(self, kind: str, index: int) -> np.ndarray:
        dtype, shape = self.layout[kind, index]
        return np.fromfile(self.path(kind, index), dtype=dtype).reshape(shape)

    def read(self, kind: str, index: int, start: int, stop: int, row: int = 0) -> np.ndarray:
        """Elements [start, stop) of a 1-D array, or of row `row` of a 2-D one."""
        dtype, shape = self.layout[kind, index]
        first = row * shape[-1] + start
        return np.fromfile(
            self.path(kind, index), dtype=dtype, count=stop - start, offset=first * dtype.itemsize
        )

    def bounds(self, kind: str, index: int, lo: int, hi: int, row: int = 0) -> tuple[int, int]:
        """Where a sorted uint64 array (or row `row` of one) holds values in [lo, hi) (hi = 0: to the end):
        a binary search on a memory map, which touches a few pages only."""
        dtype, shape = self.layout[kind, index]
        if shape[-1] == 0:
            return 0, 0
        offset = row * shape[-1] * dtype.itemsize
        values = np.memmap(self.path(kind, index), dtype=dtype, mode="r", offset=offset, shape=(shape[-1],))
        start = int(np.searchsorted(values, np.uint64(lo))) if lo else 0
        stop = int(np.searchsorted(values, np.uint64(hi))) if hi else shape[-1]
        del values
        return start, stop

    def sorted_range(self, kind: str, index: int, lo: int, hi: int, row: int = 0) -> np.ndarray:
        return self.read(kind, index, *self.bounds(kind, index, lo, hi, row), row=row)


@dataclass
class SeenTexts:
    """First occurrence of each text hash in earlier shards: (hash, second hash, row number)."""

    table: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"h": pl.UInt64, "h2": pl.UInt64, "row": pl.Int64})
    )

    def earlier(self, h: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """Row number of the earlier row with the same text (both hashes equal), or -1."""
        probe = pl.DataFrame({"h": h, "h2": h2})
        found = probe.join(self.table, on=["h", "h2"], how="left", maintain_order="left")["row"]
        return found.fill_null(-1).to_numpy()

    def add(self, h: np.ndarray, h2: np.ndarray, rows: np.ndarray) -> None:
        """Record rows whose hash is new (first occurrence: the caller passes them in row order)."""
        fresh = pl.DataFrame({"h": h, "h2": h2, "row": rows}).unique("h", keep="first", maintain_order=True)
        fresh = fresh.join(self.table, on="h", how="anti")
        self.table = pl.concat([self.table, fresh], rechunk=False)


@dataclass
class ShardedFilter:
    """One run of the filter over `n_rows` rows read by `read`, `shards` contiguous slices at a time."""

    read: ReadRows
    n_rows: int
    column: str
    config: FilterConfig
    shards: int
    spill: Spill
    id_column: str | None = None
    lang_column: str | None = None
    progress: Progress | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_rows >= neardup.MAX_ROWS:
            raise ValueError(f"the sharded filter takes at most {neardup.MAX_ROWS:,} rows")
        self.shards = max(1, min(self.shards, self.n_rows))
        self.verdicts = Verdicts.blank(self.n_rows)
        self.near = self.config.near_dup.enabled
        self.intended = self.lang_column is not None and self.config.lang_id.match_intended

    def bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.n_rows // self.shards, (shard + 1) * self.n_rows // self.shards

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def timed(self, name: str, step: Callable[..., T], *args: object) -> T:
        t = time.perf_counter()
        out = step(*args)
        self.stats[f"{name}_s"] = self.stats.get(f"{name}_s", 0.0) + time.perf_counter() - t
        return out

    def run(self, write: WriteRows) -> FilterOutcome:
        """Filter every row; `write` gets each shard's kept and rejected rows. The outcome holds counts
        and stats (its kept/rejected frames are empty: the rows went to `write`)."""
        t0 = time.perf_counter()
        seen = SeenTexts()
        self.each_shard("screen", lambda shard: self.screen(shard, seen))
        seen.table = seen.table.clear()
        if self.near:
            self.timed("df", self.document_frequency)
            self.each_shard("minhash", self.sign)
            needed = self.timed("lsh", self.candidates)
            self.link(needed)
        names = self.dup_names()
        if self.config.lang_id.enabled or self.intended:
            self.verdicts.track_languages()
        self.each_shard("write", lambda shard: self.write(shard, write, names))
        counts = self.verdicts.counts(self.config, self.lang_column is not None)
        self.stats.update(rows=self.n_rows, shards=self.shards, total_s=time.perf_counter() - t0)
        empty = pl.DataFrame()
        return FilterOutcome(kept=empty, rejected=empty, counts=counts, stats=self.stats)

    def each_shard(self, stage: str, step: Callable[[int], None]) -> None:
        for shard in range(self.shards):
            self.timed(stage, step, shard)
            self.report(stage, self.bounds(shard)[1], self.n_rows)

    # ------------------------------------------------------------ 1. screen

    def screen(self, shard: int, seen: SeenTexts) -> None:
        start, stop = self.bounds(shard)
        frame = self.read(start, stop, [self.column])
        evaluated = evaluate_rules(frame, self.column, self.config)
        del frame
        verdicts = self.verdicts.part(start, stop)
        verdicts.screened(evaluated)
        alive = verdicts.alive()
        norm = evaluated["norm"]
        if self.config.exact_dedup and alive.shape[0]:
            alive = self.exact(verdicts, start, evaluated, alive, seen)
        if self.near:
            self.spill_shingles(shard, norm.gather(alive), alive + start)

    def exact(
        self, verdicts: Verdicts, start: int, evaluated: pl.DataFrame, alive: np.ndarray, seen: SeenTexts
    ) -> np.ndarray:
        """Exact duplicates of an earlier shard's row, then of an earlier row of this shard (the earliest
        row of a text is the one kept, as in memory). Returns the rows left."""
        hashes = evaluated["hash"].fill_null(0).to_numpy()
        h = hashes[alive]
        h2 = evaluated["norm"].gather(alive).hash(seed=SECOND_HASH_SEED).to_numpy()
        earlier = seen.earlier(h, h2)
        cross = earlier >= 0
        verdicts.duplicates(alive[cross], earlier[cross], 100.0, "exact")
        rest = alive[~cross]
        first = exact_duplicates(hashes, evaluated["norm"], rest)
        inside = first >= 0
        verdicts.duplicates(rest[inside], first[inside] + start, 100.0, "exact")
        left = rest[~inside]
        seen.add(hashes[left], h2[~cross][~inside], left + start)
        return left

    def spill_shingles(self, shard: int, norm: pl.Series, rows: np.ndarray) -> None:
        part = neardup.shingle(norm.fill_null(""), self.config.near_dup)
        uniq, counts = neardup.shingle_counts(part.sh)
        self.spill.save("sh", shard, part.sh)
        self.spill.save("doc", shard, rows[part.doc].astype(np.uint32))
        self.spill.save("uniq", shard, uniq)
        self.spill.save("count", shard, counts)
        self.spill.save("rows", shard, rows.astype(np.uint32))
        self.spill.save("codes", shard, part.texts.codes)
        self.spill.save("lengths", shard, part.texts.lengths)
        self.spill.save("on_words", shard, part.on_words)
        self.spill.save("chars", shard, part.chars.astype(np.int32))

    # ------------------------------------------------------------ 2. document frequency

    def document_frequency(self) -> None:
        """Global frequency of every shingle, one range of hash values at a time; each shard learns which
        of its shingles have a frequency in [min_df, max_df]."""
        sizes = [self.spill.layout["uniq", s][1][0] for s in range(self.shards)]
        rows = sum(self.spill.layout["rows", s][1][0] for s in range(self.shards))  # as many as in memory
        keep = [np.zeros(size, dtype=bool) for size in sizes]
        for lo, hi in hash_ranges(sum(sizes), DF_BUCKET):
            cuts = [self.spill.bounds("uniq", s, lo, hi) for s in range(self.shards)]
            parts = [
                (self.spill.read("uniq", s, *cut), self.spill.read("count", s, *cut))
                for s, cut in enumerate(cuts)
            ]
            values, total = neardup.merge_counts(parts)
            window = values[neardup.df_window(values, total, self.config.near_dup, rows)]
            for shard, ((mine, _), (start, stop)) in enumerate(zip(parts, cuts, strict=True)):
                keep[shard][start:stop] = sorted_member(mine, window)
        for shard in range(self.shards):
            self.spill.save("keep", shard, keep[shard])
        self.stats["max_df"] = self.config.near_dup.max_df_for(rows)
        self.stats["char_max_df"] = self.config.near_dup.char_max_df_for(rows)

    # ------------------------------------------------------------ 3. sign

    def sign(self, shard: int) -> None:
        nd = self.config.near_dup
        sh, doc = neardup.keep_shingles(
            self.spill.load("sh", shard),
            self.spill.load("doc", shard),
            self.spill.load("uniq", shard),
            self.spill.load("keep", shard),
        )
        signed = neardup.signatures(sh, doc.astype(np.int64), nd)
        del sh, doc
        for kind, (sig, rows), seed in zip(BAND_KINDS, signed, neardup.index_seeds(nd), strict=True):
            self.spill.save(kind, shard, neardup.band_entries(sig, rows, nd.bands, nd.rows, seed))

    # ------------------------------------------------------------ 4. candidates

    def candidates(self) -> np.ndarray:
        """Each band's candidate pairs over all rows, spilled sorted: a band's entries of every shard are
        merged one key range at a time (a range's entries sorted together group its rows by key), in the
        word index and in the character index. Returns which rows are in some pair."""
        nd = self.config.near_dup
        needed = np.zeros(self.n_rows, dtype=bool)
        for i, kind in enumerate(BAND_KINDS):
            total = sum(self.spill.layout[kind, s][1][1] for s in range(self.shards))
            for band in range(nd.bands):
                found = [np.zeros(0, dtype=np.uint64)]
                for lo, hi in hash_ranges(total, BAND_BUCKET):
                    merged = [self.spill.sorted_range(kind, s, lo, hi, row=band) for s in range(self.shards)]
                    found.append(neardup.band_pairs(neardup.merge_sorted(merged), nd.max_bucket_size))
                codes = neardup.sort_integers(np.concatenate(found))
                needed[(codes >> np.uint64(32)).astype(np.int64)] = True
                needed[(codes & np.uint64(0xFFFFFFFF)).astype(np.int64)] = True
                self.spill.save("pairs", i * nd.bands + band, codes)
                self.report("lsh", i * nd.bands + band + 1, len(BAND_KINDS) * nd.bands)
        return needed

    # ------------------------------------------------------------ 5. verify and group

    def link(self, needed: np.ndarray) -> None:
        """Score the candidate pairs on the spilled texts of their rows, one range of first rows at a time
        (each band's pairs of the range merged, pairs found in several bands scored once), then the pairs
        `char_edits` may join on their normalized texts; mark every row but the earliest of each group as a
        near-duplicate of it."""
        t = time.perf_counter()
        nd = self.config.near_dup
        texts, at, rule = self.texts_of(needed)
        bands = range(len(BAND_KINDS) * nd.bands)
        ranges = row_ranges(self.n_rows, sum(self.spill.layout["pairs", b][1][0] for b in bands), PAIR_RANGE)
        edges, scores, again = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0)], []
        candidates = 0
        for i, (lo, hi) in enumerate(ranges):
            codes = neardup.sorted_unique(
                np.concatenate([self.spill.sorted_range("pairs", b, lo, hi) for b in bands]), runs=True
            )
            candidates += codes.shape[0]
            found, score, look = neardup.verified_edges(texts, codes, nd.threshold, at, rule)
            edges.append(found)
            scores.append(score)
            again.append(look)
            self.report("verify", i + 1, len(ranges))
        del texts, at
        pairs = np.concatenate(again) if again else np.zeros((0, 2), dtype=np.int64)
        normalized = self.normalized_of(neardup.sorted_unique(pairs.ravel()))
        found, score = neardup.edit_edges(
            [normalized[r] for r in pairs[:, 0].tolist()],
            [normalized[r] for r in pairs[:, 1].tolist()],
            pairs,
            nd.threshold,
            nd.char_edits,
        )
        verified = np.concatenate([*edges, found])
        dup_of, dup_score = neardup.group_duplicates(self.n_rows, verified, np.concatenate([*scores, score]))
        hit = np.flatnonzero(dup_of >= 0)
        self.verdicts.duplicates(hit, dup_of[hit], dup_score[hit], "near")
        self.verdicts.repoint_exact()
        self.stats.update(
            candidate_pairs=candidates,
            edit_checked_pairs=pairs.shape[0],
            edit_pairs=found.shape[0],
            verified_pairs=verified.shape[0],
            verify_s=time.perf_counter() - t,
        )

    def texts_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, neardup.EditRule]:
        """The spilled texts of the rows marked in `rows` (bool per row), each decoded once into a Python
        string (an object array; a shard's code points at a time), row number -> their index, and what
        `char_edits` needs to know of them."""
        parts, on_words, words, chars = [], [], [], []
        for shard in range(self.shards):
            texts = neardup.Texts(self.spill.load("codes", shard), self.spill.load("lengths", shard))
            mine = np.flatnonzero(rows[self.spill.load("rows", shard)])
            parts.append(texts.take(mine).objects())
            on_words.append(self.spill.load("on_words", shard)[mine])
            words.append(texts.lengths[mine].astype(np.int32))
            chars.append(self.spill.load("chars", shard)[mine])
        rule = neardup.EditRule(
            *(np.concatenate(p) for p in (on_words, words, chars)), limit=self.config.near_dup.char_edits
        )
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object), np.cumsum(rows) - 1, rule

    def normalized_of(self, rows: np.ndarray) -> dict[int, str]:
        """The normalized texts of some rows (row numbers, sorted), read again from the input: they are few,
        and spilling every row's would have added a quarter to the spill."""
        out: dict[int, str] = {}
        for shard in range(self.shards):
            start, stop = self.bounds(shard)
            mine = rows[(rows >= start) & (rows < stop)]
            if mine.shape[0]:
                texts = self.read(start, stop, [self.column])[self.column].gather(mine - start)
                out.update(zip(mine.tolist(), normalize(texts).fill_null("").to_list(), strict=True))
        return out

    # ------------------------------------------------------------ 6. write

    def dup_names(self) -> Callable[[np.ndarray], list[str | None]]:
        """Row number -> name for dup_of: the `id_column` value (read for the rows named only), or the
        row number as text."""
        if self.id_column is None:
            return lambda rows: [str(r) for r in rows.tolist()]
        targets = neardup.sorted_unique(self.verdicts.dup_of[self.verdicts.dup_of >= 0])
        names: list[str | None] = []
        for shard in range(self.shards):
            start, stop = self.bounds(shard)
            mine = targets[(targets >= start) & (targets < stop)]
            if mine.shape[0]:
                ids = self.read(start, stop, [self.id_column])[self.id_column].cast(pl.String)
                names += ids.gather(mine - start).to_list()
        lookup = np.asarray(names, dtype=object)
        return lambda rows: lookup[np.searchsorted(targets, rows)].tolist()

    def write(self, shard: int, write: WriteRows, names: Callable[[np.ndarray], list[str | None]]) -> None:
        start, stop = self.bounds(shard)
        frame = self.read(start, stop, None)
        verdicts = self.verdicts.part(start, stop)
        alive = verdicts.alive()
        if verdicts.lang is not None and alive.shape[0]:
            texts = frame[self.column].cast(pl.String).gather(alive)
            want = None
            if self.intended and self.lang_column is not None:
                want = frame[self.lang_column].cast(pl.String).gather(alive)
            check_languages(texts, want, self.config, verdicts, alive)
        write(*split_rows(frame, verdicts, names))


def hash_ranges(entries: int, per_range: int) -> list[tuple[int, int]]:
    """Equal ranges of 64-bit hash values, enough that each holds ~`per_range` of `entries` (uniform
    hashes); hi = 0 is the top of the range (2^64)."""
    bits = max(0, math.ceil(math.log2(max(entries, 1) / per_range)))
    step = 1 << (64 - bits)
    return [(i * step, ((i + 1) * step) % (1 << 64)) for i in range(1 << bits)]


def row_ranges(n_rows: int, codes: int, per_range: int) -> list[tuple[int, int]]:
    """Ranges of pair codes (first row << 32 | second row) splitting the first rows evenly, enough that
    each holds ~`per_range` of `codes`; hi = 0 is the top of the range."""
    parts = max(1, math.ceil(codes / per_range))
    bounds = [(n_rows * i // parts) << 32 for i in range(parts)] + [0]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def sorted_member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which `values` are in `sorted_set` (sorted, distinct); fast when `values` is sorted too."""
    if sorted_set.shape[0] == 0:
        return np.zeros(values.shape[0], dtype=bool)
    pos = np.searchsorted(sorted_set, values).clip(max=sorted_set.shape[0] - 1)
    return sorted_set[pos] == values
