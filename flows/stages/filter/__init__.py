"""Stage 5 text filter engine: rules, exact dedup, near-dup (MinHash-LSH + rapidfuzz), language ID."""

from personaloom.stages.filter.engine import FilterOutcome, filter_texts
from personaloom.stages.filter.neardup import NearDupResult, find_near_duplicates

__all__ = ["FilterOutcome", "NearDupResult", "filter_texts", "find_near_duplicates"]
