"""Probes: items that need the history — concrete values chosen by code, written blind, form-checked, kept
at chance for every blind rule — and `evaluate` with its oracle, blind rows and contexts."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from personaloom.dataset.store import read_records
from personaloom.pipeline.flow import build_dataset
from personaloom.runs.evaluate import evaluate_dataset, oracle_pick, pick_letter
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.probes import EvalConfig, ProbeItem
from personaloom.schemas.records import DatasetRow
from personaloom.stages import blind
from personaloom.stages.drift import as_text, get_value, persona_at
from personaloom.stages.probes import (
    CONFIRM,
    ProbeDraft,
    Spec,
    assemble,
    balance_positions,
    baselines,
    dedup,
    form_problem,
    gate,
    history,
    message_tokens,
)
from personaloom.testing.fake_openai import FakeOpenAI, call_of
from personaloom.testing.judge_model import calibrated
from personaloom.testing.probe_model import probe_confirmer, probe_writer

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probes-out")
    with FakeOpenAI(responder=probe_writer) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        # the fake model writes English: en_US personas keep their rows through the language check
        cfg = BuildConfig(
            dataset="pm", personas=12, scenes_per_persona=10, shard_size=6, seed=1, locales=["en_US"], llm=llm
        )
        asyncio.run(build_dataset(cfg, out=str(out)))
    return out / "pm" / "v0001"


@pytest.fixture(scope="module")
def blind_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build whose model writes schema-random text: it follows no instruction."""
    out = tmp_path_factory.mktemp("blind-out")
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        cfg = BuildConfig(dataset="b", personas=50, scenes_per_persona=10, shard_size=25, seed=2, llm=llm)
        asyncio.run(build_dataset(cfg, out=str(out)))
    return out / "b" / "v0001"


VALUE_TYPES = (
    "recalling_facts_mentioned_by_the_user",
    "recalling_the_latest_user_preferences",
    "recommendation_aligned_with_users_latest_preferences",
)


def test_probes_of_several_types_with_a_code_owned_key(version: Path) -> None:
    items = read_records(version / "probes", ProbeItem)
    rows = read_records(version / "dataset", DatasetRow)
    assert len({i.type for i in items}) >= 4
    by_persona = {r.persona_id: r for r in rows}
    for item in items:
        assert item.option_kinds.count("correct") == 1 and item.option_kinds[item.answer] == "correct"
        assert len(set(item.options)) == 4 and item.option_values[item.answer] == item.truth
        assert all(f'"{v}"' in o for v, o in zip(item.option_values, item.options, strict=True))
        assert not {"generic", "contradiction", "fabricated"} & set(item.option_kinds)  # nothing to eliminate
        kept = {r.session_index for r in rows if r.persona_id == item.persona_id}
        assert item.evidence_sessions and set(item.evidence_sessions) <= kept
        assert max(item.evidence_sessions) <= item.checkpoint_session
        assert min(item.evidence_sessions) < item.checkpoint_session  # never the checkpoint session alone
        assert item.distance_sessions == item.checkpoint_session - max(item.evidence_sessions)
        base = by_persona[item.persona_id].persona
        if item.type in VALUE_TYPES:  # the value in force, not LLM text
            assert item.truth == as_text(get_value(persona_at(base, item.checkpoint_session), item.path))
        changed = [
            c for c in base.Changes if c.field == item.path and c.effective_session <= item.checkpoint_session
        ]
        if item.type in VALUE_TYPES[1:] and changed:  # cited at or after the change the key depends on
            last = max(changed, key=lambda c: c.effective_session)
            assert max(item.evidence_sessions) >= last.effective_session
            assert item.outdated == last.before != item.truth and "outdated" in item.option_kinds
        assert item.language == base.Demographics.Interaction_Language
        assert oracle_pick(item) == item.answer
    m = json.loads((version / "manifest.json").read_text())
    c = m["counts"]["probes"]
    assert c["rows_out"] == len(items) and c["rows_in"] == c["rows_out"] + c["rejected"]
    assert {"probes/write", "probes/blind"} <= set(m["calls"])
    assert all(m["invariants"][k] == 0 for k in m["invariants"] if k.startswith("probe_"))
    assert sum(t["kept"] for t in m["probe_yield"].values()) == len(items)
    assert sum(t["planned"] for t in m["probe_yield"].values()) == c["rows_in"]


def test_many_checkpoints_per_persona(version: Path) -> None:
    items = read_records(version / "probes", ProbeItem)
    per = Counter(i.persona_id for i in items)
    checkpoints = {pid: len({i.checkpoint_session for i in items if i.persona_id == pid}) for pid in per}
    assert max(checkpoints.values()) >= 4 and len({i.distance_sessions for i in items}) >= 3
    assert max(per.values()) >= 6


