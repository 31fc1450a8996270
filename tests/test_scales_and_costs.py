"""Issue 31 item 8 and issue 28 item 7: plots keep ordinal scales in order; cost per kept session and item."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest
from matplotlib.figure import Figure

from personaloom.dataset.explore import _bar_counts, bar_counts, scale_orders
from personaloom.dataset.store import DatasetStore
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.testing.cli import run
from personaloom.testing.fake_openai import FakeOpenAI


def test_ordinal_scales_are_plotted_in_scale_order_not_by_count() -> None:
    orders = scale_orders()
    assert orders["formality"] == ["very casual", "casual", "neutral", "formal", "very formal"]
    assert set(orders) == {"formality", "verbosity", "proactivity"}
    # the most frequent value is the highest level: by count it would come first
    values = pl.Series("formality", ["very formal"] * 5 + ["casual"] + ["neutral"] * 3 + ["off-scale"] * 2)
    labels, sizes = bar_counts(values, orders["formality"])
    assert labels == ["casual", "neutral", "very formal", "off-scale"]
    assert sizes == [1, 3, 5, 2]
    assert bar_counts(values)[0] == ["very formal", "neutral", "off-scale", "casual"]  # nominal: by count
    ax = Figure().subplots()
    _bar_counts(ax, values, "formality", orders["formality"])
    bars = sorted(ax.patches, key=lambda b: -b.get_y())  # top bar first
    ticks = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    assert [ticks[round(b.get_y() + b.get_height() / 2)] for b in bars] == labels


@pytest.mark.usefixtures("prefect_harness")
def test_a_build_of_a_grown_version_s_personas_is_up_to_date(out: Path) -> None:
    """Issue 31 item 8: after `--grow`, `build --personas N` with N the grown total publishes nothing."""
    store = DatasetStore(out, "grown")
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(dataset="grown", personas=3, scenes_per_persona=2, shard_size=2, llm=llm)
        assert asyncio.run(build_dataset(cfg, out=str(out))) == "v0001"
        assert asyncio.run(build_dataset(cfg, out=str(out), grow=2)) == "v0002"
        calls = fake.stats.by_path.get("/v1/chat/completions", 0)
        again = cfg.model_copy(update={"personas": 5})
        assert asyncio.run(build_dataset(again, out=str(out))) == "v0002"  # up to date, not a copy
        assert store.versions() == ["v0001", "v0002"]
        assert fake.stats.by_path.get("/v1/chat/completions", 0) == calls
        m = store.manifest("v0002")
        assert m.mode == "grow" and m.content_identity and m.content_identity != m.identity
        # a build that differs is still built: other personas
        assert asyncio.run(build_dataset(cfg.model_copy(update={"personas": 6}), out=str(out))) == "v0003"
        assert store.manifest("v0003").content_identity == store.manifest("v0003").identity


@pytest.mark.usefixtures("prefect_harness")
def test_calls_and_tokens_per_kept_session_and_item_in_manifest_and_show(out: Path) -> None:
    """Issue 28 item 7: the manifest's totals divided by the kept counts, in the manifest and `show`."""
    store = DatasetStore(out, "costs")
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(dataset="costs", personas=3, scenes_per_persona=3, shard_size=2, llm=llm)
        assert asyncio.run(build_dataset(cfg, out=str(out))) == "v0001"
        assert asyncio.run(build_dataset(cfg, out=str(out), grow=2)) == "v0002"
    m = store.manifest("v0001")
    sessions, items = m.counts["filter"].rows_out, m.counts["probes"].rows_out
    assert sessions > 0 and items > 0
    making = [s for s in m.usage if s != "probes"]
    calls = sum(m.usage[s].calls for s in making)
    tokens = sum(m.usage[s].prompt_tokens + m.usage[s].completion_tokens for s in making)
    probes = m.usage["probes"]
    assert calls > 0 and probes.calls > 0
    s, i, w = m.per_kept["session"], m.per_kept["item"], m.per_kept["item_whole_build"]
    assert (s.kept, i.kept, w.kept) == (sessions, items, items) and s.stages == making
    assert s.calls == pytest.approx(calls / sessions) and s.tokens == pytest.approx(tokens / sessions)
    assert i.calls == pytest.approx(probes.calls / items)
    assert i.tokens == pytest.approx((probes.prompt_tokens + probes.completion_tokens) / items)
    every = sum(u.calls for u in m.usage.values())
    assert w.calls == pytest.approx(every / items)
    assert w.cost_usd == pytest.approx(sum(u.cost_usd for u in m.usage.values()) / items, abs=1e-6)

    # a grown version divides its own build's usage by the rows of its new personas, not by every row
    g = store.manifest("v0002")
    dataset = pl.read_parquet(sorted((store.resolve("v0002") / "dataset").glob("part-*.parquet")))
    new_rows = dataset.filter(pl.col("persona_id") >= "p000003").height
    assert g.per_kept["session"].kept == new_rows < g.counts["filter"].rows_out
    grown_calls = sum(g.usage[s].calls for s in g.usage if s != "probes")
    assert g.per_kept["session"].calls == pytest.approx(grown_calls / new_rows)

    res = run("show", "costs@v1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"per kept session ({sessions}): {calls / sessions:.2f} calls, {tokens / sessions:.0f} tokens" in (
        res.stdout
    )
    assert f"per kept item ({items}): {probes.calls / items:.2f} calls" in res.stdout
    assert f"{every / items:.2f} calls" in res.stdout
