"""Versions that mean something: no-op when nothing changed, growth, shared files, rebuild, diff, gc."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from personaloom.dataset.diff import diff_versions
from personaloom.dataset.store import DatasetStore
from personaloom.dataset.verify import verify_version
from personaloom.errors import UserError
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, DedupLevels, LLMConfig
from personaloom.schemas.filtering import FilterConfig
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.filter.stage import Kept, dedup_all
from personaloom.stages.samples import sample_records
from personaloom.testing.cli import assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")

# columns of the seeds table the sampler writes (the LLM writes only `expanded_hint`)
SAMPLED = ["persona_id", "index", "seed", "locale", "name", "gender", "age", "occupation", "employment"]


def config(fake: FakeOpenAI, **kw) -> BuildConfig:
    llm = LLMConfig(model=kw.pop("model", "fake-model"), base_url=fake.base_url, concurrency=16)
    return BuildConfig(
        **{"dataset": "grow", "personas": 4, "scenes_per_persona": 3, "shard_size": 2, "llm": llm, **kw}
    )


def build(cfg: BuildConfig, out: Path, **kw) -> str:
    return asyncio.run(build_dataset(cfg, out=str(out), **kw))


def chat_calls(fake: FakeOpenAI) -> int:
    return fake.stats.by_path.get("/v1/chat/completions", 0)


def table(folder: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(sorted((folder / name).glob("part-*.parquet")))


def test_build_again_then_grow_then_diff_then_remove_the_parent(out: Path) -> None:
    """The issue's done-when: 4 personas, the identical build (no version), --grow 3, diff, gc."""
    store = DatasetStore(out, "grow")
    with FakeOpenAI() as fake:
        cfg = config(fake)
        assert build(cfg, out) == "v0001"
        calls = chat_calls(fake)
        assert build(cfg, out) == "v0001"  # identical: up to date, nothing published, no LLM call
        assert store.versions() == ["v0001"] and chat_calls(fake) == calls
        assert build(cfg.model_copy(update={"personas": 999}), out, grow=3) == "v0002"
        grew = chat_calls(fake) - calls
        assert build(config(fake, personas=7), out / "fresh") == "v0001"  # the same 7 from scratch
    v1, v2 = store.resolve("v0001"), store.resolve("v0002")
    m1, m2 = store.manifest("v0001"), store.manifest("v0002")

    # the manifest: parent, the persona range added, which shards are new, the identity
    assert m1.mode == "build" and m1.built is not None and (m1.built.first, m1.built.end) == (0, 4)
    assert m2.mode == "grow" and m2.parent == "v0001" and m2.config.personas == 7
    assert m2.built is not None and (m2.built.first, m2.built.end) == (4, 7)
    assert m1.identity and m2.identity and m1.identity != m2.identity
    inherited = {s.path for s in m2.shards if s.inherited_from == "v0001"}
    assert inherited == {s.path for s in m1.shards}
    new = sorted(s.path for s in m2.shards if s.inherited_from is None)
    assert "seeds/part-00002.parquet" in new and "seeds/part-00003.parquet" in new
    assert "dataset/part-00002.parquet" in new and not any(p.endswith("-00000.parquet") for p in new)

    # the first 4 personas are the parent's files themselves: same inode, same bytes
    for path in inherited:
        a, b = (v1 / path).stat(), (v2 / path).stat()
        assert a.st_ino == b.st_ino and a.st_nlink >= 2, path
    seeds, personas = table(v2, "seeds"), table(v2, "personas")
    assert sorted(seeds["index"]) == list(range(7)) and personas.height == 7
    assert seeds.filter(pl.col("index") < 4).sort("index").equals(table(v1, "seeds").sort("index"))

    # only the new personas were generated, and they are what a fresh build of 7 makes for them
    assert 0 < grew < calls
    fresh = store_folder(out / "fresh", "grow")
    for name, key in (("seeds", "persona_id"), ("personas", "persona_id"), ("scenes", "scene_id")):
        mine = table(v2, name).filter(pl.col("persona_id") >= "p000004").sort(key)
        theirs = table(fresh, name).filter(pl.col("persona_id") >= "p000004").sort(key)
        assert mine.equals(theirs), name

    # counts reconcile for the whole version
    c = m2.counts
    assert c["seed"].rows_out == c["personas"].rows_out == 7 and c["scenes"].rows_out == 21
    for stage in ("queries", "filter"):
        assert c[stage].rows_in == c[stage].rows_out + c[stage].rejected, stage
    assert c["filter"].rows_out == table(v2, "dataset").height == m2.rows
    assert table(v2, "rejections").height == sum(m2.rejection_reasons.values())
    kept = set(table(v2, "dataset")["query_id"]) | set(
        table(v2, "rejections").filter(pl.col("stage") == "filter")["row_id"]
    )
    assert kept == set(table(v2, "queries")["query_id"])
    assert table(v2, "dataset").filter(pl.col("persona_id") < "p000004").equals(table(v1, "dataset"))
    assert verify_version(v2, m2) == []

    # diff: 3 personas added, nothing removed or changed, the settings change is the persona count
    d = diff_versions(out, "grow", "v1", "v2")
    for name, added in (("seeds", 3), ("personas", 3), ("scenes", 9)):
        t = d.table(name)
        assert t is not None and (t.added, t.removed, t.changed) == (added, 0, 0), t
    assert set(d.config) == {"personas"} and (d.config["personas"].a, d.config["personas"].b) == (4, 7)
    assert d.prompts == {} and d.model.a == d.model.b == "fake-model"
    assert {s.attribute for s in d.shifts} >= {"locale", "age band", "scene kind", "rejection reason"}
    assert all(0 <= s.tvd <= 1 for s in d.shifts)
    res = run("diff", "grow@v1", "grow@v2", "--format", "json", "--out", str(out))
    assert res.returncode == 0, res.stderr
    personas_row = next(t for t in json.loads(res.stdout)["tables"] if t["table"] == "personas")
    assert personas_row["added"] == 3 and personas_row["removed"] == 0
    text = run("diff", "grow@v1", "grow@latest", "--out", str(out))
    assert text.returncode == 0 and "personas: 4 → 7" in text.stdout and "personas" in text.stdout
    # the notebook's view of the same: v2 against its parent
    from personaloom.dataset.explore import compare, compare_figure, open_compare, open_version, shift_table

    view = open_version(out, "grow", "v2")
    parent = open_compare(view)
    assert parent is not None and parent.version == "v0001" and compare(parent, view) == d
    assert set(shift_table(d)["attribute"]) == {s.attribute for s in d.shifts if s.categories}
    assert len(compare_figure(d).axes) >= len(d.shifts)

    # removing the parent never breaks the newer version: its shards are links to the same files
    shutil.rmtree(v1)
    assert verify_version(v2, m2) == []
    ok = run("verify", "grow@v2", "--out", str(out))
    assert ok.returncode == 0 and "intact" in ok.stdout and "inherited" in ok.stdout, ok.stderr
    assert open_compare(open_version(out, "grow", "v2")) is None  # its parent is gone


