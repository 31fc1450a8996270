"""Scenarios (issue 28 item 5): categories of written scenes, distinct scenarios across personas, the card."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personaloom.dataset.audit import _category_checks
from personaloom.dataset.card import dataset_card, scenario_summary
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.manifest import Manifest
from personaloom.stages import scenarios
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.scenarios import (
    CATEGORY_FALLBACK,
    OTHER,
    SceneRef,
    assign,
    categories,
    check_category,
    read_refs,
    scenario_list_model,
    scenario_stats,
)
from personaloom.stages.scenes import plan
from personaloom.stages.seed import sample_skeletons
from personaloom.testing.fake_openai import FakeOpenAI


@pytest.fixture(scope="module")
def cat():
    return load_catalogue()


def written(
    pid: str, i: int, title: str, category: str | None = "social", fallback: bool = False
) -> SceneRef:
    return SceneRef(pid, i, "specific", title, None, category, fallback)


def common(pid: str, i: int, scene_id: str, cat) -> SceneRef:
    s = next(s for s in cat.scenes if s.scene_id == scene_id)
    return SceneRef(pid, i, "common", s.title, scene_id, s.category, False)


# ---------------------------------------------------------------- categories


def test_categories_are_the_catalogues_plus_the_extra_ones(cat) -> None:
    names = categories(cat)
    assert {s.category for s in cat.scenes} <= set(names)
    assert {"hobbies", "family", "wellbeing"} <= set(names)
    assert OTHER not in names  # the fallback is never offered to the model
    assert list(names) == sorted(set(names))


def test_category_checked(cat) -> None:
    allowed = categories(cat)
    assert check_category("travel", allowed) == "travel"
    assert check_category("  Travel. ", allowed) == "travel"
    assert check_category("travel planning", allowed) is None
    assert check_category("", allowed) is None
    assert check_category(None, allowed) is None
    assert check_category(OTHER, allowed) is None


def test_schema_lists_the_categories_but_validation_leaves_the_check_to_code(cat) -> None:
    model = scenario_list_model(categories(cat))
    schema = json.dumps(model.model_json_schema())
    assert '"enum": ["communication"' in schema  # a constrained decoder can only pick one
    answer = model.model_validate(
        {"scenes": [{"title": "Plan a party", "description": "A birthday party for ten.", "category": "fun"}]}
    )
    assert answer.scenes[0].category == "fun"  # one bad category does not lose the list


class ListOnly:
    """An LLM stand-in whose list call answers `ideas` (the plan makes no other call)."""

    def __init__(self, ideas: list[dict[str, str]]) -> None:
        self.ideas, self.jobs = ideas, []

    async def run(self, call: Any, job: Any) -> list[Any]:
        self.jobs.append(job)
        model = call.response(job) if callable(call.response) else call.response
        return list(model.model_validate({"scenes": self.ideas}).scenes)


def test_plan_gives_written_scenes_a_checked_category_and_marks_the_fallback(cat) -> None:
    seed = sample_skeletons(cat, range(1), 5, n_sessions=8, n_changes=0)[0]
    ideas = [
        {
            "title": "Plan a birthday party",
            "description": "Ten friends, a small budget.",
            "category": "Social",
        },
        {"title": "Fix the garden shed", "description": "The roof leaks since the storm.", "category": "DIY"},
        {"title": "Learn the ukulele", "description": "Three chords before her trip.", "category": "hobbies"},
    ]
    llm = ListOnly(ideas)
    topics = asyncio.run(plan(seed, None, llm, cat, revisit_share=0.0))  # type: ignore[arg-type]
    assert llm.jobs[0].categories == categories(cat)
    by_title = {t.title: t for t in topics if t.kind == "specific"}
    assert (
        by_title["Plan a birthday party"].category == "social"
        and not by_title["Plan a birthday party"].fallback
    )
    assert by_title["Learn the ukulele"].category == "hobbies"
    shed = by_title["Fix the garden shed"]
    assert shed.category == OTHER and shed.fallback == (CATEGORY_FALLBACK,)
    ids = {s.scene_id: s.category for s in cat.scenes}
    assert all(t.category == ids[t.catalogue_id] for t in topics if t.kind == "common")


# ---------------------------------------------------------------- distinct scenarios


@pytest.mark.parametrize("exact_limit", [50_000, 0], ids=["every-pair", "lsh-blocking"])
def test_the_same_scenario_written_for_many_personas_counts_once(
    cat, exact_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scenarios, "EXACT_LIMIT", exact_limit)
    refs = [written(f"p{i:03d}", 1, "Host a neighbourhood barbecue") for i in range(50)]
    refs += [
        written("q001", 2, "host the neighbourhood barbecue!"),
        written("q002", 2, "Neighbourhood barbecue: host a"),
    ]
    refs += [written("q003", 3, "Train for a half marathon", "health")]
    refs += [written("q004", 3, "Plan a wedding", "family")]
    stats = scenario_stats(refs, cat, 85.0)
    assert (stats.distinct, stats.written, stats.from_catalogue) == (3, 3, 0)
    assert stats.written_sessions == stats.sessions == 54
    assert stats.by_category["social"] == 1 and stats.sessions_by_category["social"] == 52
    assert stats.by_category["health"] == stats.by_category["family"] == 1
    assert sum(stats.by_category.values()) == stats.distinct
    a = assign(refs, cat, 85.0)
    assert len({s for r, s in zip(a.refs, a.scenario, strict=True) if "barbecue" in r.title.lower()}) == 1


def test_a_written_scene_that_repeats_a_catalogue_scene_is_that_scene(cat) -> None:
    s = cat.scenes[0]
    refs = [common("p1", 0, s.scene_id, cat), written("p2", 0, s.title.upper() + "!", "social")]
    refs.append(SceneRef("p2", 1, "revisit", f"Follow-up: {s.title}", None, s.category, False))
    stats = scenario_stats(refs, cat, 85.0)
    assert (stats.distinct, stats.from_catalogue, stats.written, stats.matched_catalogue) == (1, 1, 0, 1)
    assert stats.by_category[s.category] == 1  # the catalogue's category, not the written one's
    assert stats.sessions == 2  # the revisit follows up a counted scenario


def test_two_catalogue_scenes_stay_two_and_order_does_not_matter(cat) -> None:
    refs = [common(f"p{i}", 0, s.scene_id, cat) for i, s in enumerate(cat.scenes)]
    refs += [written("z9", 1, "Plan a birthday party"), written("a1", 1, "Plan a birthday party", "family")]
    stats = scenario_stats(refs, cat, 0.0)  # every title alike: still one scenario per catalogue scene
    assert stats.from_catalogue == stats.catalogue_size == len(cat.scenes)
    assert scenario_stats(list(reversed(refs)), cat, 85.0) == scenario_stats(refs, cat, 85.0)


def test_category_of_a_written_scenario_is_its_scenes_majority_and_other_only_when_none_had_one(cat) -> None:
    refs = [written("a", 0, "Plan a party", "family"), written("b", 0, "Plan a party", "social")]
    refs += [written("c", 0, "Plan a party", "social"), written("d", 0, "Plan a party", OTHER, True)]
    refs += [written("e", 0, "Fix the shed", OTHER, True)]
    stats = scenario_stats(refs, cat, 85.0)
    assert stats.by_category["social"] == 1 and stats.by_category[OTHER] == 1
    assert stats.category_fallbacks == 2


# ---------------------------------------------------------------- a build: manifest, card, show


def test_build_records_the_scenarios_the_scenes_table_gives(out: Path, prefect_harness: None) -> None:
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(dataset="sc", personas=6, scenes_per_persona=6, shard_size=3, llm=llm)
        version = asyncio.run(build_dataset(cfg, out=str(out)))
    cat = load_catalogue()
    root = out / "sc" / version
    m = Manifest.model_validate_json((root / "manifest.json").read_text())
    assert m.scenarios is not None
    assert m.scenarios == scenario_stats(read_refs(root), cat, cfg.dedup.scenario_threshold)
    # and by hand from the table: every non-revisit scene's category is one of the list
    rows = pq.read_table(root / "scenes").to_pylist()
    counted = [r for r in rows if r["kind"] != "revisit"]
    allowed = {*categories(cat), OTHER}
    assert all(r["category"] in allowed for r in rows)
    by_id = {r["scene_id"]: r for r in rows}
    assert all(r["category"] == by_id[r["revisits"]]["category"] for r in rows if r["kind"] == "revisit")
    sc = m.scenarios
    assert sc.sessions == len(counted) == sum(sc.sessions_by_category.values())
    assert sc.written_sessions == sum(1 for r in counted if r["catalogue_id"] is None) > 0
    used = {r["catalogue_id"] for r in counted if r["catalogue_id"]}
    # catalogue scenes used as common scenes, plus any a written title repeats
    assert len(used) <= sc.from_catalogue <= len(used) + sc.matched_catalogue
    assert sc.distinct == sc.from_catalogue + sc.written == sum(sc.by_category.values())
    assert sc.category_fallbacks == sum(1 for r in counted if CATEGORY_FALLBACK in r["fallback_fields"])
    card = (root / "README.md").read_text()
    assert card == dataset_card(m) and "## Scenarios" in card
    assert f"{sc.distinct} distinct scenarios over {sc.sessions} sessions" in card
    for c, n in sc.by_category.items():
        assert f"| {c} | {n} | {sc.catalogue_by_category.get(c, 0)} |" in card
    assert scenario_summary(m)[0].startswith(f"scenarios: {sc.distinct} distinct")
    assert m.invariants["scene_category_checked"] == 0
    # the invariant can fail: a written scene's category that is no category of the list
    table = pq.read_table(root / "scenes")
    rows = table.to_pylist()
    i = next(i for i, r in enumerate(rows) if r["kind"] == "specific")
    rows[i]["category"] = "adventure"
    tampered = out / "tampered"
    (tampered / "scenes").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=table.schema), tampered / "scenes" / "part-00000.parquet"
    )
    assert _category_checks(tampered, cat)["scene_category_checked"] == 1
