"""Stage 5, all of it: the stage (stage.py), its LLM judges (judges.py), the text filter engine (rules,
exact dedup, near-dup by MinHash-LSH + rapidfuzz, language ID), grounding, the sharded filter at scale,
the checks asked as answers arrive (checks.py) and `personaloom filter` over any Parquet (file.py)."""

from personaloom.stages.filter.engine import FilterOutcome, filter_texts
from personaloom.stages.filter.neardup import NearDupResult, find_near_duplicates

NAME = "filter"  # the pipeline stage its rejections and usage count under

__all__ = ["NAME", "FilterOutcome", "NearDupResult", "filter_texts", "find_near_duplicates"]