def store_folder(out: Path, dataset: str) -> Path:
    return DatasetStore(out, dataset).resolve(None)


def test_force_publishes_anyway_and_gc_keeps_the_newest(out: Path) -> None:
    store = DatasetStore(out, "grow")
    with FakeOpenAI() as fake:
        cfg = config(fake, personas=2)
        build(cfg, out)
        assert build(cfg, out, force=True) == "v0002"
        assert build(cfg, out, grow=1) == "v0003"
        assert build(cfg, out) == "v0004"  # 2 personas again: not the latest's identity, a new version
    assert store.manifest("v0002").identity == store.manifest("v0001").identity
    assert store.manifest("v0004").mode == "build" and store.manifest("v0004").config.personas == 2
    shared = next(s.path for s in store.manifest("v0003").shards if s.inherited_from)
    for v in ("v0001", "v0003"):  # runs derived from a removed version go with it; a kept one's stay
        (out / "grow" / "runs" / v / "eval" / "e1").mkdir(parents=True)
        (out / "grow" / "runs" / v / "eval" / "e1" / "manifest.json").write_text("{}")
    res = run("gc", "grow", "--keep", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "grow" / "runs").iterdir()) == ["v0003"]
    assert "removed grow@v0001" in res.stdout and "removed grow@v0002" in res.stdout
    assert store.versions() == ["v0003", "v0004"] and (out / "grow" / "latest").resolve().name == "v0004"
    # v0003 inherited v0002's shards: they are still there, whole
    assert (store.resolve("v0003") / shared).is_file()
    assert verify_version(store.resolve("v0003"), store.manifest("v0003")) == []
    assert_one_line_error(run("gc", "grow", "--keep", "0", "--out", str(out)), "--keep 0")
    assert store.versions() == ["v0003", "v0004"]


