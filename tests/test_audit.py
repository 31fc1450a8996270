"""Invariants at publish: a mock build's ground truth re-derived from its own tables, and tampering caught."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from personaloom.dataset.audit import INVARIANTS, _skeleton_checks, audit
from personaloom.dataset.store import read_records
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.records import PersonaRecord, PlannedChange, Scene
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.drift import change_violations, persona_at, scales_of
from personaloom.stages.seed import SKELETON_INVARIANTS, sample_skeletons
from personaloom.testing.cli import run
from personaloom.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")


PROMPTS: list[str] = []  # the user messages the fake server received during the build


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit-out")
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        cfg = BuildConfig(dataset="gt", personas=24, scenes_per_persona=8, shard_size=12, seed=3, llm=llm)
        asyncio.run(build_dataset(cfg, out=str(out)))
        bodies = [r["body"] for r in fake.requests if r["path"].endswith("/chat/completions")]
        PROMPTS.extend(m["content"] for b in bodies for m in b["messages"] if m["role"] == "user")
    return out / "gt" / "v0001"


def test_a_mock_build_keeps_every_change_consistent(version: Path) -> None:
    cat = load_catalogue()
    personas = read_records(version / "personas", PersonaRecord)
    assert len(personas) == 24 and sum(len(p.persona.Changes) for p in personas) >= 40
    for p in personas:
        assert change_violations(p.persona, 8, scales_of(cat)) == [], p.persona_id
    manifest = json.loads((version / "manifest.json").read_text())
    assert set(manifest["invariants"]) == set(INVARIANTS) | set(SKELETON_INVARIANTS)
    assert not any(manifest["invariants"].values())
    assert "Ground truth checks" in (version / "README.md").read_text()


def test_session_prompts_are_written_for_the_persona_in_force(version: Path) -> None:
    """A session after a change is written for the changed person: its prompts carry the new value."""
    personas = {p.persona_id: p.persona for p in read_records(version / "personas", PersonaRecord)}
    scenes = read_records(version / "scenes", Scene)
    checked = 0
    for s in scenes:
        persona = personas[s.persona_id]
        due = [c for c in persona.Changes if c.effective_session <= s.session_index]
        pending = [c for c in persona.Changes if c.effective_session > s.session_index]
        when = f"Session time: {s.timestamp:%A %d %B %Y, %H:%M}"
        title = next(e.title for e in scenes if e.scene_id == s.revisits) if s.revisits else s.title
        (prompt,) = [p for p in PROMPTS if when in p and title in p]
        in_force = persona_at(persona, s.session_index)
        assert f"Prefers: {in_force.Preference.Preferred_Styles}" in prompt
        for c in due:
            assert f'is now "{c.after}"' in prompt or f'is now "{c.after}"' not in "".join(PROMPTS)
        for c in pending:  # a change that has not happened yet is nowhere in this session's prompt
            assert f'is now "{c.after}"' not in prompt
        checked += bool(due)
    assert checked >= 24
    revisits = [s for s in scenes if s.kind == "revisit"]
    assert revisits and all(s.revisits and s.revisits < s.scene_id for s in revisits)
    for s in revisits:  # a revisit continues the earlier session: its prompt quotes it
        earlier = next(e for e in scenes if e.scene_id == s.revisits)
        assert any(earlier.expected_response in p and "continues an earlier one" in p for p in PROMPTS)


def test_verify_reruns_the_invariants(version: Path, tmp_path: Path) -> None:
    res = run("verify", "gt", "--out", str(version.parent.parent))
    assert res.returncode == 0, res.stderr
    assert f"{len(INVARIANTS) + len(SKELETON_INVARIANTS)} invariants hold" in res.stdout


def test_tampered_ground_truth_is_counted(version: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    shutil.copytree(version, copy)
    part = sorted((copy / "dataset").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    rows = table.to_pylist()
    target = next(i for i, r in enumerate(rows) if r["active_changes"])
    rows[target]["active_changes"] = []  # a row that forgets the change in force
    pq.write_table(table.from_pylist(rows, schema=table.schema), part)
    persona_part = sorted((copy / "personas").glob("part-*.parquet"))[0]
    ptable = pq.read_table(persona_part)
    prows = ptable.to_pylist()
    victim = next(r for r in prows if r["persona"]["Changes"])
    victim["persona"]["Changes"][0]["before"] = "a value this person never held"
    pq.write_table(ptable.from_pylist(prows, schema=ptable.schema), persona_part)
    counts = audit(copy, load_catalogue())
    assert counts["active_changes_per_session"] >= 1 and counts["change_before_in_force"] == 1


def test_life_events_are_checked_against_the_status_in_force() -> None:
    """A retiring retiree, a job loss for the unemployed, a pay rise after a job loss: each counted."""
    cat = load_catalogue()
    rows = sample_skeletons(cat, range(400), 5, n_sessions=6, n_changes=0)

    def change(event: str, kind: str, session: int) -> PlannedChange:
        field = "Pattern.Usage_Pattern" if kind.startswith("usage") else "Communication.emotional_tone"
        op, target = ("replace", None) if kind.startswith("usage") else ("switch", "cheerful")
        return PlannedChange(
            kind=kind, field=field, op=op, at_session=session, direction="d", event=event, target=target
        )

    retiree = next(r for r in rows if r.employment == "retired" and r.age <= 75)
    jobless = next(r for r in rows if r.employment == "unemployed" and 25 <= r.age <= 60)
    worker = next(r for r in rows if r.employment == "employed" and 25 <= r.age <= 60)
    bad = [
        retiree.model_copy(update={"planned_changes": [change("retired from work", "usage_retired", 1)]}),
        jobless.model_copy(update={"planned_changes": [change("lost their job", "usage_job_search", 1)]}),
        worker.model_copy(
            update={
                "planned_changes": [
                    change("lost their job", "usage_job_search", 1),
                    change("got a pay rise", "tone_cheerful", 2),
                ]
            }
        ),
    ]
    assert _skeleton_checks(bad, cat)["change_event_eligible"] == 3
    sound = worker.model_copy(
        update={
            "planned_changes": [
                change("lost their job", "usage_job_search", 1),
                change("started a new full-time job", "usage_new_job", 2),
            ]
        }
    )
    found = _skeleton_checks([sound, retiree, jobless], cat)
    assert found["change_event_eligible"] == 0 and not +found
    assert set(SKELETON_INVARIANTS).isdisjoint(INVARIANTS)  # each rule counted once, under one name


def test_tampered_conversations_are_counted(version: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    shutil.copytree(version, copy)
    assert not any(v for k, v in audit(copy, load_catalogue()).items() if k.startswith(("session", "reveal")))
    part = sorted((copy / "dataset").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    rows = table.to_pylist()
    said = next(i for i, r in enumerate(rows) if len(r["turns"]) > 1)
    rows[said]["turns"][1]["content"] = rows[said]["expected_response"]  # the hidden reference, said
    marked = [i for i, r in enumerate(rows) if i != said and any(t["reveals"] for t in r["turns"])]
    turn = next(t for t in rows[marked[0]]["turns"] if t["reveals"])
    turn["reveals"][0]["stated"] = not turn["reveals"][0]["stated"]  # code's check, contradicted
    evidence = next(i for i in marked[1:] if rows[i]["revealed_fields"])
    rows[evidence]["revealed_fields"] = []
    pq.write_table(table.from_pylist(rows, schema=table.schema), part)
    counts = audit(copy, load_catalogue())
    assert counts["session_is_what_was_said"] == 1 and counts["reveal_marks_planned"] >= 1
    assert counts["revealed_fields_from_marks"] >= 1
