"""Text normalization as Polars expressions, shared by exact dedup and near-dup.

Normalized text is what "the same text" means for dedup: case, Unicode compatibility forms,
punctuation and spacing are presentation, not content.
"""

from __future__ import annotations

import polars as pl

# Unicode punctuation and symbols; removed (not replaced by a space) so "don't" == "dont"
# and a stray comma or question mark does not change the words.
_PUNCT = r"[\p{P}\p{S}]+"
_SPACE = r"\s+"
# Seed fixed so the hash is reproducible inside one Polars version (the Polars hash is not
# promised stable across versions: never persist it, recompute it).
HASH_SEED = 0x9E3779B9


def normalize_expr(text: pl.Expr) -> pl.Expr:
    """NFKC -> lowercase -> punctuation stripped -> whitespace collapsed and trimmed."""
    return (
        text.str.normalize("NFKC")
        .str.to_lowercase()
        .str.replace_all(_PUNCT, "")
        .str.replace_all(_SPACE, " ")
        .str.strip_chars()
    )


def text_hash_expr(normalized: pl.Expr) -> pl.Expr:
    """64-bit hash of the normalized text (null stays null) for exact dedup."""
    return pl.when(normalized.is_not_null()).then(normalized.hash(seed=HASH_SEED))


def normalize(texts: pl.Series) -> pl.Series:
    """Eager convenience: normalize a Series of strings."""
    return pl.select(normalize_expr(pl.lit(texts))).to_series().alias(texts.name)
