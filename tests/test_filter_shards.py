"""`personaloom filter --shards`: duplicates across shards are found, and the answer is the in-memory one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.filter import filter_texts
from personaloom.stages.filter.neardup import band_pairs, merge_counts, shingle_counts, unpack_pairs
from personaloom.stages.filter.sharded import ShardedFilter, Spill
from personaloom.testing.cli import assert_one_line_error, run

ROOT = Path(__file__).resolve().parent.parent


def _bench():  # bench/ is not a package: load the benchmark module by path
    spec = importlib.util.spec_from_file_location("filter_bench", ROOT / "bench" / "filter_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def planted() -> pl.DataFrame:
    """Templated rows with planted near and exact copies (bench/filter_bench.py), every copy after all
    unique rows: with 4 shards the copies sit in the last shard, most of their originals in earlier ones."""
    df = _bench().generate(6000, seed=11)
    return pl.concat([df.filter(pl.col("kind") == "base"), df.filter(pl.col("kind") != "base")])


def sharded(
    df: pl.DataFrame, tmp_path: Path, shards: int, config: FilterConfig | None = None, **kwargs: object
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the sharded filter on an in-memory frame; returns (kept, rejected) as written."""
    kept: list[pl.DataFrame] = []
    rejected: list[pl.DataFrame] = []

    def read(start: int, stop: int, columns: list[str] | None) -> pl.DataFrame:
        return (df if columns is None else df.select(columns)).slice(start, stop - start)

    run_ = ShardedFilter(
        read=read,
        n_rows=df.height,
        column="text",
        config=config or FilterConfig(),
        shards=shards,
        spill=Spill(tmp_path),
        **kwargs,  # type: ignore[arg-type]
    )
    run_.run(lambda k, r: (kept.append(k), rejected.append(r)))  # type: ignore[func-returns-value]
    return pl.concat(kept), pl.concat(rejected)


