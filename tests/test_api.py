"""The Python API: build, open, read, grow, evaluate — the same flow and checks as the CLI."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import personaloom
from personaloom.errors import UserError
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.probe_model import probe_writer

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def fake() -> FakeOpenAI:
    with FakeOpenAI(responder=probe_writer) as server:
        yield server


def test_build_open_read_grow_evaluate(fake: FakeOpenAI, tmp_path: Path) -> None:
    settings = {"model": "fake-model", "base_url": fake.base_url, "locales": ["en_US"]}
    asked = fake.stats.by_path.get("/v1/models", 0)
    v = personaloom.build(dataset="api", personas=6, sessions=6, out=tmp_path, **settings)
    assert fake.stats.by_path["/v1/models"] == asked + 1  # the endpoint's pre-flight: once a build
    assert isinstance(v, personaloom.Version) and v.label == "api@v0001"
    assert v.manifest.config.scenes_per_persona == 6 and v.manifest.config.llm.model == "fake-model"
    frame = v.table("dataset")
    assert isinstance(frame, pl.LazyFrame) and frame.collect().height == v.manifest.rows
    assert set(v.tables()) >= {"seeds", "personas", "dataset", "rejections"}
    for spec in (f"{tmp_path}/api@v1", f"{tmp_path}/api@v0001", f"{tmp_path}/api"):
        assert personaloom.open(spec).path == v.path
    assert personaloom.open(tmp_path, "api", "1").version == "v0001"
    splits = v.to_datasets()
    assert splits["dataset"].num_rows == v.manifest.rows
    with pytest.raises(UserError, match="table 'nope'"):
        v.table("nope")
    # the same call again is up to date: the same version back
    assert personaloom.build(dataset="api", personas=6, sessions=6, out=tmp_path, **settings).path == v.path
    grown = personaloom.build(dataset="api", out=tmp_path, grow=2, **settings)
    assert grown.version == "v0002" and grown.manifest.config.personas == 8 and grown.manifest.mode == "grow"
    if grown.manifest.counts["probes"].rows_out:
        asked = fake.stats.by_path["/v1/models"]
        run = personaloom.evaluate(grown, model="fake-model", base_url=fake.base_url, run="api-eval")
        assert fake.stats.by_path["/v1/models"] == asked + 1  # and once an evaluation
        assert (run / "summary.md").exists() and grown.runs("eval") == [run]


def test_bad_settings_fail_in_one_line_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="personas"):
        personaloom.build(dataset="api", personas=0, out=tmp_path)
    with pytest.raises(UserError, match="dataset name"):
        personaloom.open(tmp_path / "..")
    assert not list(tmp_path.iterdir())
