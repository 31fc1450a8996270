"""The real Prefect flow end to end against the fake server: layout, reconciliation, cache, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from personaloom.dataset.store import DatasetStore, sha256_file
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.stages.filter.judges import ANSWERABILITY
from personaloom.testing.cli import TEST_KEY
from personaloom.testing.fake_openai import FakeOpenAI, call_of
from personaloom.testing.judge_model import calibrated

pytestmark = pytest.mark.usefixtures("prefect_harness")


def config(fake: FakeOpenAI, **kw) -> BuildConfig:
    llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
    return BuildConfig(
        **{"dataset": "demo", "personas": 6, "scenes_per_persona": 4, "shard_size": 4, "llm": llm, **kw}
    )


def build(cfg: BuildConfig, out: Path) -> str:
    return asyncio.run(build_dataset(cfg, out=str(out)))


@pytest.fixture
def keyed_fake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    with FakeOpenAI(api_key=TEST_KEY) as fake:
        yield fake


def test_full_build_layout_and_readers(
    keyed_fake: FakeOpenAI, out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    version = build(config(keyed_fake), out)
    assert version == "v0001"
    root = out / "demo" / "v0001"
    assert (out / "demo" / "latest").resolve() == root.resolve()
    for table in ("seeds", "personas", "scenes", "queries", "rejections", "dataset"):
        assert list((root / table).glob("part-*.parquet")), table
    m = json.loads((root / "manifest.json").read_text())
    assert m["version"] == "v0001" and m["parent"] is None and m["model"] == "fake-model"
    assert set(m["prompt_hashes"]) >= {
        "personas/synthesize",
        "scenes/enrich",
        "queries/simulate",
        "filter/answerability",
    }
    assert m["calls"]["queries/simulate"]["check"] == "query_grounded"  # answers stage 5 would drop: redrawn
    assert m["calls"]["filter/answerability"]["check"] is None
    assert {"redraws", "flagged"} <= set(m["usage"]["queries"])

    # the same rows through three readers
    n = m["counts"]["filter"]["rows_out"]
    assert n > 0
    assert pl.scan_parquet(root / "dataset" / "*.parquet").select(pl.len()).collect().item() == n
    assert pq.read_table(root / "dataset").num_rows == n
    assert duckdb.sql(f"select count(*) from read_parquet('{root}/dataset/*.parquet')").fetchall()[0][0] == n

    # every shard is checksummed
    for shard in m["shards"]:
        assert sha256_file(root / shard["path"]) == shard["sha256"]
        assert pq.ParquetFile(root / shard["path"]).metadata.num_rows == shard["rows"]
        meta = pq.ParquetFile(root / shard["path"]).metadata
        if shard["rows"]:  # an empty shard holds the schema and no row group
            assert meta.row_group(0).column(0).compression == "ZSTD"
        else:
            assert meta.num_row_groups == 0

    # nothing silently dropped: each stage's rows in = rows out + rejected
    c = m["counts"]
    assert c["seed"]["rows_out"] == c["personas"]["rows_out"] == 6
    assert c["scenes"]["rows_out"] == 24
    assert c["queries"]["rows_in"] == c["queries"]["rows_out"] + c["queries"]["rejected"]
    assert c["filter"]["rows_in"] == c["filter"]["rows_out"] + c["filter"]["rejected"]
    assert c["probes"]["rows_in"] == c["probes"]["rows_out"] + c["probes"]["rejected"]
    rejected = pl.read_parquet(root / "rejections" / "*.parquet")
    assert (
        len(rejected)
        == sum(stage["rejected"] for stage in c.values())
        == sum(m["rejection_reasons"].values())
    )
    by_stage = rejected.group_by("stage").len()
    assert dict(by_stage.iter_rows()) == {s: v["rejected"] for s, v in c.items() if v["rejected"]}
    assert m["usage"]["personas"]["calls"] >= 6 and m["usage"]["queries"]["prompt_tokens"] > 0

    ds = pl.read_parquet(root / "dataset" / "*.parquet")
    kept = set(ds["query_id"]) | set(rejected.filter(pl.col("stage") == "filter")["row_id"])
    assert kept == set(pl.read_parquet(root / "queries" / "*.parquet")["query_id"])
    assert ds["persona"].struct.field("Demographics").struct.field("Name").null_count() == 0

    # the key never lands anywhere
    for path in root.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    assert TEST_KEY not in caplog.text
    assert "Bearer" not in json.dumps(m)


def test_rerun_is_up_to_date_and_forced_makes_no_llm_call(out: Path, tmp_path: Path) -> None:
    with FakeOpenAI(latency=0.02) as fake:
        cfg = config(fake)
        build(cfg, out)
        first = fake.stats.by_path["/v1/chat/completions"]
        assert build(cfg, out) == "v0001"  # the same identity as the latest version: nothing published
        v2 = asyncio.run(build_dataset(cfg, out=str(out), force=True))
        assert fake.stats.by_path["/v1/chat/completions"] == first > 0
    store = DatasetStore(out, "demo")
    assert v2 == "v0002" and store.versions() == ["v0001", "v0002"]
    m2 = store.manifest("v0002")
    assert m2.parent == "v0001"
    assert sum(u.calls for u in m2.usage.values()) == 0 and m2.usage["scenes"].cache_hits > 0
    a = pl.read_parquet(out / "demo" / "v0001" / "dataset" / "*.parquet")
    b = pl.read_parquet(out / "demo" / "v0002" / "dataset" / "*.parquet")
    assert a.equals(b)
    assert not list((out / "demo" / ".staging").iterdir())  # staging folders were renamed into place


def test_empty_tables_are_written_with_their_schema(out: Path) -> None:
    no = '{"answerable": false, "reason": "no"}'
    says_no = calibrated(lambda body: no if call_of(body) == ANSWERABILITY.name else None)
    with FakeOpenAI(responder=says_no) as fake:  # right on the calibration items, "no" on every row
        build(config(fake, personas=2, expand_hints=False), out)
    root = out / "demo" / "v0001"
    ds = pq.read_table(root / "dataset")
    assert ds.num_rows == 0 and "persona" in ds.schema.names
    m = json.loads((root / "manifest.json").read_text())
    assert m["rejection_reasons"]["unanswerable"] == m["counts"]["filter"]["rows_in"] == 8


def test_resume_skips_finished_shards(out: Path) -> None:
    """A build that dies mid-way re-runs into the same staging folder and redoes only what is missing."""
    from personaloom.llm.local import free_port

    port = free_port()
    calls = {"n": 0}
    fake: FakeOpenAI

    def die_after_30(body: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 30:
            fake.known_models = {"another-model"}  # from now on: 404, a fatal error that stops the flow
        return None

    with FakeOpenAI(port=port, responder=die_after_30) as fake:
        cfg = config(fake, expand_hints=False, answerability=False, shard_size=2)
        cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"concurrency": 1})})
        with pytest.raises(Exception, match="not found"):
            build(cfg, out)
        made = fake.stats.chat_ok
    staging = next((out / "demo" / ".staging").iterdir())
    finished = sorted(str(p.relative_to(staging)) for p in staging.rglob("part-*.parquet"))
    assert "personas/part-00000.parquet" in finished and not (out / "demo" / "v0001").exists()
    with FakeOpenAI(port=port) as fake:
        assert build(cfg, out) == "v0001"
        resumed = fake.stats.chat_ok
    with FakeOpenAI(port=port) as fake:
        assert build(cfg, out / "fresh") == "v0001"  # another output root: another, empty, cache
        fresh = fake.stats.chat_ok
    assert 0 < resumed < fresh and made + resumed == fresh  # nothing that had finished was asked again
    a = pl.read_parquet(out / "demo" / "v0001" / "dataset" / "*.parquet")
    assert a.equals(pl.read_parquet(out / "fresh" / "demo" / "v0001" / "dataset" / "*.parquet"))


def test_a_run_freezes_what_it_starts_with_and_unfreezes_at_the_end(fake: FakeOpenAI, tmp_path: Path) -> None:
    """The collector's full passes skip the run's start-up objects while it runs (they stopped the event
    loop for ~0.3 s every ~12 s of a large build) and its young passes are rarer; both undone after."""
    import gc

    from personaloom.pipeline import build_calls
    from personaloom.runtime import collector
    from personaloom.runtime.run import open_run

    cfg = BuildConfig(dataset="gc", personas=1, llm=LLMConfig(model="fake", base_url=fake.base_url))
    before, thresholds = gc.get_freeze_count(), gc.get_threshold()

    async def go() -> tuple[int, tuple[int, int, int]]:
        async with open_run(cfg, calls=build_calls(), cache=tmp_path / "cache") as run:
            assert run.llm is not None
            return gc.get_freeze_count(), gc.get_threshold()

    during, young = asyncio.run(go())
    assert during > before + 10_000 and gc.get_freeze_count() == 0
    assert young == collector.THRESHOLDS and gc.get_threshold() == thresholds
