"""Near-duplicate detection: MinHash-LSH blocking -> rapidfuzz verification -> components.

Why each step exists (measured on templated persona queries, see bench/filter_bench.py):
- Shingles seen in one row cannot link two rows, and shingles seen in many rows are template
  boilerplate that makes every sibling of a template look alike. Pruning both (min_df/max_df)
  leaves each row with the shingles it shares with few others, which cut LSH candidates ~40x.
- LSH output is never trusted: every candidate pair is re-scored with rapidfuzz on the
  normalized text, and only pairs at or above the threshold become edges. Unverified LSH chained
  template siblings together and dropped 19-56% of unique rows.
- Groups are the connected components of verified edges; the earliest row of each group is kept.
- Texts mostly in a script written without spaces (Chinese, Japanese, Thai) have no words to shingle:
  a whole sentence would be one "word". They are shingled on characters (`char_shingle_size`) and
  verified on characters, in the same LSH index as the others (their shingle hashes are salted apart).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from personaloom.filtering.normalize import normalize
from personaloom.filtering.rules import SPACED_WORD, UNSPACED_CHAR, has_unspaced
from personaloom.schemas.filtering import NearDupConfig

_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_CHAR_SALT = _U64(0xC4A125A17C4A125A)  # keeps character shingles apart from word shingles


@dataclass
class NearDupResult:
    dup_of: np.ndarray  # int64 per row: index of the kept row of its group, -1 = kept
    dup_score: np.ndarray  # float64 per row: verification score of the edge that linked it, NaN if kept
    stats: dict[str, float] = field(default_factory=dict)


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


def tokenize_chars(normalized: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Character hashes of every row (spaces dropped), flattened, and the number of characters per row."""
    chars = normalized.replace("", None).str.replace_all(" ", "").str.split("")
    lengths = chars.list.len().fill_null(0).to_numpy().astype(np.int64)
    hashes = chars.explode().drop_nulls().hash(seed=0x51).to_numpy()
    return hashes, lengths


def word_shingles(hashes: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash of each k-word window (rows shorter than k get one window of all their words).

    Returns (shingle hash uint64, row index int32), in row order.
    """
    n_tok = hashes.shape[0]
    lens32 = lengths.astype(np.int32)
    doc = np.repeat(np.arange(lengths.shape[0], dtype=np.int32), lens32)
    row_len = np.repeat(lens32, lens32)
    # words left in the row from each position (1 = last word); int32 keeps memory traffic low
    left = row_len - (
        np.arange(n_tok, dtype=np.int32) - np.repeat((np.cumsum(lens32) - lens32).astype(np.int32), lens32)
    )
    sh = hashes
    for t in range(1, k):
        nxt = np.zeros(n_tok, dtype=_U64)
        nxt[:-t] = hashes[t:]
        nxt[left <= t] = 0  # window runs past the end of its row: pad (kept for short rows only)
        sh = sh * _U64(0x9E3779B97F4A7C15)
        sh += nxt
    valid = left >= k
    valid |= (row_len < k) & (left == row_len)
    return _mix64(sh[valid]), doc[valid]


def prune_by_df(sh: np.ndarray, doc: np.ndarray, min_df: int, max_df: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep shingles whose document frequency is in [min_df, max_df]."""
    # Exact counts with a multi-threaded hash group-by (faster than a numpy sort here).
    # Occurrences are counted, not distinct rows: a shingle repeated inside one short row is
    # rare, and counting it twice only makes pruning slightly more eager.
    df = pl.DataFrame({"s": sh}).select(pl.len().over("s")).to_series().to_numpy()
    keep = (df >= min_df) & (df <= max_df)
    return sh[keep], doc[keep]


def minhash(
    sh: np.ndarray, doc: np.ndarray, num_perm: int, seed: int, chunk: int = 1 << 17
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (rows with >=1 shingle, uint32 [rows, num_perm]) and their row indices.

    Permutation p is the multiply-shift hash ((a_p * x + b_p) mod 2^64) >> 32 with odd a_p;
    the per-row minimum is a reduceat over the row-sorted shingles. Work goes in chunks of
    ~128k shingles x all permutations so each chunk stays in cache (one pass over memory).
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | _U64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    if sh.shape[0] == 0:
        return np.zeros((0, num_perm), dtype=np.uint32), np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(doc)) + 1))
    rows = doc[starts]
    sig = np.empty((rows.shape[0], num_perm), dtype=np.uint32)
    ends = np.r_[starts[1:], sh.shape[0]]
    r0 = 0
    while r0 < rows.shape[0]:
        # a chunk = whole rows whose shingles fit in `chunk` (at least one row)
        r1 = max(int(np.searchsorted(ends, starts[r0] + chunk, side="right")), r0 + 1)
        lo, hi = starts[r0], ends[r1 - 1]
        hp = ((sh[lo:hi, None] * a[None, :] + b[None, :]) >> _U64(32)).astype(np.uint32)
        sig[r0:r1] = np.minimum.reduceat(hp, starts[r0:r1] - lo, axis=0)
        r0 = r1
    return sig, rows


