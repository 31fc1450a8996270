"""Text normalization as Polars expressions, shared by exact dedup and near-dup.

Normalized text is what "the same text" means for dedup: case, Unicode compatibility forms,
punctuation and spacing are presentation, not content.
"""

from __future__ import annotations

import polars as pl

# Unicode punctuation and symbols; removed (not replaced by a space) so "don't" == "dont"
# and a stray comma or question mark does not change the words.
_PUNCT = r"[\p{P}\p{S}]+"
# Runs of 2+ whitespace, or any whitespace other than a plain space: same result as `\s+ -> " "`
# but ~5x faster, as most texts only have single plain spaces.
_SPACE = r"\s{2,}|[^\S ]"
_NON_ASCII = r"[^\x00-\x7f]"
# Seed fixed so the hash is reproducible inside one Polars version (the Polars hash is not
# promised stable across versions: never persist it, recompute it).
HASH_SEED = 0x9E3779B9


def normalize_expr(text: pl.Expr) -> pl.Expr:
    """NFKC -> lowercase -> punctuation stripped -> whitespace collapsed and trimmed."""
    return _fold(text.str.normalize("NFKC"))


def text_hash_expr(normalized: pl.Expr) -> pl.Expr:
    """64-bit hash of the normalized text (null stays null) for exact dedup."""
    return pl.when(normalized.is_not_null()).then(normalized.hash(seed=HASH_SEED))


def _fold(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(_PUNCT, "").str.replace_all(_SPACE, " ").str.strip_chars()


def normalize(texts: pl.Series) -> pl.Series:
    """Same result as `normalize_expr`, faster: NFKC (the costly step) runs only on rows with a
    non-ASCII character, since NFKC leaves ASCII unchanged."""
    texts = texts.cast(pl.String)
    idx = texts.str.contains(_NON_ASCII).fill_null(False).arg_true()
    if idx.len():
        texts = texts.clone().scatter(idx, texts.gather(idx).str.normalize("NFKC"))
    frame = pl.DataFrame({"t": texts})
    return frame.select(_fold(pl.col("t"))).to_series().alias(texts.name)
