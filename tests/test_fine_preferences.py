"""Fine-grained preferences: planted and changed by code from seeds/fine_preferences.csv, revealed in
conversations, kept in Parquet that `datasets` loads, checked at publish, and used as probe options."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from personaloom.dataset.audit import audit
from personaloom.dataset.store import read_records
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.fine import FINE_PREFIX, load_fine_table
from personaloom.schemas.records import DatasetRow, PersonaRecord, SeedRow
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.drift import fine_fits, fine_violations, in_force, person_facts, persona_at
from personaloom.stages.seed import sample_skeleton, sample_skeletons
from personaloom.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")

SESSIONS = 6


def test_the_table_is_well_formed() -> None:
    table = load_fine_table()
    assert len(table) >= 60
    facts = set(load_catalogue().facts)
    employment = {"employed", "self_employed", "student", "apprentice", "unemployed", "homemaker", "retired"}
    for dim in table.values():
        assert 2 <= len(dim.alternatives) <= 4 and dim.min_age <= dim.max_age
        assert dim.requires <= facts and (dim.employment or employment) <= employment, dim.id


def test_skeletons_hold_fitting_preferences_drawn_apart_from_the_rest() -> None:
    cat = load_catalogue()
    table = load_fine_table()
    rows = sample_skeletons(cat, range(300), 11, n_sessions=10, n_changes=2, n_fine=20, n_fine_changes=3)
    plain = sample_skeletons(cat, range(300), 11, n_sessions=10, n_changes=2)
    counts: Counter[str] = Counter()
    for row, bare in zip(rows, plain, strict=True):
        # an RNG of their own: the rest of the skeleton is the one drawn without them
        assert row.model_copy(update={"fine": {}, "planned_fine": []}) == bare
        assert fine_violations(cat, row) == []
        facts = person_facts(cat, row)
        fitting = [d for d in table.values() if fine_fits(d, row, facts)]
        assert len(row.fine) == min(20, len(fitting))
        # changes switch a planted preference to another alternative, a different one each time
        keys = [p.field for p in row.planned_fine]
        assert len(keys) == len(set(keys)) == min(3, len(row.fine))
        for p in row.planned_fine:
            key = p.field.removeprefix(FINE_PREFIX)
            assert p.op == "switch" and 1 <= p.at_session < 10
            assert p.target in table[key].alternatives and p.target != row.fine[key]
        counts.update(list(row.fine))
        if row.age > 75 or row.employment not in ("employed",):
            assert "remote_or_office" not in row.fine
        if "young_children" not in facts:
            assert "kids_bedtime" not in row.fine
    assert len(counts) >= 60  # the draws spread over the table
    # the row's own seed gives it back
    again = sample_skeleton(cat, 5, rows[5].seed, n_sessions=10, n_changes=2, n_fine=20, n_fine_changes=3)
    assert again.fine == rows[5].fine and again.planned_fine == rows[5].planned_fine


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fine-out")
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        cfg = BuildConfig(
            dataset="fine", personas=8, scenes_per_persona=SESSIONS, shard_size=8, seed=5, llm=llm
        )
        asyncio.run(build_dataset(cfg, out=str(out)))
    return out / "fine" / "v0001"


def test_a_build_plants_changes_and_reveals_them(version: Path) -> None:
    seeds = {s.persona_id: s for s in read_records(version / "seeds", SeedRow)}
    personas = read_records(version / "personas", PersonaRecord)
    rows = read_records(version / "dataset", DatasetRow)
    assert personas and rows
    fine_changes = 0
    for p in personas:
        seed = seeds[p.persona_id]
        assert p.persona.Fine == seed.fine and len(p.persona.Fine) == 20
        changes = [c for c in p.persona.Changes if c.field.startswith(FINE_PREFIX)]
        fine_changes += len(changes)
        assert [c.effective_session for c in p.persona.Changes] == sorted(
            c.effective_session for c in p.persona.Changes
        )
        for c in changes:
            now = persona_at(p.persona, c.effective_session)
            assert now.Fine[c.field.removeprefix(FINE_PREFIX)] == c.after != c.before
            assert in_force(p.persona, c.effective_session)[c.field] == c.after
    assert fine_changes >= len(personas) * 2
    # fine preferences are planned as reveals, and some are read in the turns as evidence
    planned = [r for row in rows for r in row.planned_reveals if r.key.startswith(FINE_PREFIX)]
    revealed = [f for row in rows for f in row.revealed_fields if f.startswith(FINE_PREFIX)]
    assert planned and revealed


def test_the_tables_load_in_polars_pyarrow_and_datasets(version: Path, tmp_path: Path) -> None:
    part = sorted((version / "personas").glob("part-*.parquet"))[0]
    fine = pq.read_table(part).column("persona").to_pylist()[0]["Fine"]
    assert isinstance(fine, list) and set(fine[0]) == {"key", "value"}
    frame = pl.read_parquet(part)
    assert frame["persona"].struct.field("Fine").list.len().min() == 20
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "parquet", data_files=str(part), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(loaded[0]["persona"]["Fine"]) == 20


def test_a_fine_value_off_the_table_is_counted(version: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    shutil.copytree(version, copy)
    cat = load_catalogue()
    assert audit(copy, cat)["fine_from_table"] == 0
    part = sorted((copy / "seeds").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    rows = table.to_pylist()
    rows[0]["fine"][0]["value"] = "collects vintage typewriters"  # no alternative of any dimension
    pq.write_table(table.from_pylist(rows, schema=table.schema), part)
    counts = audit(copy, cat)
    assert counts["fine_from_table"] == 1 and counts["persona_matches_skeleton"] == 1


def test_probes_ask_about_fine_changes_with_the_dimension_s_alternatives(version: Path) -> None:
    from personaloom.schemas.probes import ProbeItem

    items = read_records(version / "probes", ProbeItem)
    fine = [i for i in items if i.path.startswith(FINE_PREFIX)]
    assert fine  # a change of a habit is asked about (why it changed, what holds now)
    table = load_fine_table()
    for item in fine:
        key = item.path.removeprefix(FINE_PREFIX)
        if item.type == "recalling_the_reasons_behind_previous_updates":
            continue  # the options are reasons
        # every option a habit of the same dimension: none stands out by form
        values = [v for o in item.option_values for v in o.split(" → ")]
        assert set(values) <= set(table[key].alternatives), item.option_values


def test_a_fine_distractor_is_another_alternative_of_its_dimension(version: Path) -> None:
    from personaloom.stages.probes import Planner, Pools, _bases, _finals

    rows = read_records(version / "dataset", DatasetRow)
    pools = Pools(_finals(rows), _bases(rows))
    table = load_fine_table()
    checked = 0
    for pid in sorted({r.persona_id for r in rows}):
        mine = [r for r in rows if r.persona_id == pid]
        planner = Planner(mine, pools, load_catalogue(), 2)
        for c in planner.base.Changes:
            key = c.field.removeprefix(FINE_PREFIX)
            if key == c.field or len(table[key].alternatives) < 3:
                continue
            got = planner.others(c.field, [c.after, c.before], 2, seed=1)
            assert got and {v for _, v in got} <= set(table[key].alternatives) - {c.after, c.before}
            checked += 1
    assert checked