def test_a_twenty_session_history_yields_twenty_items_across_types(tmp_path: Path) -> None:
    """Each type turns to the fields it asked least: checkpoints in a row ask different things."""
    with FakeOpenAI(latency=0.0, responder=calibrated(probe_confirmer())) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        # every session kept (no answerability judge): the history is the whole 20 sessions
        cfg = BuildConfig(
            dataset="long", personas=3, scenes_per_persona=20, shard_size=3, seed=0, locales=["en_US"],
            answerability=False, llm=llm,
        )  # fmt: skip
        asyncio.run(build_dataset(cfg, out=str(tmp_path)))
    version = tmp_path / "long" / "v0001"
    items = read_records(version / "probes", ProbeItem)
    kept = Counter(r.persona_id for r in read_records(version / "dataset", DatasetRow))
    per = Counter(i.persona_id for i in items)
    assert min(kept.values()) >= 18
    assert all(per[pid] >= 20 for pid in kept), per
    assert len({i.type for i in items}) >= 6 and max(i.distance_sessions for i in items) >= 8
    for pid in kept:  # many different questions, not one asked at every checkpoint
        asked = {(i.type, i.path) for i in items if i.persona_id == pid}
        assert len(asked) >= 8, asked


def test_other_users_lend_distractors_by_rotation(version: Path) -> None:
    """No one persona lends most of the other-persona values (each item starts the rotation at its seed)."""
    items = read_records(version / "probes", ProbeItem)
    rows = read_records(version / "dataset", DatasetRow)
    finals = {
        r.persona_id: persona_at(r.persona, r.session_index)
        for r in sorted(rows, key=lambda r: r.session_index)
    }
    lenders: Counter[str] = Counter()
    for item in items:
        for kind, value in zip(item.option_kinds, item.option_values, strict=True):
            if kind == "other_persona" and item.type in VALUE_TYPES:
                lenders.update(
                    pid
                    for pid, p in finals.items()
                    if pid != item.persona_id and as_text(get_value(p, item.path)) == value
                )
    assert lenders and max(lenders.values()) <= 0.3 * sum(lenders.values())


def test_blind_rules_score_chance_on_a_schema_random_model(blind_version: Path) -> None:
    """The model writes random text: whatever form cue that leaves, every rule stays at chance."""
    items = read_records(blind_version / "probes", ProbeItem)
    assert len(items) >= 80
    table = baselines(items)
    for rule in (*blind.RULES, "position_majority"):
        assert abs(table["all"][rule] - 0.25) <= 0.08, (rule, table["all"])
    m = json.loads((blind_version / "manifest.json").read_text())
    judged = {i.probe_id: i.blind_judge for i in items if i.blind_judge is not None}
    assert (
        m["probe_baselines"] == baselines(items, judged) and m["invariants"]["probe_baselines_recorded"] == 0
    )
    assert "## Probes: blind baselines and yield" in (blind_version / "README.md").read_text()


def _spec(**kw) -> Spec:
    base = {
        "persona_id": "p0",
        "checkpoint": 5,
        "kind": "latest",
        "path": "Preference.Preferred_Formats",
        "truth": "short bullet points",
        "values": (
            "long detailed explanations",
            "short bullet points",
            "colourful comparison tables",
            "voice notes",
        ),
        "kinds": ("outdated", "correct", "other_persona", "other_persona"),
        "outdated": "long detailed explanations",
        "evidence": (3,),
        "distance_sessions": 2,
        "distance_tokens": 50,
        "seed": 3,
        "language": "en",
    }
    return Spec(**(base | kw))


def _draft(**kw) -> ProbeDraft:
    frames = {
        "reply_a": "Since you like [A], here are the three offers set out for you.",
        "reply_b": "Going by [B], here are the three offers put together for you.",
        "reply_c": "As you prefer [C], here are all three offers side by side.",
        "reply_d": "Knowing you want [D], here are the three offers laid out.",
    }
    base = {"question": "Can you summarise the flat offers I got?", **frames}
    return ProbeDraft(**(base | kw))


