"""Stage 4's sessions are conversations: what was said, what code let the user reveal, what the judge saw."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from personaloom.dataset.store import read_records
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, ConversationConfig, LLMConfig
from personaloom.schemas.manifest import Manifest
from personaloom.schemas.records import DatasetRow, evidence_keys
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.drift import in_force
from personaloom.stages.probes import history
from personaloom.stages.reveals import (
    REASON,
    REVEAL,
    assign_turns,
    calibration_jobs,
    plan_reveals,
    stated,
)
from personaloom.stages.samples import sample_records
from personaloom.testing.fake_openai import FakeOpenAI, call_of
from personaloom.testing.judge_model import reveal_judge
from personaloom.testing.simulator_model import obedient_user
from personaloom.text.tokens import count as count_tokens

pytestmark = pytest.mark.usefixtures("prefect_harness")


def config(fake: FakeOpenAI, **conv) -> BuildConfig:
    llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
    return BuildConfig(
        dataset="talk",
        personas=4,
        scenes_per_persona=5,
        shard_size=4,
        probes=False,
        answerability=False,
        llm=llm,
        conversation=ConversationConfig(**conv),
    )


def build(fake: FakeOpenAI, out: Path, **conv) -> tuple[list[DatasetRow], Manifest]:
    version = asyncio.run(build_dataset(config(fake, **conv), out=str(out)))
    root = out / "talk" / version
    return read_records(root / "dataset", DatasetRow), Manifest.model_validate_json(
        (root / "manifest.json").read_text()
    )


def test_the_code_check_tells_stated_from_implicit_on_the_hand_written_items() -> None:
    jobs = calibration_jobs()
    assert {label for _, label in jobs} == {"implicit", "explicit", "absent"}
    for job, label in jobs:
        assert stated(job.preferences[0], job.turn) is (label == "explicit"), (label, job.turn)


def test_reveals_are_planned_by_code_a_change_with_its_reason() -> None:
    s = sample_records(load_catalogue(), index=3, sessions=8)
    persona = s.persona.persona
    conv = ConversationConfig(reveals_per_session=2, others_share=1.0)
    change = persona.Changes[0]
    at = plan_reveals(persona, "p3", change.effective_session, conv, load_catalogue())
    keys = {r.key for r in at if r.who == "self"}
    assert {change.field, change.field + REASON} <= keys  # the new value and why, where it takes effect
    now = in_force(persona, change.effective_session)
    assert next(r.value for r in at if r.key == change.field) == now[change.field]  # the value in force
    traps = [r for r in at if r.who == "others"]
    assert len(traps) == 1 and traps[0].value != now.get(traps[0].key)  # someone else's, not the user's
    # deterministic, and spread over the user turns from the opening on
    assert plan_reveals(persona, "p3", change.effective_session, conv, load_catalogue()) == at
    turns = assign_turns(at, 2)
    assert turns[0] and sum(map(len, turns)) == len(at)
    # over a history every revealable preference comes up
    seen = {
        r.key
        for i in range(20)
        for r in plan_reveals(persona, "p3", i, conv, load_catalogue())
        if r.who == "self" and REASON not in r.key
    }
    assert set(in_force(persona, 0)) <= seen


def test_sessions_are_conversations_and_only_what_was_said_is_history(out: Path) -> None:
    with FakeOpenAI(responder=reveal_judge(True)) as fake:
        rows, manifest = build(fake, out, user_turns=2)
        prompts = [r["body"]["messages"][-1]["content"] for r in fake.requests if "messages" in r["body"]]
    assert rows
    for r in rows:
        assert [t.role for t in r.turns] == ["user", "assistant", "user", "assistant"], r.query_id
        assert [t.turn_id for t in r.turns] == [f"{r.query_id}-t{i}" for i in range(4)]
        assert r.turns[0].content == r.personalized_query
        assert all(not t.reveals for t in r.turns if t.role == "assistant")
        assert r.expected_response not in {t.content for t in r.turns}
        planned = {(p.key, p.who) for p in r.planned_reveals}
        assert {(m.key, m.who) for t in r.turns for m in t.reveals} >= planned - {
            (p.key, p.who) for p in r.planned_reveals if p.who == "others"
        }
        # revealed_fields: the fields some turn is evidence for (plus the lexical check's), never a trap's
        evidence = {k.removesuffix(REASON) for t in r.turns for k in evidence_keys(t) if REASON not in k}
        assert evidence <= set(r.revealed_fields)
    # the simulator never sees the was/now bookkeeping of a change
    assert not [p for p in prompts if '(was "' in p or "now \u201c" in p]
    hidden = {r.expected_response for r in rows}
    for pid in {r.persona_id for r in rows}:
        mine = [r for r in rows if r.persona_id == pid]
        said = history(mine, max(r.session_index for r in mine))
        assert len(said) == sum(len(r.turns) for r in mine)
        assert not [m for m in said if m["content"] in hidden]
    # the calibrated judge was trusted and confirmed every planned reveal; the manifest accounts for it
    assert manifest.judges["queries/reveal"].trusted
    marks = [m for r in rows for t in r.turns for m in t.reveals if m.who == "self" and not m.stated]
    assert marks and all(m.confirmed is True for m in marks)
    c = manifest.conversations
    assert c is not None and c.sessions == len(rows) and c.turns_per_session == 4.0
    assert c.implicit_judged == c.implicit_asked - c.implicit_stated and c.implicit_share() == 1.0
    assert c.history_tokens_min > 0 and c.preferences_per_persona >= 14


def test_only_confirmed_reveals_are_evidence(out: Path) -> None:
    with FakeOpenAI(responder=reveal_judge(False)) as fake:
        rows, manifest = build(fake, out, user_turns=1, explicit_share=0.0, others_share=0.0)
    assert manifest.judges["queries/reveal"].trusted
    assert all([t.role for t in r.turns] == ["user", "assistant"] for r in rows)
    marks = [m for r in rows for t in r.turns for m in t.reveals]
    assert marks and all(m.confirmed is False for m in marks)
    # a reveal the judge rejects is evidence for nothing, whatever the simulator did
    assert all(not evidence_keys(t) for r in rows for t in r.turns)
    assert manifest.conversations is not None and manifest.conversations.evidence_marks == 0


def test_an_uncalibrated_judge_is_not_asked_and_leaves_reveals_unconfirmed(out: Path) -> None:
    with FakeOpenAI() as fake:  # schema-random: a coin toss on the calibration items
        rows, manifest = build(fake, out, user_turns=1)
        asked = [r for r in fake.requests if call_of(r["body"]) == REVEAL.name]
    cal = manifest.judges["queries/reveal"]
    assert not cal.trusted and len(asked) == cal.items  # the calibration items only, not the rows
    marks = [m for r in rows for t in r.turns for m in t.reveals]
    assert marks and all(m.confirmed is None for m in marks)
    assert manifest.conversations is not None and manifest.conversations.implicit_share() is None


def test_a_context_target_grows_every_persona_s_own_history(out: Path) -> None:
    with FakeOpenAI() as fake:
        cfg = config(fake, user_turns=1, context_target=4000).model_copy(update={"scenes_per_persona": 3})
        version = asyncio.run(build_dataset(cfg, out=str(out)))
    root = out / "talk" / version
    rows = read_records(root / "dataset", DatasetRow)
    manifest = Manifest.model_validate_json((root / "manifest.json").read_text())
    own = {
        pid: sum(count_tokens(t.content) for r in rows if r.persona_id == pid for t in r.turns)
        for pid in {r.persona_id for r in rows}
    }
    assert len(own) == 4 and min(own.values()) >= 4000, own  # from the user's own sessions, no padding
    assert max(len(r.turns) for r in rows) > 2  # by longer conversations: 3 sessions hold it
    assert all(
        [t.turn_id for t in r.turns] == [f"{r.query_id}-t{i}" for i in range(len(r.turns))] for r in rows
    )
    assert manifest.conversations is not None and manifest.conversations.history_tokens_min == min(
        own.values()
    )
    # without given sessions, a target plans a session per SESSION_TOKENS of it
    assert BuildConfig(conversation=ConversationConfig(context_target=32000)).scenes_per_persona == 40


def test_probes_use_someone_else_s_preference_as_a_trap(out: Path) -> None:
    """A value the user said was another person's is a distractor, never a key, never 'new' to the user."""
    from personaloom.schemas.probes import ProbeItem

    with FakeOpenAI(responder=reveal_judge(True, then=obedient_user())) as fake:
        cfg = config(fake, user_turns=2, others_share=1.0).model_copy(
            update={"probes": True, "personas": 6, "scenes_per_persona": 8, "languages": ["en"]}
        )
        version = asyncio.run(build_dataset(cfg, out=str(out)))
    root = out / "talk" / version
    rows = read_records(root / "dataset", DatasetRow)
    items = read_records(root / "probes", ProbeItem)
    said = {
        (r.persona_id, p.key, p.value)
        for r in rows
        for p in r.planned_reveals
        if p.who == "others"
        and any(m.who == "others" and m.stated and m.key == p.key for t in r.turns for m in t.reveals)
    }
    assert said  # the scripted user said whose they were
    traps = [i for i in items if "someone_else" in i.option_kinds]
    assert traps  # some items carry the trap as a distractor
    for i in traps:
        value = i.option_values[i.option_kinds.index("someone_else")]
        assert (i.persona_id, i.path, value) in said and value != i.truth
    for i in items:
        assert (i.persona_id, i.path, i.truth) not in said  # a trap is never the key