def test_rebuild_regenerates_the_same_personas_with_another_model(out: Path) -> None:
    store = DatasetStore(out, "grow")
    with FakeOpenAI() as fake:
        build(config(fake), out)
        build(config(fake, personas=1), out, grow=1)  # v2: 5 personas, grown
        with pytest.raises(UserError, match=r"--grow continues grow@v0002 with its settings, but llm\.model"):
            build(config(fake, model="other-model"), out, grow=2)
        with pytest.raises(UserError, match="--rebuild keeps the personas of grow@v0002, sampled with seed"):
            build(config(fake, model="other-model", seed=9), out, rebuild=True)
        assert build(config(fake, model="other-model", personas=1), out, rebuild=True) == "v0003"
        assert build(config(fake, model="other-model"), out, rebuild=True) == "v0003"  # up to date
    m2, m3 = store.manifest("v0002"), store.manifest("v0003")
    assert m3.mode == "rebuild" and m3.config.personas == 5 and m3.model == "other-model"
    assert m3.built is not None and (m3.built.first, m3.built.end) == (0, 5)
    assert not any(s.inherited_from for s in m3.shards)
    a, b = (table(store.resolve(v), "seeds").select(SAMPLED).sort("index") for v in ("v0002", "v0003"))
    assert a.equals(b)  # identical seeds: the same people, written by another model
    d = diff_versions(out, "grow", "v2", "v3")
    personas = d.table("personas")
    assert personas is not None and (personas.added, personas.removed) == (0, 0) and personas.changed > 0
    assert (d.model.a, d.model.b) == ("fake-model", "other-model") and "llm.model" in d.config
    assert d.call_models and all(c.b == "other-model" for c in d.call_models.values())
    assert m2.identity != m3.identity


def test_new_rows_are_deduplicated_against_earlier_kept_rows() -> None:
    cat = load_catalogue()
    # the sample query is English: two personas who write English, so language ID keeps their rows
    english = (
        r
        for i in range(50)
        if (r := sample_records(cat, index=i)).persona.persona.Demographics.Interaction_Language == "en"
    )
    old, other = next(english), next(english)
    twin = old.persona.model_copy(update={"persona_id": "p000009"})  # the same person under a new index
    twin_scene = old.scene.model_copy(update={"persona_id": "p000009", "scene_id": "p000009-s000"})
    twin_query = old.query.model_copy(
        update={"persona_id": "p000009", "scene_id": "p000009-s000", "query_id": "p000009-s000-q0"}
    )
    copy = other.query.model_copy(update={"personalized_query": old.query.personalized_query})
    earlier = Kept(queries=[old.query], scenes=[old.scene], personas=[old.persona])
    out = dedup_all(
        [twin_query, copy],
        [twin_scene, other.scene],
        [twin, other.persona],
        DedupLevels(),
        FilterConfig(),
        earlier,
    )
    why = {r.row_id: (r.reason, r.dup_of) for r in out.rejections}
    assert why == {
        twin_query.query_id: ("persona_duplicate", old.persona.persona_id),
        copy.query_id: ("exact_duplicate", old.query.query_id),
    }
    assert out.records == []  # and the old rows were not judged again
    alone = dedup_all([copy], [other.scene], [other.persona], DedupLevels(), FilterConfig())
    assert [q.query_id for q in alone.records] == [copy.query_id]


def test_cli_build_is_a_no_op_when_nothing_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    args = ["build", "--dataset", "cli", "--personas", "2", "--scenes-per-persona", "2", "--out", str(out)]
    with FakeOpenAI() as fake:
        first = run(*args, "--base-url", fake.base_url, "--no-progress", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        again = run(*args, "--base-url", fake.base_url, "--no-progress", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "up to date: cli@v0001" in again.stdout
        grow = ["build", "--dataset", "cli", "--grow", "2", "--base-url", fake.base_url, "--out", str(out)]
        grown = run(*grow, "--no-progress", env=env)
        assert grown.returncode == 0, grown.stderr[-2000:]
        assert "cli@v0002" in grown.stdout
    m = DatasetStore(out, "cli").manifest("v0002")
    # --grow took the latest version's settings (2 sessions), not the defaults (20)
    assert m.mode == "grow" and m.config.personas == 4 and m.config.scenes_per_persona == 2
    bad = run("build", "--dataset", "cli", "--grow", "1", "--personas", "4", "--out", str(out), env=env)
    assert_one_line_error(bad, "--personas with --grow")
    both = run("build", "--dataset", "cli", "--grow", "1", "--rebuild", "--out", str(out), env=env)
    assert_one_line_error(both, "--grow and --rebuild")
    assert_one_line_error(run("diff", "cli@v1", "other@v2", "--out", str(out)), "one dataset")
    assert os.listdir(out / "cli" / ".staging") == []  # nothing half-written left behind


def test_the_store_checks_names_and_numbers_past_stray_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No DatasetStore can point outside its --out; a vNNNN folder without manifest is listed nowhere,
    warned about once, and its number is never given to a new version."""
    for name in ("..", ".", "", "a/b", "../x", "/abs"):
        with pytest.raises(UserError, match="dataset name"):
            DatasetStore(tmp_path, name)
    store = DatasetStore(tmp_path, "s")
    (store.root / "v0001").mkdir(parents=True)
    (store.root / "v0001" / "manifest.json").write_text("{}")
    (store.root / "v0003" / "dataset").mkdir(parents=True)  # half copied
    assert store.versions() == store.versions() == ["v0001"] and store.latest() == "v0001"
    assert capsys.readouterr().err.count(f"warning: {store.root / 'v0003'} has no manifest.json") == 1
    assert store.next_version() == ("v0004", "v0001")