def test_code_puts_each_value_into_its_frame() -> None:
    spec = _spec()
    options = assemble(spec, _draft())
    assert options[1] == 'Going by "short bullet points", here are the three offers put together for you.'
    # a frame without its marker: every option takes the same form, the value first
    options = assemble(spec, _draft(reply_c="Here are all three offers side by side."))
    assert all(o.startswith(f'"{v}": ') for o, v in zip(options, spec.values, strict=True))
    assert form_problem(spec, _draft()) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"reply_b": ""}, "probe_missing_option"),
        (
            {"reply_b": "Since you like [B], here are the three offers set out for you."},
            "probe_options_not_distinct",
        ),
        (
            {"reply_a": "Since you like [A] and colourful comparison tables, here are the three offers."},
            "probe_option_names_another_value",
        ),
        ({"question": "Can you list the offers as short bullet points?"}, "probe_question_names_a_value"),
        (
            {"reply_d": "Knowing you want [D], here are the three offers laid out, " + "each in full, " * 8},
            "probe_length_unbalanced",
        ),
    ],
)
def test_form_checks_name_what_a_blind_reader_could_use(change: dict[str, str], reason: str) -> None:
    # a second line behind the planner's own check that values are apart: here B nearly repeats A
    values = (
        "long detailed explanations",
        "long detailed explanation",
        "colourful comparison tables",
        "voice notes",
    )
    spec = _spec(values=values) if reason == "probe_options_not_distinct" else _spec()
    assert form_problem(spec, _draft(**change)) == reason


def _item(n: int, options: list[str], answer: int) -> ProbeItem:
    return ProbeItem(
        probe_id=f"p{n:06d}-c003-latest",
        persona_id=f"p{n:06d}",
        checkpoint_session=3,
        type="recalling_the_latest_user_preferences",
        path="Preference.Preferred_Formats",
        question="What should I do next?",
        options=options,
        answer=answer,
        option_kinds=["correct" if i == answer else "other_persona" for i in range(4)],
        option_values=[f"v{i}" for i in range(4)],
        truth=f"v{answer}",
        evidence_sessions=[1],
        distance_sessions=2,
        distance_tokens=10,
        seed=n * 7919,
    )


def test_the_gate_keeps_a_leaking_rule_at_chance_and_positions_balanced() -> None:
    """Items whose key is always the longest option: the gate keeps only as many as chance allows."""
    items = []
    for n in range(400):
        lengths = [20 + (n * 7 + 3 * i) % 13 for i in range(4)]
        answer = n % 4
        if n % 2 == 0:  # half the items: the key is the longest
            lengths[answer] = 60
        items.append(_item(n, [f"opt{i} " + "x" * k for i, k in enumerate(lengths)], answer))
    out = gate(items, {})
    kept = out.records
    assert kept and len(kept) < len(items)
    assert all(r.reason == "probe_blind_answerable" for r in out.rejections)
    assert sum("longest" in (r.detail or "") for r in out.rejections) >= 0.8 * len(out.rejections)
    table = baselines(kept)["all"]
    slack = 0.5 * blind.SPREAD / len(kept) ** 0.5  # the band's allowance for a finite number of items
    assert table["longest"] <= blind.CHANCE + blind.MARGIN + slack + 0.001  # baselines round to 3 places
    assert table["position_majority"] <= 0.26
    moved = balance_positions(kept)
    assert all(i.options[i.answer] == k.options[k.answer] for i, k in zip(moved, kept, strict=True))


@pytest.mark.parametrize("lying", [False, True])
def test_a_trusted_judge_confirms_exactly_one_option_holds_the_key(tmp_path: Path, lying: bool) -> None:
    with FakeOpenAI(responder=calibrated(probe_confirmer(lying))) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=32)
        cfg = BuildConfig(dataset="c", personas=8, scenes_per_persona=6, seed=1, locales=["en_US"], llm=llm)
        asyncio.run(build_dataset(cfg, out=str(tmp_path)))
        asked = [r for r in fake.requests if call_of(r["body"]) == CONFIRM.name]
    m = json.loads((tmp_path / "c" / "v0001" / "manifest.json").read_text())
    rejected = sum(t.get("rejected:probe_key_not_confirmed", 0) for t in m["probe_yield"].values())
    kept = sum(t["kept"] for t in m["probe_yield"].values())
    assert asked and all(r["body"]["temperature"] == 0 for r in asked)
    assert (kept == 0 and rejected > 0) if lying else (kept > 0 and rejected == 0)


def test_items_repeating_an_earlier_one_are_rejected_with_its_id(version: Path) -> None:
    items = read_records(version / "probes", ProbeItem)
    earlier, new = items[:3], items[3:6]
    again = items[0].model_copy(
        update={"probe_id": "p999999-c009-latest", "question": items[0].question.upper()}
    )
    twin = new[0].model_copy(update={"probe_id": "p999998-c009-latest"})
    out = dedup([*new, again, twin], earlier)
    assert out.records == new
    assert [(r.row_id, r.reason, r.detail) for r in out.rejections] == [
        ("p999999-c009-latest", "duplicate_probe", f"duplicate of {items[0].probe_id}"),
        ("p999998-c009-latest", "duplicate_probe", f"duplicate of {new[0].probe_id}"),
    ]


