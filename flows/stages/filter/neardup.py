"""Near-duplicate detection: MinHash-LSH blocking -> rapidfuzz verification -> components.

Why each step exists (measured on templated persona queries, see bench/filter_bench.py):
- Shingles seen in one row cannot link two rows, and shingles seen in many rows are template
  boilerplate that makes every sibling of a template look alike. Pruning both (min_df/max_df, the
  latter growing with the rows) leaves each row with the shingles it shares with few others, which cut
  LSH candidates ~40x.
- LSH output is never trusted: every candidate pair is re-scored with rapidfuzz on the
  normalized text, and only pairs at or above the threshold become edges. Unverified LSH chained
  template siblings together and dropped 19-56% of unique rows.
- Groups are the connected components of verified edges; the earliest row of each group is kept.
- Texts mostly in a script written without spaces (Chinese, Japanese, Thai) have no words to shingle:
  a whole sentence would be one "word". They are shingled on characters (`char_shingle_size`) and
  verified on characters; in the word index (their hashes salted apart), with its pruning.
- Short texts (`char_index_words`, `char_index_chars`) are also shingled on characters in a second LSH index
  (their hashes have the top bit set), whatever their script: one edited character changes every word
  shingle holding its word, a text of 8 words has 7 of them, and in templated data most are its template's,
  pruned as boilerplate. At 300,000 rows LSH paired 0.85-0.90 of 8-word copies with 1-3 edited characters
  with their row (bench/short_edits_bench.py). The second index's pruning keeps template text
  (`char_max_df_share`): in a short text it is most of what there is, and with it LSH pairs 0.999 or more of
  them; a Chinese or Japanese character is worth about two letters (shingles of `cjk_shingle_size`). Long
  texts stay out of it: their common character shingles would pair each with thousands of others.
- A pair of texts in scripts with spaces is also a duplicate when at most `char_edits` characters differ
  (Levenshtein distance of the normalized texts) and they are `threshold` alike in characters. Word scores
  count one edited character as a whole word (two typos in 8 words score 75: 0.6 of the copies with 1-3
  edited characters were found), and character scores alone would join rows of one template whose slot
  values differ in a few short words (86% alike or more: 57,939 such pairs among the candidates of
  bench/filter_bench.py at 1,000,000 rows).

Every step is a function of one part of the rows that the sharded filter (personaloom.stages.filter.sharded)
runs shard by shard, joining parts on disk: shingle counts are sorted (shingle, count) arrays that merge
by addition, an LSH band is a sorted array of (band key, row) entries that merges by sorting, and rows
carry their global number. `find_near_duplicates` runs the same steps on one part in memory, so both
find the same pairs and keep the same row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from personaloom.schemas.filtering import NearDupConfig
from personaloom.stages.filter.normalize import normalize
from personaloom.stages.filter.rules import HAN, KANA, SPACED_WORD, UNSPACED_CHAR, has_unspaced

_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_CHAR_BIT = _U64(1 << 63)  # set in character shingles (the second LSH index), clear in word shingles
_CHAR_SALT = _U64(0x44A125A17C4A125A)  # keeps long texts' character shingles apart from words (word index)
_CHAR_SEED = 2  # the character index's MinHash seed is config.seed + this (band hashes use seed + 1 more)
_FOLD = _U64(0x9E3779B97F4A7C15)  # odd multiplier folding a band's signature values into one hash
MAX_ROWS = 1 << 32  # a band entry packs its row number into 32 bits
VERIFY_CHUNK = 1 << 20  # pairs scored per rapidfuzz call: bounds the index arrays and lists alive at once


@dataclass
class NearDupResult:
    dup_of: np.ndarray  # int64 per row: index of the kept row of its group, -1 = kept
    dup_score: np.ndarray  # float64 per row: verification score of the edge that linked it, NaN if kept
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Texts:
    """What rows are verified on, as Unicode code points: one per word (see `of_words`) or one per
    character. Arrays, not Python strings (~4 bytes a word): only rows in candidate pairs are decoded."""

    codes: np.ndarray  # uint32 code points, row after row
    lengths: np.ndarray  # int64 code points per row

    @classmethod
    def of_words(cls, hashes: np.ndarray, lengths: np.ndarray) -> Texts:
        """One character per word: the word hash -> a code point in the supplementary planes, so
        rapidfuzz's fast string kernels compute word-level edit scores. Two words collide with
        probability ~1e-6 per pair of distinct words: negligible."""
        return cls((hashes % _U64(0xF0000) + _U64(0x10000)).astype(np.uint32), lengths.astype(np.int64))

    @classmethod
    def of_strings(cls, strings: list[str]) -> Texts:
        codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32)
        return cls(codes, np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)))

    def take(self, rows: np.ndarray) -> Texts:
        starts = (np.cumsum(self.lengths) - self.lengths)[rows]
        lengths = self.lengths[rows]
        return Texts(self.codes[spans(starts, lengths)], lengths)

    def strings(self) -> list[str]:
        """Every row as a Python string: one decode of all code points, then slices."""
        text = self.codes.astype("<u4", copy=False).tobytes().decode("utf-32-le")
        ends = np.cumsum(self.lengths)
        return [text[a:b] for a, b in zip((ends - self.lengths).tolist(), ends.tolist(), strict=True)]

    def objects(self) -> np.ndarray:
        """`strings` as an object array, which pairs of row indices gather from."""
        out = np.empty(self.lengths.shape[0], dtype=object)
        out[:] = self.strings()
        return out


@dataclass
class Shingled:
    """What near-dup needs of some rows: their shingles (grouped by row) and the text each is verified on."""

    sh: np.ndarray  # uint64 shingle hashes; words', then characters' (`_CHAR_BIT`); a row's are contiguous
    doc: np.ndarray  # int64 row of each shingle (index into the rows shingled)
    texts: Texts  # per row: one character per word, or the row's characters (see `shingle`)
    n_char: int  # rows written mostly without spaces: shingled and verified on characters only
    on_words: np.ndarray  # bool per row: verified on words (so also by `char_edits`)
    chars: np.ndarray  # int64 per row: characters of the normalized text
    n_char_index: int = 0  # rows in the character index (short texts, see `shingle`)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (in place on a copy): spreads bits of linear shingle combinations.

    In-place ufuncs with one scratch buffer: fresh 100+ MB temporaries cost more in page
    faults than the arithmetic itself.
    """
    x = x.copy()
    tmp = np.empty_like(x)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(x, _U64(shift), out=tmp)
        np.bitwise_xor(x, tmp, out=x)
        np.multiply(x, _U64(mult), out=x)
    np.right_shift(x, _U64(31), out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    return x


# ---------------------------------------------------------------- shingles


def tokenize(normalized: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes of every row, flattened, and the number of words per row."""
    # Empty/None rows become null lists with 0 words, so they never get a shingle.
    words = normalized.replace("", None).str.split(" ")
    lengths = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    hashes = flat.hash(seed=0x51).to_numpy()
    return hashes, lengths


def char_rows(normalized: pl.Series) -> np.ndarray:
    """Rows to shingle on characters: more characters of unspaced scripts than words of spaced ones."""
    frame = pl.DataFrame({"t": normalized})
    mixed = frame.select(has_unspaced(pl.col("t"))).to_series()
    if not mixed.any():
        return np.zeros(normalized.len(), dtype=bool)
    counts = frame.select(
        pl.col("t").str.count_matches(UNSPACED_CHAR).fill_null(0).alias("chars"),
        pl.col("t").str.count_matches(SPACED_WORD).fill_null(0).alias("words"),
    )
    return (counts["chars"] > counts["words"]).to_numpy() & mixed.to_numpy()


def unspaced_length(normalized: pl.Series, rows: np.ndarray) -> np.ndarray:
    """Characters of some rows (bool mask), spaces dropped; 0 for the others."""
    out = np.zeros(rows.shape[0], dtype=np.int64)
    if rows.any():
        texts = normalized.filter(pl.Series(rows)).str.replace_all(" ", "")
        out[rows] = texts.str.len_chars().to_numpy()
    return out


def ideographic(normalized: pl.Series, rows: np.ndarray) -> np.ndarray:
    """Which of some rows (bool mask) are mostly Chinese or Japanese characters (Han, kana), not spaces."""
    texts = pl.DataFrame({"t": normalized.filter(pl.Series(rows))})
    counts = texts.select(
        pl.col("t").str.count_matches(rf"[{HAN}{KANA}]").alias("cjk"),
        pl.col("t").str.replace_all(" ", "").str.len_chars().alias("chars"),
    )
    out = np.zeros(rows.shape[0], dtype=bool)
    out[rows] = (2 * counts["cjk"] > counts["chars"]).to_numpy()
    return out


def tokenize_chars(normalized: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Character hashes of every row (spaces dropped), flattened, and the number of characters per row."""
    chars = normalized.replace("", None).str.replace_all(" ", "").str.split("")
    lengths = chars.list.len().fill_null(0).to_numpy().astype(np.int64)
    hashes = chars.explode().drop_nulls().hash(seed=0x51).to_numpy()
    return hashes, lengths


def word_shingles(hashes: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash of each k-word window (rows shorter than k get one window of all their words, zero-padded).

    Returns (shingle hash uint64, row index int64), in row order.
    """
    windows = np.where(lengths >= k, lengths - k + 1, np.minimum(lengths, 1))
    starts = np.cumsum(lengths) - lengths
    sh = hashes.copy()  # the window starting at each word; past a row's end it runs into the next row
    for t in range(1, k):
        sh *= _FOLD
        sh[:-t] += hashes[t:]
    short = np.flatnonzero((lengths > 0) & (lengths < k))
    if short.shape[0]:  # their one window, padded with zeros instead
        first = starts[short]
        padded = hashes[first].copy()
        for t in range(1, k):
            nxt = np.where(t < lengths[short], hashes[np.minimum(first + t, hashes.shape[0] - 1)], _U64(0))
            padded = padded * _FOLD + nxt
        sh[first] = padded
    return _mix64(sh[spans(starts, windows)]), repeat(np.arange(lengths.shape[0], dtype=np.int64), windows)


def shingle(series: pl.Series, config: NearDupConfig) -> Shingled:
    """Shingles of normalized texts (no nulls), and the texts their pairs are verified on."""
    by_char = char_rows(series)
    n_char = int(by_char.sum())
    blank = pl.Series([""] * series.len(), dtype=pl.String)
    spaced = series.zip_with(pl.Series(~by_char), blank) if n_char else series
    hashes, lengths = tokenize(spaced)
    sh, doc = word_shingles(hashes, lengths, config.shingle_size)
    sh &= ~_CHAR_BIT
    texts = Texts.of_words(hashes, lengths)
    del hashes
    # Every text is in the word index, texts without spaces by their characters; short texts are in the
    # character index too (long ones need the word index's pruning: their common character shingles would
    # pair each with thousands). A pair across the limits is still paired in the word index.
    short = by_char & (unspaced_length(series, by_char) <= config.char_index_chars)
    in_chars = short | (~by_char & (lengths > 0) & (lengths <= config.char_index_words))
    n_index = int(in_chars.sum())
    cjk = ideographic(series, short) if n_char else short
    parts = [(sh, doc)]
    for rows, size, bit in (
        (by_char, config.char_shingle_size, _U64(0)),
        (in_chars & ~cjk, config.char_shingle_size, _CHAR_BIT),
        (cjk, config.cjk_shingle_size, _CHAR_BIT),
    ):
        if rows.any():  # shingled on characters, spaces dropped
            listed = series if rows.all() else series.filter(pl.Series(rows))
            c_sh, c_doc = word_shingles(*tokenize_chars(listed), size)
            c_sh = c_sh | _CHAR_BIT if bit else (c_sh ^ _CHAR_SALT) & ~_CHAR_BIT
            parts.append((c_sh, c_doc if rows.all() else np.flatnonzero(rows)[c_doc]))
    if len(parts) > 1:
        sh, doc = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if n_char or config.verify_on == "chars":  # verified on characters, spaces dropped
        strings = texts.strings() if config.verify_on == "words" else series.to_list()
        rows = np.flatnonzero(by_char).tolist()
        for i, text in zip(rows, series.gather(rows).to_list(), strict=True):
            strings[i] = text.replace(" ", "")
        texts = Texts.of_strings(strings)
    on_words = ~by_char if config.verify_on == "words" else np.zeros(series.len(), dtype=bool)
    chars = series.str.len_chars().to_numpy().astype(np.int64)
    return Shingled(sh, doc, texts, n_char, on_words=on_words, chars=chars, n_char_index=n_index)


def split_indexes(sh: np.ndarray, doc: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(shingles, rows) of the word index, then of the character index; a row's shingles stay contiguous."""
    in_chars = sh >= _CHAR_BIT
    return [(sh[~in_chars], doc[~in_chars]), (sh[in_chars], doc[in_chars])]


def index_seeds(config: NearDupConfig) -> tuple[int, int]:
    """MinHash seeds of the word index and of the character index."""
    return config.seed, config.seed + _CHAR_SEED


# ---------------------------------------------------------------- document frequency


def sort_integers(x: np.ndarray) -> np.ndarray:
    """A sorted copy of integers in no order: polars' sort, ~3x numpy's on 20M uint64 here."""
    return pl.Series(x).sort().to_numpy(writable=True) if x.shape[0] else x.copy()


def merge_sorted(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted concatenation of sorted arrays: numpy's stable sort (timsort) merges the runs it finds,
    ~10x faster than sorting values in no order."""
    return np.sort(np.concatenate(parts), kind="stable")


def sorted_unique(x: np.ndarray, *, runs: bool = False) -> np.ndarray:
    """np.unique for integers by a plain sort (numpy 2's np.unique is ~50x slower on uint64). `runs`: x is
    sorted arrays one after another (see `merge_sorted`)."""
    s = np.sort(x, kind="stable") if runs else sort_integers(x)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.shape[0] else s


def shingle_counts(sh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct shingles (sorted) and how often each occurs: a part's share of document frequency.

    Occurrences are counted, not distinct rows: a shingle repeated inside one short row is rare,
    and counting it twice only makes pruning slightly more eager. A plain sort of the hashes is
    ~10x faster than a hash group-by or an argsort here."""
    s = sort_integers(sh)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.shape[0] else np.zeros(0, dtype=np.int64)
    return s[starts], np.diff(np.r_[starts, s.shape[0]]).astype(np.int64)


def merge_counts(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of several parts' `shingle_counts` (each sorted and distinct)."""
    if len(parts) == 1:
        return parts[0]
    values = sorted_unique(np.concatenate([p[0] for p in parts]), runs=True)
    counts = np.zeros(values.shape[0], dtype=np.int64)
    for uniq, cnt in parts:
        counts[np.searchsorted(values, uniq)] += cnt  # distinct within a part: no repeated index
    return values, counts


def df_window(values: np.ndarray, counts: np.ndarray, config: NearDupConfig, rows: int) -> np.ndarray:
    """Which shingles (`values`, occurring `counts` times) have a document frequency in [min_df, max_df]:
    the limit for `rows` rows, of the word index or of the character index."""
    word_limit, char_limit = config.max_df_for(rows), config.char_max_df_for(rows)
    limit = np.where(values >= _CHAR_BIT, char_limit, word_limit) if word_limit != char_limit else word_limit
    return (counts >= config.min_df) & (counts <= limit)


def keep_shingles(
    sh: np.ndarray, doc: np.ndarray, values: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Occurrences of the shingles `values[keep]`, where `values` holds every shingle of `sh`.

    A hash set probe (~10x faster than a sorted search) of the smaller side: with templated text the
    shingles outside the window are few, and a set that fits in cache is ~3x faster to probe."""
    inside = 2 * int(keep.sum()) <= keep.shape[0]
    probe = values[keep] if inside else values[~keep]
    found = pl.Series(sh).is_in(pl.Series(probe).implode()).to_numpy()
    mask = found if inside else ~found
    return sh[mask], doc[mask]


# ---------------------------------------------------------------- MinHash-LSH


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | _U64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    return a, b


def minhash(
    sh: np.ndarray, doc: np.ndarray, num_perm: int, seed: int, chunk: int = 1 << 13
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (rows with >=1 shingle, uint32 [rows, num_perm]) and their row numbers.

    Permutation p is the multiply-shift hash ((a_p * x + b_p) mod 2^64) >> 32 with odd a_p. The
    minimum of the 64-bit products has the minimum's top 32 bits, so the shift runs once per row,
    not per shingle. Chunks of ~8k shingles x all permutations stay in cache; one row's shingles
    must be contiguous in `sh`.
    """
    a, b = _permutations(num_perm, seed)
    if sh.shape[0] == 0:
        return np.zeros((0, num_perm), dtype=np.uint32), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    rows = doc[starts]
    ends = np.r_[starts[1:], sh.shape[0]]
    sig = np.empty((rows.shape[0], num_perm), dtype=np.uint32)
    buf = np.empty((max(chunk, int((ends - starts).max())), num_perm), dtype=np.uint64)
    r0 = 0
    while r0 < rows.shape[0]:
        # a chunk = whole rows whose shingles fit in `chunk` (at least one row)
        r1 = max(int(np.searchsorted(ends, starts[r0] + chunk, side="right")), r0 + 1)
        lo, hi = starts[r0], ends[r1 - 1]
        hp = buf[: hi - lo]
        np.multiply(sh[lo:hi, None], a[None, :], out=hp)
        np.add(hp, b[None, :], out=hp)
        low = np.minimum.reduceat(hp, starts[r0:r1] - lo, axis=0)
        sig[r0:r1] = low >> _U64(32)
        r0 = r1
    return sig, rows


def band_entries(sig: np.ndarray, rows: np.ndarray, bands: int, band_rows: int, seed: int) -> np.ndarray:
    """LSH band entries, uint64 [bands, rows]: (32-bit band key << 32) | row number, each band sorted.

    A band's key is a multiply-shift hash (random per band) of its signature values folded into 64 bits.
    Sorted, a band's rows with the same key are adjacent and in row order, whichever part they came
    from: merging parts is concatenating and sorting again. A plain sort of packed values is ~10x
    faster than an argsort. Two unrelated rows share a 32-bit key with probability ~2^-32 per band:
    an extra candidate that verification rejects, never a missed one.
    """
    if rows.shape[0] and int(rows.max()) >= MAX_ROWS:
        raise ValueError(f"near-duplicate search takes at most {MAX_ROWS:,} rows")
    a, b = _permutations(bands, seed + 1)
    out = np.empty((bands, rows.shape[0]), dtype=np.uint64)
    row_bits = rows.astype(np.uint64)
    for band in range(bands):
        key = np.zeros(rows.shape[0], dtype=np.uint64)
        for j in range(band * band_rows, (band + 1) * band_rows):
            key *= _FOLD
            key += sig[:, j]
        key *= a[band]
        key += b[band]
        key &= ~_MASK32
        key |= row_bits
        out[band] = sort_integers(key)
    return out


def band_pairs(entries: np.ndarray, max_bucket: int) -> np.ndarray:
    """Pairs (u << 32 | v, u < v) of rows sharing a key in one sorted band. Small buckets: all pairs.
    Big ones: a star from the first row plus a chain through consecutive rows.

    Capping big buckets keeps the candidate count linear in rows: a bucket of size s costs
    2s pairs instead of s^2/2, and true duplicates still link through the star centre or
    their neighbour (and through the other bands).
    """
    keys = entries >> _U64(32)
    same = keys[1:] == keys[:-1]
    starts = np.flatnonzero(np.r_[True, ~same])
    sizes = np.diff(np.r_[starts, entries.shape[0]])
    starts, sizes = starts[sizes > 1], sizes[sizes > 1]
    rows = entries & _MASK32
    small = sizes <= max_bucket
    # every member of a small bucket pairs with each later member: member i of size s has s-1-i partners
    s_start, s_size = starts[small], sizes[small]
    member = spans(s_start, s_size)
    partners = repeat(s_start + s_size, s_size) - member - 1
    u = repeat(member, partners)
    v = spans(member + 1, partners)
    b_start, b_size = starts[~small], sizes[~small]
    rest = spans(b_start + 1, b_size - 1)  # every member but the first
    u = np.concatenate([u, repeat(b_start, b_size - 1), rest - 1])
    v = np.concatenate([v, rest, rest])
    return (rows[u] << _U64(32)) | rows[v]


def repeat(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """np.repeat(values, sizes) for int64 values: the running sum of the steps between runs. np.repeat with
    counts that vary is ~5x slower on millions of runs, and these repeats were a third of shingling."""
    values = values.astype(np.int64, copy=False)
    full = sizes > 0
    values, sizes = values[full], sizes[full]
    out = np.zeros(int(sizes.sum()), dtype=np.int64)
    if out.shape[0]:
        out[np.cumsum(sizes) - sizes] = np.diff(values, prepend=0)
        np.cumsum(out, out=out)
    return out


def spans(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """start, start+1, ..., start+size-1 for each (start, size), concatenated (as `repeat`, by steps)."""
    starts = starts.astype(np.int64, copy=False)
    full = sizes > 0
    starts, sizes = starts[full], sizes[full]
    out = np.ones(int(sizes.sum()), dtype=np.int64)
    if out.shape[0]:
        last = starts + sizes - 1  # each span's last value; the next span steps from it
        out[np.cumsum(sizes) - sizes] = starts - np.r_[0, last[:-1]]
        np.cumsum(out, out=out)
    return out


def unpack_pairs(codes: np.ndarray) -> np.ndarray:
    """int64 [pairs, 2] from `band_pairs` codes."""
    return np.stack([(codes >> _U64(32)).astype(np.int64), (codes & _MASK32).astype(np.int64)], axis=1)


def signatures(sh: np.ndarray, doc: np.ndarray, config: NearDupConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """MinHash signatures and their rows (see `minhash`) in the word index, then in the character index."""
    parts = zip(split_indexes(sh, doc), index_seeds(config), strict=True)
    return [minhash(s, d, config.num_perm, seed) for (s, d), seed in parts]


def lsh_candidates(signed: list[tuple[np.ndarray, np.ndarray]], config: NearDupConfig) -> np.ndarray:
    """Unique candidate pairs of both indexes (`signatures`), as sorted `band_pairs` codes (u << 32 | v)."""
    codes = [np.zeros(0, dtype=np.uint64)]
    for (sig, rows), seed in zip(signed, index_seeds(config), strict=True):
        entries = band_entries(sig, rows, config.bands, config.rows, seed)
        codes += [band_pairs(entries[band], config.max_bucket_size) for band in range(config.bands)]
    return sorted_unique(np.concatenate(codes))


# ---------------------------------------------------------------- verification and groups


def verify_pairs(strings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """rapidfuzz fuzz.ratio (0-100) of each pair of rows of `strings` (one Python string per row, an object
    array), multi-threaded (workers=-1)."""
    if pairs.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    left, right = strings[pairs[:, 0]].tolist(), strings[pairs[:, 1]].tolist()
    return process.cpdist(left, right, scorer=fuzz.ratio, workers=-1, dtype=np.float32).astype(np.float64)


@dataclass
class EditRule:
    """What `char_edits` needs to know of the rows `strings` holds: which are verified on words, their word
    count (the length of their word string) and the characters of their normalized text."""

    on_words: np.ndarray  # bool per row
    words: np.ndarray  # integers per row
    chars: np.ndarray  # integers per row
    limit: int  # config.char_edits

    def worth_a_look(self, pairs: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Which pairs (int64 [pairs, 2] of indices into the rows; their word scores) may be `limit`
        characters apart: both verified on words, lengths at most `limit` apart, and at most 3 * `limit`
        word insertions and deletions apart (one character merges or splits two words, or changes one)."""
        a, b = pairs[:, 0], pairs[:, 1]
        gap = np.abs(self.chars[a].astype(np.int64) - self.chars[b])
        near = self.on_words[a] & self.on_words[b] & (gap <= self.limit)
        indel = (1.0 - scores / 100.0) * (self.words[a].astype(np.int64) + self.words[b])
        return near & (indel <= 3 * self.limit + 0.5)


def verified_edges(
    strings: np.ndarray,
    codes: np.ndarray,
    threshold: float,
    at: np.ndarray | None = None,
    edits: EditRule | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs (`band_pairs` codes) scoring >= threshold, as int64 [edges, 2] row numbers
    and their scores, and (with `edits`) the pairs under it that `edits` should look at (row numbers).
    `strings` holds each row's text once (`Texts.objects`): a row is in ~15 pairs at 10M rows, and decoding
    its string per chunk of pairs instead was most of the time. Chunked: only a chunk's pairs and lists exist
    at once. `at` maps a row number to its index in `strings` (default: the same)."""
    edges, scores = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0, dtype=np.float64)]
    again = [np.zeros((0, 2), dtype=np.int64)]
    for lo in range(0, codes.shape[0], VERIFY_CHUNK):
        pairs = unpack_pairs(codes[lo : lo + VERIFY_CHUNK])
        index = pairs if at is None else at[pairs]
        score = verify_pairs(strings, index)
        ok = score >= threshold
        edges.append(pairs[ok])
        scores.append(score[ok])
        if edits is not None and edits.limit:
            again.append(pairs[~ok][edits.worth_a_look(index[~ok], score[~ok])])
    return np.concatenate(edges), np.concatenate(scores), np.concatenate(again)


def edit_edges(
    left: list[str], right: list[str], pairs: np.ndarray, threshold: float, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (row numbers; `left`, `right`: their normalized texts) at most `limit` characters apart
    (Levenshtein) and at least `threshold` alike in characters (rapidfuzz ratio), and that ratio."""
    if not pairs.shape[0]:
        return pairs, np.zeros(0, dtype=np.float64)
    dist = process.cpdist(left, right, scorer=Levenshtein.distance, score_cutoff=limit, workers=-1)
    ratio = process.cpdist(left, right, scorer=fuzz.ratio, workers=-1, dtype=np.float32).astype(np.float64)
    ok = (dist <= limit) & (ratio >= threshold)
    return pairs[ok], ratio[ok]


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of each row = smallest row index of its component (min-label propagation).

    Runs on the rows that have an edge only, renumbered in order (so the smallest stays smallest):
    with millions of rows and thousands of edges, whole-row passes would dominate."""
    label = np.arange(n, dtype=np.int64)
    if u.shape[0] == 0:
        return label
    nodes = sorted_unique(np.concatenate([u, v]))
    cu, cv = np.searchsorted(nodes, u), np.searchsorted(nodes, v)
    small = np.arange(nodes.shape[0], dtype=np.int64)
    while True:
        m = np.minimum(small[cu], small[cv])
        before = small.copy()
        np.minimum.at(small, cu, m)
        np.minimum.at(small, cv, m)
        # pointer jumping: follow labels to their own label until fixed
        while True:
            jumped = small[small]
            if np.array_equal(jumped, small):
                break
            small = jumped
        if np.array_equal(before, small):
            label[nodes] = nodes[small]
            return label


def group_duplicates(n: int, edges: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the verified edges over rows 0..n-1: (dup_of, dup_score) per row. Every
    row but the smallest of its component points at the smallest (-1: kept), with the score of the best
    edge touching it (NaN: kept)."""
    eu, ev = edges[:, 0], edges[:, 1]
    label = connected_components(n, eu, ev)
    dropped = label != np.arange(n)
    best = np.full(n, -np.inf)
    np.maximum.at(best, eu, scores)
    np.maximum.at(best, ev, scores)
    return np.where(dropped, label, -1), np.where(dropped, best, np.nan)


def find_near_duplicates(
    texts: list[str | None] | pl.Series, config: NearDupConfig, *, normalized: bool = False
) -> NearDupResult:
    """Near-duplicate groups over `texts`; the earliest row of each group is kept.

    `normalized=True` says the texts are already `normalize_expr` output (the engine passes
    its normalized column to avoid normalizing twice).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    series = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    if not normalized:
        series = normalize(series)
    series = series.fill_null("")
    n = series.len()
    part = shingle(series, config)
    timings["shingle_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    values, counts = shingle_counts(part.sh)
    sh, doc = keep_shingles(part.sh, part.doc, values, df_window(values, counts, config, n))
    shingles = part.sh.shape[0]
    part.sh = part.doc = values = counts = np.zeros(0, dtype=np.uint64)  # the largest arrays: not kept
    timings["df_prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    signed = signatures(sh, doc, config)
    timings["minhash_s"] = time.perf_counter() - t

    t = time.perf_counter()
    codes = lsh_candidates(signed, config)
    timings["lsh_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rule = EditRule(part.on_words, part.texts.lengths, part.chars, config.char_edits)
    edges, scores, again = verified_edges(part.texts.objects(), codes, config.threshold, edits=rule)
    rows = sorted_unique(again.ravel())
    text = np.empty(n, dtype=object)
    text[rows] = series.gather(rows).to_list()
    by_edits, edit_scores = edit_edges(
        text[again[:, 0]].tolist(), text[again[:, 1]].tolist(), again, config.threshold, config.char_edits
    )
    edges, scores = np.concatenate([edges, by_edits]), np.concatenate([scores, edit_scores])
    timings["verify_s"] = time.perf_counter() - t

    t = time.perf_counter()
    result = NearDupResult(*group_duplicates(n, edges, scores))
    timings["components_s"] = time.perf_counter() - t

    result.stats = {
        "rows": n,
        "char_rows": part.n_char,
        "char_index_rows": part.n_char_index,
        "shingles": shingles,
        "shingles_kept": sh.shape[0],
        "max_df": config.max_df_for(n),
        "char_max_df": config.char_max_df_for(n),
        "rows_with_signature": int(signed[0][1].shape[0]),
        "rows_with_char_signature": int(signed[1][1].shape[0]),
        "candidate_pairs": int(codes.shape[0]),
        "edit_checked_pairs": int(again.shape[0]),
        "edit_pairs": int(by_edits.shape[0]),
        "verified_pairs": int(edges.shape[0]),
        "near_duplicates": int((result.dup_of >= 0).sum()),
        **timings,
        "total_s": time.perf_counter() - t0,
    }
    return result
