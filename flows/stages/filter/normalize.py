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
# Arabic short-vowel marks (tashkeel), superscript alef and the tatweel stretch: optional in writing
_ARABIC_MARKS = r"[\x{0610}-\x{061A}\x{064B}-\x{065F}\x{0670}\x{06D6}-\x{06ED}\x{0640}]"
# A space between two characters of a script written without spaces is presentation, not content
_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\x{30FC}"
_INNER_SPACE = rf"([{_UNSPACED}])\s+([{_UNSPACED}])"
# Seed fixed so the hash is reproducible inside one Polars version (the Polars hash is not
# promised stable across versions: never persist it, recompute it).
HASH_SEED = 0x9E3779B9


def normalize_expr(text: pl.Expr) -> pl.Expr:
    """NFKC -> lowercase -> punctuation stripped -> whitespace collapsed and trimmed (and, in other
    scripts, Arabic vowel marks dropped and spaces between Chinese, Japanese or Thai characters removed)."""
    return _fold(_unicode_fold(text.str.normalize("NFKC")))


def _unicode_fold(text: pl.Expr) -> pl.Expr:
    """The folds only non-ASCII text needs (run twice: a match consumes the character after a space)."""
    joined = text.str.replace_all(_INNER_SPACE, "${1}${2}").str.replace_all(_INNER_SPACE, "${1}${2}")
    return joined.str.replace_all(_ARABIC_MARKS, "")


def text_hash_expr(normalized: pl.Expr) -> pl.Expr:
    """64-bit hash of the normalized text (null stays null) for exact dedup."""
    return pl.when(normalized.is_not_null()).then(normalized.hash(seed=HASH_SEED))


def _fold(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(_PUNCT, "").str.replace_all(_SPACE, " ").str.strip_chars()


def normalize(texts: pl.Series) -> pl.Series:
    """Same result as `normalize_expr`, faster: NFKC (the costly step) and the other Unicode folds run
    only on rows with a non-ASCII character, since they leave ASCII unchanged."""
    texts = texts.cast(pl.String)
    idx = texts.str.contains(_NON_ASCII).fill_null(False).arg_true()
    if idx.len():
        wide = pl.DataFrame({"t": texts.gather(idx)})
        folded = wide.select(_unicode_fold(pl.col("t").str.normalize("NFKC"))).to_series()
        texts = texts.clone().scatter(idx, folded)
    frame = pl.DataFrame({"t": texts})
    return frame.select(_fold(pl.col("t"))).to_series().alias(texts.name)
