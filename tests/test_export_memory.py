"""The probes exported for LongMemEval (xiaowu0162/LongMemEval) and LoCoMo (snap-research/locomo).

One mock build of 8 personas × 8 sessions with a scripted probe writer. The files are read the way the
official code reads them: LongMemEval's retrieval finds evidence by the substring "answer" in a session id
and `has_answer` on user turns, abstention by "_abs" in the question id, and its generation sorts sessions
by the date text; LoCoMo's scripts walk `session_<i>` keys from 1 and look evidence dia_ids up in them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from personaloom.dataset.export import export_items
from personaloom.dataset.store import read_records
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.probes import ProbeItem
from personaloom.schemas.records import DatasetRow, Turn
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.probe_model import probe_writer

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parent.parent
LME_TYPES = {
    "single-session-user",
    "single-session-assistant",
    "single-session-preference",
    "multi-session",
    "temporal-reasoning",
    "knowledge-update",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    out = tmp_path_factory.mktemp("memory") / "output"
    with FakeOpenAI(latency=0.0, responder=probe_writer) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(
            dataset="mem", personas=8, scenes_per_persona=8, shard_size=4, locales=["en_US"], llm=llm
        )
        asyncio.run(build_dataset(cfg, out=str(out)))
    return out


@pytest.fixture(scope="module")
def version(built: Path) -> tuple[list[DatasetRow], list[ProbeItem]]:
    rows = read_records(built / "mem" / "v0001" / "dataset", DatasetRow)
    items = read_records(built / "mem" / "v0001" / "probes", ProbeItem)
    assert rows and items
    return rows, items


def hidden_texts(rows: list[DatasetRow]) -> list[str]:
    said = {t.content for r in rows for t in r.turns} | {r.personalized_query for r in rows}
    return [
        r.expected_response for r in rows if r.expected_response.strip() and r.expected_response not in said
    ]


def test_longmemeval_reads_like_their_code(
    built: Path, tmp_path: Path, version: tuple[list[DatasetRow], list[ProbeItem]]
) -> None:
    rows, items = version
    written = export_items(built, "mem", "v1", "longmemeval", tmp_path)
    text = (tmp_path / "longmemeval.json").read_text()
    data = json.loads(text)  # their loaders: json.load of one array
    assert isinstance(data, list) and written == {"longmemeval.json": len(data)} and data
    for hidden in hidden_texts(rows):
        assert hidden not in text  # a hidden reference never enters a haystack
    by_id = {i.probe_id: i for i in items}
    by_session = {(r.persona_id, r.session_index): r for r in rows}
    for entry in data:
        assert "_abs" not in entry["question_id"]  # no abstention type: no _abs
        item = by_id[entry["question_id"]]
        assert entry["question_type"] in LME_TYPES
        assert entry["answer"] == item.truth and entry["question"] == item.question
        fmt = "%Y/%m/%d (%a) %H:%M"
        parsed = [datetime.strptime(d, fmt) for d in entry["haystack_dates"]]
        assert [d.strftime(fmt) for d in parsed] == entry["haystack_dates"]  # zero-padded
        assert entry["haystack_dates"] == sorted(entry["haystack_dates"])  # text order is time order
        assert entry["haystack_dates"][-1] <= entry["question_date"]
        datetime.strptime(entry["question_date"], fmt)
        n = len(entry["haystack_session_ids"])
        assert len(entry["haystack_sessions"]) == len(entry["haystack_dates"]) == n
        # run_retrieval.py: correct docs are the ids holding "answer"; a session with no has_answer turn
        # is renamed noans and would not count
        answer_ids = [s for s in entry["haystack_session_ids"] if "answer" in s]
        assert answer_ids == entry["answer_session_ids"] and answer_ids
        assert all(s.startswith("answer_") for s in answer_ids)  # generation maps noans_ back to answer_
        own = [r for (p, s), r in by_session.items() if p == item.persona_id and s <= item.checkpoint_session]
        assert n == len(own)  # no cap: the user's sessions up to the checkpoint, nobody else's
        evidence_sessions = set()
        for sid, session in zip(entry["haystack_session_ids"], entry["haystack_sessions"], strict=True):
            users = [t for t in session if t["role"] == "user"]
            assert all(t["has_answer"] in (True, False) for t in users)
            marked = [t for t in session if t.get("has_answer")]
            assert all(t["role"] == "user" for t in marked)
            assert bool(marked) == ("answer" in sid)
            idx = int(sid.rsplit("_s", 1)[1])
            row = by_session[(item.persona_id, idx)]
            assert [t["content"] for t in session] == [t.content for t in row.turns] or not row.turns
            if marked:
                evidence_sessions.add(idx)
                user_ids = {t.content: t.turn_id for t in row.turns if t.role == "user"}
                if item.evidence_turns and row.turns:
                    named = [t for t in marked if user_ids[t["content"]] in item.evidence_turns]
                    assert named == marked or not named
        assert evidence_sessions == set(item.evidence_sessions)


def locomo_date(text: str) -> datetime:
    return datetime.strptime(text, "%I:%M %p on %d %B, %Y")


def test_locomo_reads_like_their_code(
    built: Path, tmp_path: Path, version: tuple[list[DatasetRow], list[ProbeItem]]
) -> None:
    rows, items = version
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "personaloom", "export", "mem@v1", "--format", "locomo", "--out", str(built),
         "--dest", str(tmp_path / "loc")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "loc" / "locomo.json").read_text()
    samples = json.loads(text)
    for hidden in hidden_texts(rows):
        assert hidden not in text
    by_id = {i.probe_id: i for i in items}
    kept = 0
    for sample in samples:
        conv = sample["conversation"]
        pid = sample["sample_id"]
        mine = sorted((r for r in rows if r.persona_id == pid), key=lambda r: r.timestamp)
        assert conv["speaker_a"] == mine[-1].persona.Demographics.Name and conv["speaker_b"] == "Assistant"
        # their scripts: for i in range(1, 50): if 'session_%s' % i in data ...
        sessions = [i for i in range(1, 50) if f"session_{i}" in conv]
        assert sessions == list(range(1, len(mine) + 1))
        dates = [locomo_date(conv[f"session_{i}_date_time"]) for i in sessions]
        assert dates == sorted(dates)
        for i, r in zip(sessions, mine, strict=True):
            assert dates[i - 1] == r.timestamp.replace(second=0, microsecond=0, tzinfo=None)
            assert not conv[f"session_{i}_date_time"].startswith("0")  # "1:56 pm on 8 May, 2023"
        dia = {t["dia_id"]: (i, t) for i in sessions for t in conv[f"session_{i}"]}
        assert all(d == f"D{i}:{k}" for i in sessions for k, d in enumerate(
            (t["dia_id"] for t in conv[f"session_{i}"]), 1))  # fmt: skip
        for qa in sample["qa"]:
            kept += 1
            assert qa["category"] in (1, 3, 4) and "adversarial_answer" not in qa
            item = by_id[qa["probe_id"]]
            assert item.persona_id == pid and qa["question"] == item.question
            assert qa["answer"] == item.truth and qa["evidence"]
            for d in qa["evidence"]:
                i, turn = dia[d]
                assert turn["speaker"] == conv["speaker_a"]  # a user turn
                assert mine[i - 1].session_index in item.evidence_sessions
            last = mine[-1].session_index
            later = [
                c for c in mine[-1].persona.Changes
                if c.field == item.path and item.checkpoint_session < c.effective_session <= last
            ]  # fmt: skip
            assert not later  # over the whole conversation the answer is the value in force
    assert kept and kept < len(items)  # some are left out, and the note counts them
    assert "Left out" in (tmp_path / "loc" / "README.md").read_text()


# ---------------------------------------------------------------- hand-built rows and fallbacks


def _rows(pid: str) -> list[DatasetRow]:
    from tests.test_agent import row

    rows = []
    for i in range(4):
        r = row(i).model_copy(update={"persona_id": pid, "expected_response": f"HIDDEN reference {i}"})
        if i != 3:  # session 3: a version before conversations, its opening alone
            r.turns = [
                Turn(turn_id=f"q{i}-t0", role="user", content=f"opening {i}"),
                Turn(turn_id=f"q{i}-t1", role="assistant", content=f"reply {i}"),
                Turn(turn_id=f"q{i}-t2", role="user", content=f"follow-up {i}"),
            ]
        rows.append(r)
    return rows


def _probe(pid: str, kind: str, checkpoint: int, evidence: list[int], turns: list[str]) -> ProbeItem:
    return ProbeItem(
        probe_id=f"{pid}-c{checkpoint}-{kind[:6]}",
        persona_id=pid,
        checkpoint_session=checkpoint,
        type=kind,  # type: ignore[arg-type]
        path="Preference.Preferred_Formats",
        question="How should I lay this out?",
        options=["a", "b", "c", "d"],
        answer=0,
        option_kinds=["correct", "outdated", "other_persona", "other_persona"],
        truth="detailed tables",
        evidence_sessions=evidence,
        evidence_turns=turns,
        distance_sessions=1,
        distance_tokens=10,
        seed=1,
    )


def test_evidence_turns_fallbacks_and_ids_by_hand() -> None:
    from personaloom.dataset.export import _Histories, locomo, longmemeval

    pid = "answer-p1"  # an id holding "answer" must not mark every session as evidence
    rows = _rows(pid) + _rows("other")
    items = [
        _probe(pid, "recalling_the_latest_user_preferences", 3, [2], ["q2-t2"]),  # a named turn
        _probe(pid, "recalling_the_latest_user_preferences", 1, [0], []),  # changed at 2: not in locomo
        _probe(pid, "recalling_facts_mentioned_by_the_user", 3, [0, 3], []),  # all user turns, fallback row
        _probe(pid, "identifying_new_things_not_mentioned_by_the_user", 3, [0], []),
    ]
    h = _Histories(rows, None)
    entries, skipped = longmemeval(items, h)
    text = json.dumps(entries)
    assert "HIDDEN" not in text and "other_s" not in text and skipped == 1
    first, second, third = entries
    assert first["question_type"] == "knowledge-update" and third["question_type"] == "multi-session"
    assert first["answer_session_ids"] == ["answer_ans-wer-p1_s2"]
    assert [s for s in first["haystack_session_ids"] if "answer" in s] == first["answer_session_ids"]
    marked = [t["content"] for s in first["haystack_sessions"] for t in s if t.get("has_answer")]
    assert marked == ["follow-up 2"]
    assert first["haystack_sessions"][3] == [{"role": "user", "content": rows[3].personalized_query,
                                              "has_answer": False}]  # fmt: skip
    assert second["haystack_session_ids"] == ["answer_ans-wer-p1_s0", "ans-wer-p1_s1"]
    marked = [t["content"] for s in third["haystack_sessions"] for t in s if t.get("has_answer")]
    assert marked == ["opening 0", "follow-up 0", rows[3].personalized_query]
    samples, left = locomo(items, h)
    assert left == {"open_answer_less": 1, "changed_after_checkpoint": 1} and "HIDDEN" not in json.dumps(
        samples
    )
    (sample,) = samples
    assert [q["evidence"] for q in sample["qa"]] == [["D3:3"], ["D1:1", "D1:3", "D4:1"]]
    assert [q["category"] for q in sample["qa"]] == [4, 1]
    assert sample["conversation"]["session_1_date_time"] == "12:00 am on 1 January, 2024"
