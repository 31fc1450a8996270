"""Near-duplicates of short texts with a few characters edited, in every script (issue 30), and rows of one
template that share most of their words but are not duplicates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from personaloom.schemas.filtering import FilterConfig, NearDupConfig
from personaloom.stages.filter import filter_texts, find_near_duplicates
from personaloom.stages.filter.neardup import EditRule, edit_edges
from personaloom.stages.filter.normalize import normalize
from personaloom.stages.filter.sharded import ShardedFilter, Spill

ROOT = Path(__file__).resolve().parent.parent


def _bench():  # bench/ is not a package: load the benchmark module by path
    spec = importlib.util.spec_from_file_location(
        "short_edits_bench", ROOT / "bench" / "short_edits_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def planted() -> tuple[pl.DataFrame, dict[str, dict[str, float]]]:
    """The benchmark's rows, smaller: 200 per script and length (8, 12, 20 words), 10% planted copies with
    0-3 edited characters, 8 scripts."""
    return _bench().generate(4800, seed=1)


def by_script(df: pl.DataFrame, config: FilterConfig | None = None) -> dict[str, dict[str, int]]:
    outcome = filter_texts(df, "text", config or FilterConfig(), id_column="row_id")
    scores = _bench().evaluate(df, outcome.rejected)["by_script"]
    return {r["lang"]: r for r in scores.iter_rows(named=True)}


def test_short_copies_with_edited_characters_are_found_in_every_script(planted) -> None:
    df, alike = planted
    found = by_script(df)
    assert set(found) == {"zh", "ja", "th", "ar", "ru", "hi", "en", "es"}
    for code, r in found.items():
        assert r["planted"] == 60, (code, r)
        assert r["found"] >= r["planted"] - r["beyond"], (code, r)  # every copy the threshold allows
        assert r["found"] >= 0.95 * r["planted"], (code, r)
        assert r["lost_unique"] == r["lost_planted"] == r["rule_drops"] == 0, (code, r)
    # a real test of precision: in every script with spaces, rows of one template are often more than 86%
    # alike in characters (fewer words would differ than a word score lets through)
    for code in ("ar", "ru", "hi", "en", "es"):
        assert sum(alike[f"{code}/{n}"]["char_ratio_ge_threshold"] for n in (8, 12, 20)) >= 20, code


def test_without_the_character_rule_most_edited_copies_are_lost(planted) -> None:
    """A word score counts one edited character as one changed word: 2 of 8 words changed score 75."""
    df, _ = planted
    found = by_script(df, FilterConfig(near_dup={"char_edits": 0}))
    for code in ("ar", "ru", "hi", "en", "es"):
        assert found[code]["found"] <= 0.7 * found[code]["planted"], (code, found[code])


def test_the_character_index_finds_a_copy_whose_word_shingles_are_all_template_text() -> None:
    """At scale a template's words are in more rows than max_df (here 5, for 8 rows of a template): all the
    word shingles a row shares with its copy are pruned when both slot words have an edited character."""
    names = "Christopher Elizabeth Jennifer Margaret Kimberly Patricia Jonathan Samantha".split()
    cities = "Melbourne Stockholm Vancouver Singapore Barcelona Amsterdam Edinburgh Marseille".split()
    rows = [
        f"{n} would like a quiet table for two in {c} tonight?" for n, c in zip(names, cities, strict=True)
    ]
    rows.append("Christophar would like a quiet table for two in Melbuorne tonight?")
    assert find_near_duplicates(rows, NearDupConfig(max_df=5)).dup_of.tolist() == [-1] * 8 + [0]
    words_only = find_near_duplicates(rows, NearDupConfig(max_df=5, char_index_words=0))
    assert words_only.dup_of.tolist() == [-1] * 9 and words_only.stats["candidate_pairs"] == 0


def test_sharded_filter_finds_the_same_pairs(planted, tmp_path: Path) -> None:
    df, _ = planted
    memory = filter_texts(df, "text", FilterConfig(), id_column="row_id").rejected
    rejected: list[pl.DataFrame] = []

    def read(start: int, stop: int, columns: list[str] | None) -> pl.DataFrame:
        return (df if columns is None else df.select(columns)).slice(start, stop - start)

    run = ShardedFilter(read, df.height, "text", FilterConfig(), 3, Spill(tmp_path), id_column="row_id")
    run.run(lambda kept, rej: rejected.append(rej))
    key = ["row_id", "drop_reason", "dup_of"]
    assert pl.concat(rejected).select(key).sort("row_id").equals(memory.select(key).sort("row_id"))
    assert run.stats["edit_pairs"] > 0


# Rows of one template: the second and third share 6 of 8 words with the first and are more than 86% alike
# to it in characters, but two of their words are other words: other requests, to keep. The fourth is
# the first with three typos, one of them joining two words: a duplicate.
SIBLINGS = [
    "Хочу купить тихий чайник в Казани за 1500 рублей?",
    "Хочу купить тихий чайник в Самаре за 1900 рублей?",
    "Хочу купить лёгкий чайник в Казани за 1800 рублей?",
    "Хочу купитьтихий чайнек в Казани за 150 рублей?",
]


def test_rows_of_a_template_that_differ_in_a_few_words_are_kept() -> None:
    norm = normalize(pl.Series(SIBLINGS)).to_list()
    for other in norm[1:3]:  # what makes this a test: characters alone would join them
        assert fuzz.ratio(norm[0], other) >= 86 and Levenshtein.distance(norm[0], other) > 3
    assert fuzz.ratio(norm[0], norm[3]) >= 86 and Levenshtein.distance(norm[0], norm[3]) == 3
    result = find_near_duplicates(SIBLINGS, NearDupConfig(min_df=1))
    assert result.dup_of.tolist() == [-1, -1, -1, 0]
    assert 86 <= result.dup_score[3] < 100


def test_three_joined_words_are_still_three_characters() -> None:
    """Three deleted spaces turn 8 words into 5 (9 word insertions and deletions): still a duplicate."""
    texts = ["Mary local Miami me small printer tips trip?", "Marylocal Miamime small printertips trip?"]
    result = find_near_duplicates(texts, NearDupConfig(min_df=1))
    assert result.dup_of.tolist() == [-1, 0]
    rule = EditRule(np.array([True, True]), np.array([8, 5]), np.array([42, 39]), limit=3)
    score = np.array([2 * 2 / 13 * 100])  # words in common: "small", "trip"
    assert rule.worth_a_look(np.array([[0, 1]]), score).tolist() == [True]
    assert rule.worth_a_look(np.array([[0, 1]]), score - 10).tolist() == [False]  # more words apart


def test_the_character_rule_needs_both_few_edits_and_the_threshold() -> None:
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    left = ["abcdefghij klmnop", "abcdefghij klmnop", "abcd"]
    right = ["abcdefgxij klmnpp", "abcdxfgxij klxnpp", "abxd"]  # 2 apart, 4 apart, 1 apart but 75% alike
    edges, scores = edit_edges(left, right, pairs, 86.0, 3)
    assert edges.tolist() == [[0, 1]] and scores[0] >= 86


def test_a_short_chinese_text_with_three_edited_characters() -> None:
    """20 characters, 3 of them edited: 4-character shingles would leave it too few to be found."""
    base = "今天郑爽可以去深圳看看医院便宜的电饭煲吗"
    copy = "今天郑唐爽可深圳看看医以院便宜的电饭煲吗"
    others = [
        f"今天{name}可以去{city}看看医院便宜的电饭煲吗" for name, city in [("王磊", "北京"), ("李娜", "上海")]
    ]
    result = find_near_duplicates([base, *others, copy], NearDupConfig(min_df=1))
    assert result.dup_of.tolist() == [-1, -1, -1, 0]


def test_long_texts_without_spaces_stay_in_the_word_index_and_pair_across_the_limit() -> None:
    """Over char_index_chars a text is only in the word index (its common character shingles would pair it
    with thousands in the character index); a copy just over the limit of a row just under it is paired."""
    words = _bench().SCRIPTS["zh"].words
    base = "".join(words)[:149]
    copy = base[:40] + "唐" + base[40:90] + "鑫" + base[90:] + "娜"  # 3 characters inserted: 152
    other = "".join(reversed(words))[:149]
    result = find_near_duplicates([base, other, copy], NearDupConfig(min_df=1))
    assert result.dup_of.tolist() == [-1, -1, 0]
    assert result.stats["char_rows"] == 3 and result.stats["char_index_rows"] == 2
