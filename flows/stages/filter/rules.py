"""Heuristic row rules, vectorized as Polars expressions.

Each rule answers one question about one text (datatrove-style): it has a `name` (the drop
reason), a `score` expression computed from the text and a `keep` expression computed from the
score. Evaluating all rules, picking the first failing one and counting live once in the engine.

Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Burmese) have no
whitespace words to count: there a text's length is its characters (graphemes: a base letter with its
combining marks) converted to words at a per-script rate (`*_chars_per_word`), repetition is judged on
character bigrams, and truncation on words that cannot end a sentence, matched at the end of the text.
Texts without such characters are scored exactly as before (whitespace words), at the same speed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from personaloom.schemas.filtering import RuleConfig

_WORD = r"\S+"
# Curly apostrophes are what models emit most; phrase lists are written with ASCII ones.
_APOSTROPHES = r"[\u2018\u2019\u02bc]"
# Scripts without spaces between words (ー, the kana length mark, is in the Common script)
HAN = r"\p{Han}"
KANA = r"\p{Hiragana}\p{Katakana}\x{30FC}"
SEA = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"  # South-East Asian abugidas written without spaces
UNSPACED = HAN + KANA + SEA
UNSPACED_CHAR = rf"[{UNSPACED}]"
# CJK and full-width punctuation: not words of their own
_CJK_PUNCT = r"\x{3000}-\x{303F}\x{FF00}-\x{FFEF}"
SPACED_WORD = rf"[^\s{UNSPACED}{_CJK_PUNCT}]+"
# one grapheme of an unspaced script: a base character and the combining marks on it
GRAPHEME = rf"[{UNSPACED}&&\P{{M}}]\p{{M}}*"


@dataclass(frozen=True)
class Rule:
    name: str
    score: Callable[[pl.Expr], pl.Expr]  # text -> Float64 score (null text -> null)
    keep: Callable[[pl.Expr], pl.Expr]  # score -> Boolean, True = the row passes this rule


def word_count(text: pl.Expr) -> pl.Expr:
    return text.str.count_matches(_WORD).cast(pl.Float64)


def has_unspaced(text: pl.Expr) -> pl.Expr:
    # the regex runs only on non-ASCII rows (byte and character lengths differ): ~15x cheaper on English
    non_ascii = text.str.len_bytes() != text.str.len_chars()
    return pl.when(non_ascii).then(text).str.contains(UNSPACED_CHAR).fill_null(False)


def _unspaced_only(text: pl.Expr) -> pl.Expr:
    """The text where it holds an unspaced script, else null: script-aware work skips the other rows."""
    return pl.when(has_unspaced(text)).then(text)


def token_count(text: pl.Expr, config: RuleConfig) -> pl.Expr:
    """Words: whitespace words, plus characters of unspaced scripts at their chars-per-word rate."""
    mixed = _unspaced_only(text)
    count = mixed.str.count_matches(SPACED_WORD).cast(pl.Float64)
    for chars, rate in (
        (rf"[{HAN}]", config.han_chars_per_word),
        (rf"[{KANA}]", config.kana_chars_per_word),
        (rf"[{SEA}&&\P{{M}}]", config.sea_chars_per_word),
    ):
        count = count + mixed.str.count_matches(chars).cast(pl.Float64) / rate
    return pl.when(has_unspaced(text)).then(count).otherwise(word_count(text))


def _lowered(text: pl.Expr) -> pl.Expr:
    # No NFKC here: it is the costliest string op and phrases/words are plain lowercase ASCII.
    return text.str.to_lowercase().str.replace_all(_APOSTROPHES, "'")


def unique_word_ratio(text: pl.Expr) -> pl.Expr:
    # split on single spaces after collapsing whitespace: ~3x faster than extract_all(\S+)
    words = _lowered(text).str.replace_all(r"\s{2,}|[^\S ]", " ").str.strip_chars().str.split(" ")
    # one list pass: `n_unique() / len()` as two list ops splits every text twice (polars does not
    # share a subexpression inside one expression)
    return words.list.eval(pl.element().n_unique() / pl.element().len()).list.first().cast(pl.Float64)


def unique_token_ratio(text: pl.Expr) -> pl.Expr:
    """Unique tokens / tokens: whitespace words, and character bigrams where a script has no spaces
    (single characters of such scripts repeat in any long text; their bigrams do not)."""
    mixed = _unspaced_only(text)
    words = _lowered(mixed).str.extract_all(SPACED_WORD)
    bigrams = (
        mixed.str.extract_all(GRAPHEME).list.eval(pl.element() + pl.element().shift(-1)).list.drop_nulls()
    )
    ratio = (words.list.n_unique() + bigrams.list.n_unique()) / (words.list.len() + bigrams.list.len())
    return pl.when(has_unspaced(text)).then(ratio.cast(pl.Float64)).otherwise(unique_word_ratio(text))


def empty_rule() -> Rule:
    # Null and whitespace-only texts: keep is null-safe because this rule runs first.
    return Rule("empty", word_count, lambda s: s.fill_null(0.0) > 0)


def too_short_rule(min_words: int, config: RuleConfig | None = None) -> Rule:
    count = (lambda t: token_count(t, config)) if config is not None else word_count
    return Rule("too_short", count, lambda s: s >= min_words)


def too_long_rule(max_words: int, config: RuleConfig | None = None) -> Rule:
    count = (lambda t: token_count(t, config)) if config is not None else word_count
    return Rule("too_long", count, lambda s: s <= max_words)


def _phrase_rule(name: str, phrases: list[str], lower: bool) -> Rule:
    def score(text: pl.Expr) -> pl.Expr:
        if not phrases:
            return pl.lit(0.0).cast(pl.Float64)
        source = _lowered(text) if lower else text
        pats = [p.lower() for p in phrases] if lower else phrases
        # Aho-Corasick over all phrases at once: one pass per text whatever the list length.
        return source.str.contains_any(pats, ascii_case_insensitive=True).cast(pl.Float64)

    return Rule(name, score, lambda s: s == 0.0)


def refusal_rule(phrases: list[str]) -> Rule:
    return _phrase_rule("refusal", phrases, lower=True)


def template_tokens_rule(patterns: list[str]) -> Rule:
    return _phrase_rule("template_tokens", patterns, lower=False)


def low_unique_ratio_rule(min_ratio: float, min_words: int, config: RuleConfig | None = None) -> Rule:
    # Short texts are exempt (null score): "yes yes" says nothing about degenerate repetition.
    def score(text: pl.Expr) -> pl.Expr:
        if config is None:
            return pl.when(word_count(text) >= min_words).then(unique_word_ratio(text))
        return pl.when(token_count(text, config) >= min_words).then(unique_token_ratio(text))

    return Rule("low_unique_ratio", score, lambda s: (s >= min_ratio).fill_null(True))


def truncated_rule(dangling_words: list[str], dangling_endings: list[str] | None = None) -> Rule:
    dangling = sorted({w.lower() for w in dangling_words})
    endings = sorted({e.strip() for e in dangling_endings or [] if e.strip()}, key=len, reverse=True)
    # an unspaced-script text ending on one of these, with no punctuation after it
    tail = "(?:" + "|".join(re.escape(e) for e in endings) + r")\s*$" if endings else None

    def score(text: pl.Expr) -> pl.Expr:
        # `\w+` anchored at the end means the text has no terminal punctuation after its last
        # word; only then do we look at that word. 1.0 = cut off mid-sentence.
        # matched as written: an acronym ("LA", "UN", "DE") is not the word ("la", "un", "de")
        last = text.str.extract(r"(\w+)\s*$", 1)
        cut = last.is_in(dangling).fill_null(False)
        if tail is not None:
            cut = cut | _unspaced_only(text).str.contains(tail).fill_null(False)
        return cut.cast(pl.Float64)

    return Rule("truncated", score, lambda s: s == 0.0)


def build_rules(config: RuleConfig) -> list[Rule]:
    """Rules in evaluation order; the first one a row fails is its drop reason."""
    rules = [
        empty_rule(),
        too_short_rule(config.min_words, config),
        too_long_rule(config.max_words, config),
        template_tokens_rule(config.template_patterns),
        refusal_rule(config.refusal_phrases),
        low_unique_ratio_rule(config.min_unique_ratio, config.unique_ratio_min_words, config),
    ]
    if config.check_truncation:
        rules.append(truncated_rule(config.dangling_words, config.dangling_endings))
    return rules
