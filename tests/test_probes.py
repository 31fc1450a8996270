"""Probes: items from the ground truth, validated by code, and `evaluate` with its random and oracle rows."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from personaloom.build import build_dataset
from personaloom.drift import as_text, get_value, persona_at
from personaloom.evaluate import evaluate_dataset, pick_letter
from personaloom.probes import ProbeDraft, Spec, dedup, history, message_tokens, option_plan, validate
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.probes import EvalConfig, ProbeItem
from personaloom.schemas.records import DatasetRow
from personaloom.store import read_records
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.probe_model import probe_writer

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


def test_probes_of_several_types_with_a_code_owned_key(version: Path) -> None:
    items = read_records(version / "probes", ProbeItem)
    rows = read_records(version / "dataset", DatasetRow)
    assert len({i.type for i in items}) >= 5
    by_persona = {r.persona_id: r for r in rows}
    for item in items:
        assert item.option_kinds[item.answer] == "correct" and len(set(item.options)) == 4
        kept = {r.session_index for r in rows if r.persona_id == item.persona_id}
        assert item.evidence_sessions and set(item.evidence_sessions) <= kept
        assert all(s <= item.checkpoint_session for s in item.evidence_sessions)
        assert item.distance_sessions == item.checkpoint_session - max(item.evidence_sessions)
        if item.type in ("recalling_facts_mentioned_by_the_user", "recalling_the_latest_user_preferences"):
            now = persona_at(by_persona[item.persona_id].persona, item.checkpoint_session)
            assert item.truth == as_text(get_value(now, item.path))  # the value in force, not LLM text
        if item.type == "recalling_the_latest_user_preferences":
            base = by_persona[item.persona_id].persona
            changed = [c for c in base.Changes if c.field == item.path]
            last = max(c.effective_session for c in changed if c.effective_session <= item.checkpoint_session)
            before = persona_at(base, last - 1)  # code's before: the value in force the session before
            assert item.outdated == as_text(get_value(before, item.path)) != item.truth
        assert item.language == by_persona[item.persona_id].persona.Demographics.Interaction_Language
    m = json.loads((version / "manifest.json").read_text())
    c = m["counts"]["probes"]
    assert c["rows_out"] == len(items) and c["rows_in"] == c["rows_out"] + c["rejected"]
    assert "probes/write" in m["calls"]


def test_one_persona_gets_four_options_in_its_own_language(tmp_path: Path) -> None:
    """No other persona to borrow a value from: the third distractor is a preference never stated."""
    with FakeOpenAI(responder=probe_writer) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(dataset="one", personas=1, scenes_per_persona=8, seed=3, locales=["ja_JP"], llm=llm)
        asyncio.run(build_dataset(cfg, out=str(tmp_path)))
        asked = [r["body"] for r in fake.requests if "Ground truth (what holds" in json.dumps(r["body"])]
    items = read_records(tmp_path / "one" / "v0001" / "probes", ProbeItem)
    assert items and asked
    for item in items:
        assert len(item.options) == 4 and "other_persona" not in item.option_kinds
        assert item.language == "ja"
        assert ("outdated" in item.option_kinds) == bool(item.outdated)
        if not item.outdated:
            assert "fabricated" in item.option_kinds
    said = "in Japanese, the language this user writes"
    assert all(said in json.dumps(b, ensure_ascii=False) for b in asked)


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


def test_answer_positions_are_shuffled_by_seed(version: Path) -> None:
    items = read_records(version / "probes", ProbeItem)
    positions = Counter(i.answer for i in items)
    assert len(positions) >= 3 and max(positions.values()) <= 0.6 * len(items)


def _spec(**kw) -> Spec:
    base = {
        "persona_id": "p0",
        "checkpoint": 5,
        "kind": "latest",
        "path": "Preference.Preferred_Formats",
        "truth": "short bullet points",
        "outdated": "long detailed explanations",
        "other": "colourful comparison tables",
        "evidence": (3,),
        "distance_sessions": 2,
        "distance_tokens": 50,
        "seed": 3,
        "persona": None,
    }
    return Spec(**(base | kw))


def test_validation_rejects_a_distractor_that_agrees_with_the_truth() -> None:
    spec = _spec()
    kinds = option_plan(spec)
    assert kinds == ["correct", "outdated", "other_persona", "contradiction"]
    good = ProbeDraft(
        question="Summarise the offers?",
        correct="Here are short bullet points of the offers.",
        outdated="Here are long detailed explanations of every offer.",
        other_persona="Here are colourful comparison tables of the offers.",
        contradiction="I will write a flowing essay instead.",
    )
    assert validate(spec, good, kinds) is None
    leaky = good.model_copy(
        update={"outdated": "Here are short bullet points, and long detailed explanations."}
    )
    assert validate(spec, leaky, kinds) == "probe_outdated_agrees_with_truth"
    ungrounded = good.model_copy(update={"correct": "Sure, here you go."})
    assert validate(spec, ungrounded, kinds) == "probe_correct_not_grounded"
    same = good.model_copy(update={"contradiction": good.correct})
    assert validate(spec, same, kinds) == "probe_options_not_distinct"


def test_history_caps_and_pads(version: Path) -> None:
    rows = read_records(version / "dataset", DatasetRow)
    pid = rows[0].persona_id
    mine = [r for r in rows if r.persona_id == pid]
    last = max(r.session_index for r in mine)
    full = history(mine, last)
    assert len(full) == 2 * len(mine) and full[0]["role"] == "user" and full[-1]["role"] == "assistant"
    keep = [min(r.session_index for r in mine)]
    capped = history(mine, last, context_tokens=64, keep=keep)
    assert mine[0].personalized_query in [m["content"] for m in capped]  # evidence survives the cap
    others = [r for r in rows if r.persona_id != pid]
    padded = history(mine, last, context_tokens=message_tokens(full) + 400, filler=others)
    assert message_tokens(padded) >= message_tokens(full) + 300 and padded[-len(full) :] == full


def test_pick_letter_reads_the_final_answer() -> None:
    assert pick_letter("I think (b) fits.<final_answer>(c)") == 2
    assert pick_letter("(a) or (b)") is None and pick_letter("no idea") is None


def test_evaluate_writes_results_with_an_oracle_at_one(version: Path) -> None:
    out = version.parent.parent
    with FakeOpenAI(responder=lambda body: "Let me think. <final_answer>(b)") as fake:
        cfg = EvalConfig(dataset="pm", llm=LLMConfig(model="fake-model", base_url=fake.base_url), run="t")
        run_dir = Path(asyncio.run(evaluate_dataset(cfg, out=str(out))))
        calls = fake.stats.chat_ok
        assert Path(asyncio.run(evaluate_dataset(cfg, out=str(out)))) == run_dir  # resumes: no new calls
        assert fake.stats.chat_ok == calls
    results = pl.read_parquet(run_dir / "results" / "*.parquet")
    n = len(read_records(version / "probes", ProbeItem))
    assert len(results) == 3 * n
    acc = dict(results.group_by("model").agg(pl.col("correct").mean()).iter_rows())
    assert acc["oracle"] == 1.0 and acc["random"] < 0.6
    picked_b = results.filter(pl.col("model") == "fake-model")
    assert (picked_b["predicted"] == 1).all()
    assert acc["fake-model"] == pytest.approx((picked_b["answer"] == 1).mean())
    summary = (run_dir / "summary.md").read_text()
    assert "oracle" in summary and "distance (sessions)" in summary and "context (tokens)" in summary


def test_open_mode_is_judged_against_the_key_and_plotted(version: Path, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from personaloom.explore import figures, open_version

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
