"""Languages by ISO 639-1 code: the English name a prompt uses, and a version's rows per language.

A persona's `interaction_language` is a code (seeds/language_codes.csv); every prompt that writes or
reads that persona's text names the language in words ("Write in Japanese"), through the Jinja filter
`language_name` (registered by `personaloom.llm.prompts.PromptLibrary`). `language_breakdown` and
`dataset_languages` count a version's rows per language for `personaloom show`, the notebook and the card.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import polars as pl

# A word in any script. Python's `\w` leaves out combining marks, so a Hindi, Thai or vocalized Arabic
# word would fall apart at each vowel sign ("तुलना" → "त", "ुलन"): the marks of those scripts' blocks
# are word characters here (the Devanagari danda and Thai punctuation are not).
WORD = re.compile(
    r"(?:\w|[\u0300-\u036f\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"
    r"\u0900-\u0963\u0966-\u0dff\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ecd"
    r"\u1000-\u109f\u1780-\u17dd])+"
)

LANGUAGE_NAMES: dict[str, str] = {
    "ar": "Arabic",
    "bn": "Bengali",
    "ca": "Catalan",
    "cs": "Czech",
    "cy": "Welsh",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "eu": "Basque",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "fy": "Frisian",
    "gl": "Galician",
    "gu": "Gujarati",
    "ha": "Hausa",
    "he": "Hebrew",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "ig": "Igbo",
    "it": "Italian",
    "ja": "Japanese",
    "jv": "Javanese",
    "ki": "Kikuyu",
    "kn": "Kannada",
    "ko": "Korean",
    "ku": "Kurdish",
    "ml": "Malayalam",
    "mr": "Marathi",
    "ms": "Malay",
    "nl": "Dutch",
    "no": "Norwegian",
    "or": "Odia",
    "pa": "Punjabi",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "su": "Sundanese",
    "sv": "Swedish",
    "sw": "Swahili",
    "ta": "Tamil",
    "te": "Telugu",
    "th": "Thai",
    "tl": "Tagalog",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "vi": "Vietnamese",
    "yo": "Yoruba",
    "zh": "Chinese",
}


def language_name(code: str | None) -> str:
    """'Japanese' for 'ja'; English for a missing code (records written before languages existed)."""
    if not code:
        return "English"
    return LANGUAGE_NAMES.get(code, code)


# Tables counted per interaction language by `language_breakdown`, in pipeline order
BREAKDOWN_TABLES = ("seeds", "personas", "scenes", "queries", "dataset", "rejections")


def _parts(root: Path, table: str) -> list[Path]:
    return sorted((root / table).glob("part-*.parquet"))


def language_breakdown(root: Path) -> pl.DataFrame:
    """Rows of each table per interaction language (the persona's, ISO 639-1), most rows first.

    Written for `personaloom show` and the notebook: a row belongs to its persona's language; a rejection
    without a persona (none so far) is not counted. Versions built before languages existed count as en.
    """
    seeds = _parts(root, "seeds")
    if not seeds:
        return pl.DataFrame(schema={"language": pl.String, "name": pl.String})
    lf = pl.scan_parquet(seeds)
    has = "interaction_language" in lf.collect_schema().names()
    languages = lf.select(
        "persona_id",
        (pl.col("interaction_language").fill_null("en") if has else pl.lit("en")).alias("language"),
    )
    out = languages.group_by("language").agg(pl.len().alias("seeds"))
    for table in BREAKDOWN_TABLES[1:]:
        parts = _parts(root, table)
        if not parts:
            continue
        name = "rejected" if table == "rejections" else table
        counts = (
            pl.scan_parquet(parts)
            .select("persona_id")
            .join(languages, on="persona_id", how="inner")
            .group_by("language")
            .agg(pl.len().alias(name))
        )
        out = out.join(counts, on="language", how="left")
    frame = out.collect().fill_null(0)
    names = frame["language"].map_elements(language_name, return_dtype=pl.String).alias("name")
    return (
        frame.with_columns(names)
        .select("language", "name", pl.exclude("language", "name"))
        .sort("seeds", "language", descending=[True, False])
    )


def dataset_languages(root: Path) -> dict[str, int]:
    """Dataset rows per language that language ID (fastText lid.176) finds in their personalized query."""
    parts = _parts(root, "dataset")
    if not parts:
        return {}
    from personaloom.stages.filter.langid import top_languages

    texts = pl.scan_parquet(parts).select("personalized_query").collect().to_series()
    found = Counter(top[0][0] if top else "und" for top in top_languages(texts))
    return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