def _band_pairs(keys: np.ndarray, rows: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows sharing a band key. Small buckets: all pairs. Big ones: star + chain.

    Capping big buckets keeps the candidate count linear in rows: a bucket of size s costs
    2s pairs instead of s^2/2, and true duplicates still link through the star centre or
    their neighbour (and through the other bands).
    """
    # Unstable sort is ~2x faster; pairs are re-ordered (u < v) afterwards anyway.
    order = np.argsort(keys)
    ks = keys[order]
    rs = rows[order]
    new = np.empty(ks.shape[0], dtype=bool)
    new[:1] = True
    new[1:] = ks[1:] != ks[:-1]
    bid = np.cumsum(new) - 1
    size = np.bincount(bid)
    multi = size[bid] > 1
    ks, rs, bid = ks[multi], rs[multi], bid[multi]
    if rs.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    msize = size[bid]
    us: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    small = msize <= max_bucket
    for d in range(1, min(max_bucket, int(msize.max()))):
        same = (bid[:-d] == bid[d:]) & small[:-d]
        us.append(rs[:-d][same])
        vs.append(rs[d:][same])
    big = ~small
    if big.any():
        start_pos = np.flatnonzero(np.r_[True, bid[1:] != bid[:-1]])
        first = start_pos[np.searchsorted(start_pos, np.arange(bid.shape[0]), side="right") - 1]
        nonfirst = big & (np.arange(bid.shape[0]) != first)
        idx = np.flatnonzero(nonfirst)
        us.extend([rs[first[idx]], rs[idx - 1]])  # star to one member, chain to the previous
        vs.extend([rs[idx], rs[idx]])
    return np.concatenate(us), np.concatenate(vs)


def lsh_candidates(
    sig: np.ndarray, rows: np.ndarray, bands: int, band_rows: int, max_bucket: int
) -> np.ndarray:
    """Unique candidate pairs (u < v) as an int64 array of shape [pairs, 2]."""
    codes: list[np.ndarray] = []
    for band in range(bands):
        cols = sig[:, band * band_rows : (band + 1) * band_rows].astype(np.uint64)
        key = np.full(cols.shape[0], band, dtype=np.uint64)
        for j in range(band_rows):
            key = _mix64(key ^ cols[:, j])
        u, v = _band_pairs(key, rows, max_bucket)
        lo, hi = np.minimum(u, v), np.maximum(u, v)
        keep = lo != hi
        codes.append((lo[keep].astype(np.uint64) << _U64(32)) | hi[keep].astype(np.uint64))
    if not codes:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate(codes))
    return np.stack([(pairs >> _U64(32)).astype(np.int64), (pairs & _MASK32).astype(np.int64)], axis=1)


def word_strings(hashes: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Each row as a string with one character per word (word hash -> a code point in the
    supplementary planes), so rapidfuzz's fast string kernels compute word-level edit scores.
    Two words collide with probability ~1e-6 per pair of distinct words: negligible."""
    cps = (hashes % _U64(0xF0000) + _U64(0x10000)).astype("<u4")
    big = cps.tobytes().decode("utf-32-le")
    ends = np.cumsum(lengths)
    starts = (ends - lengths).tolist()
    return [big[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]


def verify_pairs(texts: list[str], pairs: np.ndarray) -> np.ndarray:
    """rapidfuzz fuzz.ratio (0-100) of each pair, multi-threaded (workers=-1)."""
    if pairs.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    arr = np.asarray(texts, dtype=object)
    left = arr[pairs[:, 0]].tolist()
    right = arr[pairs[:, 1]].tolist()
    return process.cpdist(left, right, scorer=fuzz.ratio, workers=-1, dtype=np.float32).astype(np.float64)


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of each row = smallest row index of its component (min-label propagation)."""
    label = np.arange(n, dtype=np.int64)
    if u.shape[0] == 0:
        return label
    while True:
        m = np.minimum(label[u], label[v])
        before = label.copy()
        np.minimum.at(label, u, m)
        np.minimum.at(label, v, m)
        # pointer jumping: follow labels to their own label until fixed
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(before, label):
            return label


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
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_score = np.full(n, np.nan, dtype=np.float64)

    by_char = char_rows(series)
    n_char = int(by_char.sum())
    blank = pl.Series([""] * n, dtype=pl.String)
    spaced = series.zip_with(pl.Series(~by_char), blank) if n_char else series
    hashes, lengths = tokenize(spaced)
    texts = word_strings(hashes, lengths) if config.verify_on == "words" else series.to_list()
    if n_char:  # shingled and verified on characters, spaces dropped
        unspaced = series.zip_with(pl.Series(by_char), blank)
        c_hashes, c_lengths = tokenize_chars(unspaced)
        rows = np.flatnonzero(by_char).tolist()
        for i, text in zip(rows, unspaced.gather(rows).to_list(), strict=True):
            texts[i] = text.replace(" ", "")
    timings["tokenize_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    sh, doc = word_shingles(hashes, lengths, config.shingle_size)
    if n_char:
        c_sh, c_doc = word_shingles(c_hashes, c_lengths, config.char_shingle_size)
        sh, doc = np.concatenate([sh, c_sh ^ _CHAR_SALT]), np.concatenate([doc, c_doc])
    n_shingles = sh.shape[0]
    del hashes
    timings["shingle_s"] = time.perf_counter() - t

    t = time.perf_counter()
    sh, doc = prune_by_df(sh, doc, config.min_df, config.max_df)
    n_kept = sh.shape[0]
    timings["df_prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    sig, sig_rows = minhash(sh, doc, config.num_perm, config.seed)
    del sh, doc
    timings["minhash_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pairs = lsh_candidates(sig, sig_rows, config.bands, config.rows, config.max_bucket_size)
    timings["lsh_s"] = time.perf_counter() - t

    t = time.perf_counter()
    scores = verify_pairs(texts, pairs)
    ok = scores >= config.threshold
    eu, ev, es = pairs[ok, 0], pairs[ok, 1], scores[ok]
    timings["verify_s"] = time.perf_counter() - t

    t = time.perf_counter()
    label = connected_components(n, eu, ev)
    dropped = label != np.arange(n)
    dup_of[dropped] = label[dropped]
    # Score of the best verified edge touching each dropped row: the link that put it there.
    best = np.full(n, -np.inf)
    np.maximum.at(best, eu, es)
    np.maximum.at(best, ev, es)
    dup_score[dropped] = best[dropped]
    timings["components_s"] = time.perf_counter() - t

    stats: dict[str, float] = {
        "rows": n,
        "char_rows": n_char,
        "shingles": n_shingles,
        "shingles_kept": n_kept,
        "rows_with_signature": int(sig_rows.shape[0]),
        "candidate_pairs": int(pairs.shape[0]),
        "verified_pairs": int(ok.sum()),
        "near_duplicates": int(dropped.sum()),
        **timings,
        "total_s": time.perf_counter() - t0,
    }
    return NearDupResult(dup_of=dup_of, dup_score=dup_score, stats=stats)