def test_history_caps_and_pads(version: Path) -> None:
    rows = read_records(version / "dataset", DatasetRow)
    pid = rows[0].persona_id
    mine = [r for r in rows if r.persona_id == pid]
    last = max(r.session_index for r in mine)
    full = history(mine, last)
    # only what was said: every turn of every session, in order, and no hidden reference answer
    said = [(t.role, t.content) for r in sorted(mine, key=lambda r: r.session_index) for t in r.turns]
    assert [(m["role"], m["content"]) for m in full] == said and len(said) > 2 * len(mine)
    assert full[0]["role"] == "user" and full[-1]["role"] == "assistant"
    hidden = {r.expected_response for r in rows}
    assert not [m for m in full if any(h in m["content"] for h in hidden)]
    keep = [min(r.session_index for r in mine)]
    capped = history(mine, last, context_tokens=64, keep=keep)
    assert mine[0].personalized_query in [m["content"] for m in capped]  # evidence survives the cap
    others = [r for r in rows if r.persona_id != pid]
    padded = history(mine, last, context_tokens=message_tokens(full) + 400, filler=others)
    assert message_tokens(padded) >= message_tokens(full) + 300 and padded[-len(full) :] == full


def test_pick_letter_reads_the_final_answer() -> None:
    assert pick_letter("I think (b) fits.<final_answer>(c)") == 2
    assert pick_letter("(a) or (b)") is None and pick_letter("no idea") is None


def test_evaluate_writes_results_with_an_oracle_blind_rows_and_contexts(version: Path) -> None:
    out = version.parent.parent
    with FakeOpenAI(responder=lambda body: "Let me think. <final_answer>(b)") as fake:
        cfg = EvalConfig(dataset="pm", llm=LLMConfig(model="fake-model", base_url=fake.base_url), run="t")
        run_dir = Path(asyncio.run(evaluate_dataset(cfg, out=str(out))))
        calls = fake.stats.chat_ok
        assert Path(asyncio.run(evaluate_dataset(cfg, out=str(out)))) == run_dir  # resumes: no new calls
        assert fake.stats.chat_ok == calls
        seen = {}
        for context in ("none", "base-persona"):
            blind_cfg = cfg.model_copy(update={"context": context, "run": f"t-{context}"})
            blind_dir = Path(asyncio.run(evaluate_dataset(blind_cfg, out=str(out))))
            seen[context] = [r["body"]["messages"][-1]["content"] for r in fake.requests[-3:]]
            assert "context: " + context in (blind_dir / "summary.md").read_text()
    assert all("Our conversation history" not in m for m in seen["none"])
    assert all("What you know about this user" in m for m in seen["base-persona"])
    results = pl.read_parquet(run_dir / "results" / "*.parquet")
    n = len(read_records(version / "probes", ProbeItem))
    assert len(results) == (2 + len(blind.RULES)) * n
    acc = dict(results.group_by("model").agg(pl.col("correct").mean()).iter_rows())
    assert acc["oracle"] == 1.0 and all(f"blind:{r}" in acc for r in blind.RULES)
    picked_b = results.filter(pl.col("model") == "fake-model")
    assert (picked_b["predicted"] == 1).all()
    assert acc["fake-model"] == pytest.approx((picked_b["answer"] == 1).mean())
    summary = (run_dir / "summary.md").read_text()
    assert "oracle" in summary and "chance" in summary and "distance (sessions)" in summary


def test_a_broken_key_fails_the_oracle(version: Path) -> None:
    item = read_records(version / "probes", ProbeItem)[0]
    wrong = (item.answer + 1) % 4
    assert oracle_pick(item.model_copy(update={"answer": wrong})) != wrong


def test_open_mode_is_judged_against_the_key_and_plotted(version: Path, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from personaloom.dataset.explore import figures, open_version

    def model(body: dict) -> str:
        user = body["messages"][-1]["content"]
        if "answer key" in body["messages"][0]["content"]:
            return '{"follows_key": true, "reason": "it follows the key"}'
        return "Here is what I suggest." if user else ""

    with FakeOpenAI(responder=model) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url)
        run_dir = Path(
            asyncio.run(
                evaluate_dataset(
                    EvalConfig(dataset="pm", llm=llm, mode="open"), out=str(version.parent.parent)
                )
            )
        )
    results = pl.read_parquet(run_dir / "results" / "*.parquet").filter(pl.col("model") == "fake-model")
    assert results["correct"].all() and (results["mode"] == "open").all()
    figs = figures(open_version(version.parent.parent, "pm"))
    assert "eval-accuracy_by_distance" in figs