def test_duplicates_across_shards_are_found_and_the_original_kept(
    planted: pl.DataFrame, tmp_path: Path
) -> None:
    planted.write_parquet(tmp_path / "in.parquet")
    args = ["filter", str(tmp_path / "in.parquet"), "--id-column", "row_id"]
    res = run(*args, "--shards", "4", "--out", str(tmp_path / "sharded"))
    assert res.returncode == 0, res.stderr
    kept = pl.read_parquet(tmp_path / "sharded" / "kept.parquet")
    rejected = pl.read_parquet(tmp_path / "sharded" / "rejections.parquet")

    rows = planted.with_row_index("at").with_columns((pl.col("at") * 4 // planted.height).alias("shard"))
    base = rows.filter(pl.col("kind") == "base")
    copies = rows.filter(pl.col("kind") != "base").join(
        base.select("group", pl.col("row_id").alias("original"), pl.col("shard").alias("original_shard")),
        on="group",
    )
    cross = copies.filter(pl.col("shard") != pl.col("original_shard"))
    assert cross.height >= 0.7 * copies.height  # most planted pairs are split across shards
    # no unique row dropped: every original is kept
    assert set(base["row_id"]) <= set(kept["row_id"])
    assert rejected["row_id"].is_in(base["row_id"].implode()).sum() == 0
    # recall across shards, each copy pointing at its own original (the earliest row of its group)
    found = rejected.join(copies.select("row_id", "original", "shard", "original_shard"), on="row_id")
    assert found.height == rejected.height
    assert (found["dup_of"] == found["original"]).all()
    found_cross = found.filter(pl.col("shard") != pl.col("original_shard"))
    assert found_cross.height >= 0.98 * cross.height
    near = cross.filter(~pl.col("kind").is_in(["exact", "case", "whitespace", "punct"]))
    assert found_cross.filter(pl.col("drop_reason") == "near_duplicate").height >= 0.97 * near.height > 100
    assert set(found_cross["drop_reason"]) == {"exact_duplicate", "near_duplicate"}

    # the same rows without --shards: the same files
    res = run(*args, "--out", str(tmp_path / "memory"))
    assert res.returncode == 0, res.stderr
    assert kept.equals(pl.read_parquet(tmp_path / "memory" / "kept.parquet"))
    assert rejected.equals(pl.read_parquet(tmp_path / "memory" / "rejections.parquet"))
    assert not any(p.name.startswith(".spill") for p in (tmp_path / "sharded").iterdir())


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_sharded_equals_in_memory_on_shuffled_rows(
    planted: pl.DataFrame, tmp_path: Path, shards: int
) -> None:
    df = planted.sample(fraction=1.0, shuffle=True, seed=shards)
    memory = filter_texts(df, "text", FilterConfig(), id_column="row_id")
    kept, rejected = sharded(df, tmp_path, shards, id_column="row_id")
    assert kept.equals(memory.kept)
    assert rejected.equals(memory.rejected)


def test_many_small_ranges_change_nothing(
    planted: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shingle counts, band entries and candidate pairs merged in many small ranges, as at 10M+ rows."""
    for name, size in (("DF_BUCKET", 5000), ("BAND_BUCKET", 2000), ("PAIR_RANGE", 5000)):
        monkeypatch.setattr(f"personaloom.stages.filter.sharded.{name}", size)
    memory = filter_texts(planted, "text", FilterConfig(), id_column="row_id")
    kept, rejected = sharded(planted, tmp_path, 3, id_column="row_id")
    assert kept.equals(memory.kept) and rejected.equals(memory.rejected)


def _slot_rows() -> list[str]:
    """A near-duplicate pair (rows 0 and 1) whose every shared shingle also occurs in three other rows
    (5 of 12 rows in all), as a slot value recurs in other templates when a dataset grows."""
    a = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
    tails = ("maple cedar birch willow aspen", "river brook creek delta canal", "north south east west up")
    heads = ("copper tin zinc", "lemon lime mango", "violet indigo amber")
    other = ("saturn jupiter mars venus", "piano cello flute harp", "oak pine fir yew", "tea milk bread jam")
    return [
        a,
        a.replace("juliet", "kilo"),
        *(" ".join(a.split()[:5]) + " " + t for t in tails),  # the first five words
        *(h + " " + " ".join(a.split()[4:]) for h in heads),  # the last six words
        *(o + " quite unrelated words here" for o in other),
    ]


@pytest.mark.parametrize("shards", [None, 3])
def test_document_frequency_limit_grows_with_the_rows(tmp_path: Path, shards: int | None) -> None:
    """With an absolute limit of 4 every shingle the pair shares is pruned and the copy is missed; with the
    limit a share of the rows (half of 12 = 6) it is found. Sharded, the share is of all shards' rows."""
    df = pl.DataFrame({"text": _slot_rows()}).with_row_index("row_id").cast({"row_id": pl.String})
    found = {}
    for share in (0.0, 0.5):
        config = FilterConfig(near_dup={"max_df": 4, "max_df_share": share})
        memory = filter_texts(df, "text", config, id_column="row_id")
        assert memory.stats["near_max_df"] == (4 if share == 0 else 6)
        if shards:
            (spill := tmp_path / str(share)).mkdir()
            kept, rejected = sharded(df, spill, shards, config, id_column="row_id")
            assert kept.equals(memory.kept) and rejected.equals(memory.rejected)
        found[share] = memory.rejected.select("row_id", "dup_of", "drop_reason").rows()
    assert found[0.0] == []
    assert found[0.5] == [("1", "0", "near_duplicate")]


def test_sharded_row_numbers_and_intended_language(tmp_path: Path) -> None:
    texts = [
        "Please book me a table for two at an Italian restaurant tonight near the station.",
        "Bitte reserviere mir heute Abend einen Tisch für zwei Personen im Zentrum der Stadt.",
        "Please book me a table for two at an Italian restaurant tonight near the old station.",
        "Which train goes from the airport to the city centre after midnight on a Sunday?",
        "Please book me a table for two at an Italian restaurant tonight near the station.",
    ]
    df = pl.DataFrame({"text": texts, "language": ["en", "en", "en", "en", "en"]})
    memory = filter_texts(df, "text", FilterConfig(), lang_column="language")
    kept, rejected = sharded(df, tmp_path, 5, lang_column="language")
    assert kept.equals(memory.kept) and rejected.equals(memory.rejected)
    reasons = dict(zip(rejected["text"], rejected["drop_reason"], strict=True))
    assert reasons[texts[1]] == "wrong_language"
    assert rejected.filter(pl.col("dup_of").is_not_null())["dup_of"].to_list() == ["0", "0"]


def test_folder_of_parts_is_one_table(planted: pl.DataFrame, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    head = planted.head(2000)
    for i in range(3):
        head.slice(i * 700, 700).write_parquet(folder / f"part-{i:05d}.parquet")
    res = run("filter", str(folder), "--shards", "2", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    memory = filter_texts(head, "text", FilterConfig())
    assert pl.read_parquet(tmp_path / "out" / "rejections.parquet").equals(memory.rejected)


def test_bad_shards_and_parts_are_one_line_errors(planted: pl.DataFrame, tmp_path: Path) -> None:
    planted.head(10).write_parquet(tmp_path / "in.parquet")
    assert_one_line_error(run("filter", str(tmp_path / "in.parquet"), "--shards", "0"), "--shards 0")
    folder = tmp_path / "parts"
    folder.mkdir()
    planted.head(5).write_parquet(folder / "a.parquet")
    planted.head(5).drop("kind").write_parquet(folder / "b.parquet")
    assert_one_line_error(run("filter", str(folder)), "b.parquet", "one schema")


def test_document_frequency_and_buckets_merge_like_one_part() -> None:
    rng = np.random.default_rng(0)
    sh = rng.integers(0, 50, 1000).astype(np.uint64)
    whole = shingle_counts(sh)
    merged = merge_counts([shingle_counts(sh[:300]), shingle_counts(sh[300:700]), shingle_counts(sh[700:])])
    assert all(np.array_equal(a, b) for a, b in zip(whole, merged, strict=True))
    # a bucket of 3 rows: all pairs; of 5 rows with max 4: a star from the first and a chain
    key = np.uint64(7) << np.uint64(32)
    small = unpack_pairs(band_pairs(np.array([key | np.uint64(r) for r in (2, 5, 9)]), 4))
    assert sorted(map(tuple, small.tolist())) == [(2, 5), (2, 9), (5, 9)]
    big = unpack_pairs(band_pairs(np.array([key | np.uint64(r) for r in range(5)]), 4))
    assert sorted(set(map(tuple, big.tolist()))) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4)]
