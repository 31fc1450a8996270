"""Reference agent pieces without Prefect.

Turn cap, cadence, protected Demographics, tools, parsers, metrics, VARS.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pytest

from personaloom.agent.agents import LearnedAgent, agent_calls, make_agent
from personaloom.agent.calls import Caller
from personaloom.agent.chatbot import CHATBOT, AgentContext, Chatbot, ChatJob
from personaloom.agent.judge import (
    JUDGE_RATING,
    JUDGE_RATING_REFERENCE,
    JUDGE_SIMILARITY,
    Judge,
    RateJob,
    SimilarityJob,
    pair_score,
    parse_rating,
    parse_winner,
)
from personaloom.agent.loop import World, replay_user, run_session
from personaloom.agent.memory import HashingEmbedder
from personaloom.agent.metrics import (
    changes_tracked,
    field_similarity,
    position_groups,
    revealed_held,
    revealed_to_agent,
    summarize,
    summarize_pairs,
    summary_markdown,
    text_similarity,
)
from personaloom.agent.persona import flatten, golden_at, initial_persona, persona_lines
from personaloom.agent.persona_agent import (
    INITIAL_PERSONA,
    MEMORY_SUMMARY,
    PERSONA_AGENT_FEEDBACK,
    PERSONA_AGENT_REWRITE,
    FeedbackJob,
    RewriteJob,
    SummaryJob,
    episode_of,
)
from personaloom.agent.sessions import Message, SessionLog
from personaloom.agent.tools import TOOL_EXECUTOR, ToolCall, ToolJob, parse_tool_calls, strip_tool_calls
from personaloom.agent.updater import FieldUpdate, PersonaUpdater, apply_update, update_due
from personaloom.agent.user_simulator import FALLBACK_FOLLOW_UP, UserSimulator, parse_verdict
from personaloom.llm.calls import by_name
from personaloom.llm.client import LLM, LLMResult
from personaloom.llm.prompts import PromptLibrary
from personaloom.paths import PROMPTS_DIR
from personaloom.schemas.config import LLMConfig
from personaloom.schemas.records import ApiArgument, ApiSpec, DatasetRow, Persona, PreferenceChange
from personaloom.schemas.replay import PairwiseRow, ReplayConfig
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.samples import sample_records
from personaloom.testing.fake_openai import FakeOpenAI, call_of


def persona() -> Persona:
    return Persona.model_validate(
        {
            "Demographics": {
                "Name": "Ana",
                "Age": 34,
                "Gender": "female",
                "Nationality": "Portuguese",
                "Language": ["Portuguese", "English"],
                "Career_Information": "nurse in Lisbon",
            },
            "Personality": {
                "Extraversion_or_Introversion": "Introversion",
                "Sensing_or_Intuition": "Sensing",
                "Thinking_or_Feeling": "Feeling",
                "Judging_or_Perceiving": "Judging",
                "Values_and_Interests": ["gardening", "jazz"],
            },
            "Pattern": {
                "Behavior_Engagement_Pattern": "evening sessions",
                "Usage_Pattern": "weekly planning",
                "Emotion_Pattern": "calm",
                "Purchase_Pattern": "budget conscious",
            },
            "Preference": {
                "Preferred_Styles": "warm and direct",
                "Preferred_Formats": "short bullet lists",
                "Preferred_Workflows": "plan first then act",
            },
            "Communication": {
                "formality": "casual",
                "verbosity": "brief",
                "proactivity": "asks before acting",
                "domain_vocabulary": ["triage", "shift"],
                "emotional_tone": "friendly",
            },
            "Changes": [
                {
                    "date": "2024-03-01",
                    "effective_session": 2,
                    "field": "Preference.Preferred_Formats",
                    "before": "short bullet lists",
                    "after": "detailed tables",
                    "reason": "new job",
                },
            ],
        }
    )


API = ApiSpec(
    name="find_recipe",
    description="search recipes",
    arguments=[ApiArgument(name="query", type="string", description="what to cook", required=True)],
)


def row(index: int = 0, revealed: list[str] | None = None) -> DatasetRow:
    p = persona()
    return DatasetRow(
        persona_id="p1",
        session_index=index,
        timestamp=datetime(2024, 1, 1 + index, tzinfo=UTC),
        scene_id=f"s{index}",
        query_id=f"q{index}",
        kind="common",
        title="Dinner plan",
        description="plan a dinner",
        expected_response="a recipe list",
        context="weeknight",
        apis=[API],
        revisits=None,
        personalized_query="q",
        neutralized_query="Suggest a dinner recipe.",
        revealed_fields=revealed or [],
        persona=p,
        active_changes=[c for c in p.Changes if c.effective_session <= index],
        fallback_fields=[],
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _system(body: dict) -> str:
    return body["messages"][0]["content"]


def _user(body: dict) -> str:
    return body["messages"][-1]["content"]


async def with_llm(fake: FakeOpenAI, fn: Any) -> Any:
    llm = LLM(
        LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=4, max_retries=0),
        base_url=fake.base_url,
        api_key="sk-test",
        cache=None,
    )
    try:
        return await fn(llm)
    finally:
        await llm.aclose()


# ---------------------------------------------------------------- the declared calls

FAILED: LLMResult[Any] = LLMResult(None, "garbled", error="invalid JSON")


def test_every_agent_template_is_one_declared_call_that_renders_its_sample() -> None:
    calls = agent_calls()
    templates = {f"agent/{p.stem}" for p in (PROMPTS_DIR / "default" / "agent").glob("*.j2")}
    assert set(by_name(calls)) == templates  # by_name raises on a template declared twice
    for prompt_set in ("default", "small"):
        PromptLibrary(prompt_set=prompt_set).check(calls)  # templates use only the declared variables
    samples, prompts = sample_records(load_catalogue()), PromptLibrary()
    for call in calls:
        rendered = prompts.render(call.name, **call.variables_for(call.sample(samples)))
        assert rendered.messages[-1]["role"] == "user", call.name
        assert isinstance(call.max_tokens, int)
        # judges grade at temperature 0; every other call (the user simulator too) at the run's
        assert call.temperature == (0.0 if call.role == "judge" else None), call.name
    roles = {c.name.removeprefix("agent/"): c.role for c in calls}
    assert roles == {
        "chatbot": "chatbot",
        "tool_executor": "tool",
        "user_judge": "simulator",
        "judge_rating": "judge",
        "judge_rating_reference": "judge",
        "judge_similarity": "judge",
        "judge_pairwise": "judge",
        "persona_update": "memory",
        "persona_agent_feedback": "memory",
        "persona_agent_rewrite": "memory",
        "memory_summary": "memory",
        "vars_extract": "memory",
    }


def test_failed_answers_fall_back_in_build() -> None:
    """What each call keeps when the model's answer is unusable (no exception reaches the loop)."""
    assert PERSONA_AGENT_REWRITE.build(RewriteJob(INITIAL_PERSONA, []), FAILED) == INITIAL_PERSONA
    assert PERSONA_AGENT_REWRITE.build(RewriteJob("old", []), LLMResult(" new \n", " new \n")) == "new"
    assert MEMORY_SUMMARY.build(SummaryJob("- likes jazz", []), FAILED) == "- likes jazz"
    assert MEMORY_SUMMARY.build(SummaryJob(None, []), LLMResult(" - brief \n", " - brief \n")) == "- brief"
    log = SessionLog(3, "Dinner plan", "q", [Message("user", "q", 1)])
    job = FeedbackJob(INITIAL_PERSONA, episode_of(log, row(3)), "draft")
    assert PERSONA_AGENT_FEEDBACK.build(job, FAILED) == {
        "index": 3,
        "title": "Dinner plan",
        "feedback": "",
    }
    job = ToolJob(API, ToolCall("find_recipe", {"query": "x"}), "")
    assert TOOL_EXECUTOR.build(job, FAILED) == ("ERROR: the service did not answer", False)
    assert TOOL_EXECUTOR.build(job, LLMResult(" {} ", " {} ")) == ("{}", True)
    assert CHATBOT.build(ChatJob(AgentContext(), [], False, []), FAILED) == ""


def test_caller_accounts_each_call_under_its_role_key() -> None:
    def responder(body: dict) -> str | None:
        return "<Satisfied>" if call_of(body) == "agent/user_judge" else None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> tuple[Any, dict[str, int]]:
            caller = Caller(llm, "golden", "p1")
            log = SessionLog(0, "t", "q", [Message("user", "q", 1)])
            verdict = await UserSimulator(caller).judge(row(), log, turns_left=2)
            await Chatbot(caller, 0).draft(AgentContext(), "q", role="align")
            return verdict, {k: u.calls for k, u in llm.usage.items()}

        verdict, calls = run(with_llm(fake, go))
    assert verdict.satisfied
    assert calls == {"user|golden|p1": 1, "align|golden|p1": 1}


# ---------------------------------------------------------------- the session loop


def test_never_more_than_three_user_turns() -> None:
    """A user who is never satisfied still gets exactly 3 utterances; the third follow-up is not sent."""

    def responder(body: dict) -> str | None:
        return "<Continue> Shorter please." if call_of(body) == "agent/user_judge" else None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> tuple[SessionLog, int]:
            caller = Caller(llm, "none", "p1")
            world = World(caller, Chatbot(caller, 2), UserSimulator(caller), Judge(caller))
            return await run_session(AgentContext(), row(), world, max_user_turns=3)

        log, malformed = run(with_llm(fake, go))
    users = [m for m in log.messages if m.role == "user"]
    assert [m.content for m in users] == ["Suggest a dinner recipe.", "Shorter please.", "Shorter please."]
    assert log.user_turns == 3 and not log.satisfied and malformed == 0
    assert sum(m.role == "assistant" for m in log.messages) == 3
    with pytest.raises(ValueError):
        ReplayConfig(dataset="d", max_user_turns=4)


def test_satisfied_stops_the_session() -> None:
    def responder(body: dict) -> str | None:
        if call_of(body) == "agent/user_judge":
            return "<Satisfied>" if _user(body).count("ASSISTANT:") >= 2 else "<Continue> Add prices."
        return None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> SessionLog:
            caller = Caller(llm, "none", "p1")
            world = World(caller, Chatbot(caller, 0), UserSimulator(caller), Judge(caller))
            return (await run_session(AgentContext(), row(), world, 3))[0]

        log = run(with_llm(fake, go))
    assert log.satisfied and log.user_turns == 2 and log.follow_ups == ["Add prices."]


# ---------------------------------------------------------------- update cadence and protected fields


def test_update_cadence() -> None:
    assert [p for p in range(1, 8) if update_due(p, 3, 7)] == [3, 6, 7]
    assert [p for p in range(1, 7) if update_due(p, 3, 6)] == [3, 6]
    assert [p for p in range(1, 5) if update_due(p, 1, 4)] == [1, 2, 3, 4]
    assert [p for p in range(1, 3) if update_due(p, 5, 2)] == [2]


def test_learned_agent_updates_on_cadence_from_the_last_k_sessions() -> None:
    seen: list[list[int]] = []

    def responder(body: dict) -> str | None:
        if call_of(body) == "agent/persona_update":
            seen.append([int(x) for x in __import__("re").findall(r"Session (\d+) —", _user(body))])
            return json.dumps({"updates": []})
        return None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> list[int]:
            agent = make_agent(
                "learned-k2",
                Caller(llm, "learned-k2", "p1"),
                ReplayConfig(dataset="d", ks=[2]),
                row(),
                5,
                HashingEmbedder(),
            )
            assert isinstance(agent, LearnedAgent)
            updated = []
            for pos in range(1, 6):
                log = SessionLog(pos - 1, "t", "q", [Message("user", "q", 1)])
                if await agent.observe(log, pos) is not None:
                    updated.append(pos)
            return updated

        updated = run(with_llm(fake, go))
    assert updated == [2, 4, 5]
    assert seen == [[0, 1], [2, 3], [3, 4]]  # each update reads the last k sessions only


def test_persona_learning_gets_no_retrieved_sessions_the_rag_rows_do() -> None:
    """Table 1: Persona Learning (learned-kK) prompts with the learned persona alone; Conversations RAG with
    retrieved sessions alone; learned-rag-kK, ours, with both."""
    systems: list[str] = []

    def responder(body: dict) -> str | None:
        system = _system(body)
        if call_of(body) == "agent/chatbot":
            systems.append(system)
            return "Here is a plan in bullet lists."
        if call_of(body) == "agent/user_judge":
            return "<Satisfied>"
        if call_of(body) == "agent/persona_update":
            update = {"field": "Preference.Preferred_Formats", "value": "bullet lists", "evidence": "x"}
            return json.dumps({"updates": [update]})
        return None

    seen: dict[str, list[str]] = {}
    cfg = ReplayConfig(dataset="d", agents=["learned", "learned-rag", "rag"], ks=[1], judge=False)
    rows = [row(0), row(1), row(2)]
    with FakeOpenAI(responder=responder) as fake:
        for agent in ("learned-k1", "learned-rag-k1", "rag"):
            systems.clear()
            run(with_llm(fake, lambda llm, a=agent: replay_user(rows, a, llm, cfg, HashingEmbedder())))
            seen[agent] = list(systems)
    retrieved = {a: ["Relevant earlier sessions" in s for s in ss] for a, ss in seen.items()}
    assert retrieved == {
        "learned-k1": [False, False, False],  # persona learning: never a retrieved session
        "learned-rag-k1": [False, True, True],
        "rag": [False, True, True],
    }
    learned = {a: ["Preference.Preferred_Formats: bullet lists" in s for s in ss] for a, ss in seen.items()}
    assert learned == {
        "learned-k1": [False, True, True],
        "learned-rag-k1": [False, True, True],
        "rag": [False, False, False],
    }
    assert ReplayConfig(dataset="d", agents=["learned", "learned-rag"], ks=[3, 1]).agent_names() == [
        "learned-k1",
        "learned-k3",
        "learned-rag-k1",
        "learned-rag-k3",
    ]


def test_demographics_are_never_updated() -> None:
    start = initial_persona(row())
    new, changed = apply_update(
        start,
        [
            FieldUpdate(field="Demographics.Age", value="99"),
            FieldUpdate(field="Demographics.Career_Information", value="astronaut"),
            FieldUpdate(field="Preference.Preferred_Formats", value="tables"),
            FieldUpdate(field="Pattern.Usage_Pattern", value="   "),
        ],
    )
    assert changed == ["Preference.Preferred_Formats"]
    assert new["Demographics.Age"] == "34" and new["Demographics.Career_Information"] == "nurse in Lisbon"
    assert start["Preference.Preferred_Formats"] == ""  # the input is not mutated

    def responder(body: dict) -> str | None:
        if call_of(body) == "agent/persona_update":
            return json.dumps(
                {
                    "updates": [
                        {"field": "Demographics.Age", "value": "12", "evidence": "x"},
                        {"field": "Preference.Preferred_Styles", "value": "playful", "evidence": "y"},
                    ]
                }
            )
        return None

    with FakeOpenAI(responder=responder) as fake:
        new2, changed2 = run(
            with_llm(fake, lambda llm: PersonaUpdater(Caller(llm, "a", "p1")).update(start, []))
        )
    assert changed2 == ["Preference.Preferred_Styles"] and new2["Demographics.Age"] == "34"


def test_failed_update_keeps_the_persona() -> None:
    start = {**initial_persona(row()), "Preference.Preferred_Styles": "warm"}
    with FakeOpenAI(
        responder=lambda body: "not json at all" if call_of(body) == "agent/persona_update" else None
    ) as fake:
        new, changed = run(
            with_llm(fake, lambda llm: PersonaUpdater(Caller(llm, "a", "p1")).update(start, []))
        )
    assert new == start and changed == []


# ---------------------------------------------------------------- tools


def test_tool_call_round_trip() -> None:
    def responder(body: dict) -> str | None:
        user = _user(body)
        if call_of(body) == "agent/tool_executor":
            assert '"query": "bacalhau"' in user
            return '{"recipes": ["RESULT-42"]}'
        if call_of(body) == "agent/chatbot":
            if "API RESULT" in user:
                return "Try this: RESULT-42."
            return (
                'Let me look.\n<tool_call>{"name": "find_recipe", '
                '"arguments": {"query": "bacalhau"}}</tool_call>'
            )
        return None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> SessionLog:
            log = SessionLog(0, "t", "q", [Message("user", "Suggest a dinner recipe.", 1)])
            await Chatbot(Caller(llm, "none", "p1"), max_tool_rounds=2).respond(AgentContext(), row(), log, 1)
            return log

        log = run(with_llm(fake, go))
        chat_calls = fake.stats.by_path["/v1/chat/completions"]
    assert [m.role for m in log.messages] == ["user", "tool_call", "tool_result", "assistant"]
    assert (
        log.messages[2].content == '{"recipes": ["RESULT-42"]}' and log.messages[2].tool_name == "find_recipe"
    )
    assert log.messages[3].content == "Try this: RESULT-42."
    assert chat_calls == 3  # chatbot, executor, chatbot


def test_tool_rounds_are_bounded() -> None:
    """A chatbot that keeps calling tools is cut off after max_tool_rounds and must answer.

    Markup is stripped.
    """
    always = '<tool_call>{"name": "find_recipe", "arguments": {"query": "x"}}</tool_call> done'
    with FakeOpenAI(responder=lambda body: always if call_of(body) == "agent/chatbot" else "ok") as fake:

        async def go(llm: LLM) -> SessionLog:
            log = SessionLog(0, "t", "q", [Message("user", "hi", 1)])
            await Chatbot(Caller(llm, "none", "p1"), max_tool_rounds=2).respond(AgentContext(), row(), log, 1)
            return log

        log = run(with_llm(fake, go))
    assert [m.role for m in log.messages].count("tool_call") == 2
    assert log.messages[-1].role == "assistant" and log.messages[-1].content == "done"


def test_tool_call_parser() -> None:
    text = (
        'a <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\n'
        '<tool_call>{"name": "g", "arguments": "{\\"y\\": 2}"}</tool_call>'
        "<tool_call>{not json}</tool_call> <tool_call>[1]</tool_call> b"
    )
    parsed = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("f", {"x": 1}), ("g", {"y": 2})]
    assert len(parsed.errors) == 2 and "not valid JSON" in parsed.errors[0]
    assert strip_tool_calls(text) == "a \n  b"
    assert strip_tool_calls('answer <tool_call>{"name": "f", "argu') == "answer"  # cut off mid-call


def test_unknown_api_and_missing_argument_are_errors_without_llm_call() -> None:
    from personaloom.agent.tools import ToolCall, ToolExecutor

    with FakeOpenAI() as fake:

        async def go(llm: LLM) -> list[tuple[str, bool]]:
            ex = ToolExecutor(Caller(llm, "none", "p1"))
            return [
                await ex.run(ToolCall("nope"), [API], ""),
                await ex.run(ToolCall("find_recipe", {}), [API], ""),
            ]

        results = run(with_llm(fake, go))
        assert fake.stats.by_path.get("/v1/chat/completions", 0) == 0
    assert results[0] == ("ERROR: unknown API 'nope'; available: find_recipe", False)
    assert results[1] == ("ERROR: find_recipe: missing required argument(s) query", False)


# ---------------------------------------------------------------- parsing the user and the judge


@pytest.mark.parametrize(
    ("text", "satisfied", "follow_up", "malformed"),
    [
        ("<Satisfied>", True, "", False),
        ("  <satisfied> thanks!", True, "", False),
        ("<Continue> Can you add prices?", False, "Can you add prices?", False),
        ("<Continue>Cheaper.</Continue>", False, "Cheaper.", False),
        ("<Continue>", False, FALLBACK_FOLLOW_UP, True),
        ("I want it shorter.", False, "I want it shorter.", True),
        ("", False, FALLBACK_FOLLOW_UP, True),
        ("<Continue> not yet <Satisfied>", False, "not yet", False),  # the first tag decides
    ],
)
def test_parse_verdict(text: str, satisfied: bool, follow_up: str, malformed: bool) -> None:
    v = parse_verdict(text)
    assert (v.satisfied, v.follow_up, v.malformed) == (satisfied, follow_up, malformed)


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        ("<analysis>good</analysis><rating>7; 8</rating>", (7.0, 8.0)),
        ("<analysis>x</analysis>\n<rating> 9.5 ; 3 </rating>", (9.5, 3.0)),
        ("<rating>solution_score: 6; persona_score: 4</rating>", (6.0, 4.0)),
        ("<rating>7/10; 8/10</rating>", (7.0, 8.0)),
        ("<rating>5, 2", (5.0, 2.0)),  # no closing tag
        ("format <rating>solution_score; persona_score</rating> … <rating>3;1</rating>", (3.0, 1.0)),
        ("<rating>12; 5</rating>", (None, 5.0)),  # out of range → null, the other kept
        ("<rating>7</rating>", (None, None)),
        ("I rate it 7 and 8.", (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_rating(text: str, scores: tuple) -> None:
    r = parse_rating(text)
    assert (r.solution, r.persona) == scores and r.raw == text


# AI Persona (arXiv 2412.13103), appendix "Prompt Template (GPT Evaluation for Personalized Responses,
# English)": the anchors as the paper writes them
PAPER_SOLUTION = {
    10: "The AI assistant fully meets the user’s needs and provides clear, effective, and helpful solutions.",
    7: "The AI assistant partially meets the user’s needs but has certain shortcomings, such as missing "
    "detailed information, API calls, or operational steps.",
    5: "The AI assistant provides some knowledge related to the user’s needs but does not solve the problem.",
    3: "The AI assistant provides knowledge unrelated to the user’s needs or lacks accuracy.",
    0: "The AI assistant provides no relevant solutions or information related to the user’s needs.",
}
PAPER_PERSONALIZATION = {
    10: "The AI assistant fully understands the user’s persona and provides completely personalized "
    "responses and suggestions based on the user’s characteristics and preferences.",
    7: "The AI assistant shows partial understanding of the user’s persona in its response but has room "
    "for improvement.",
    5: "The AI assistant shows no clear understanding of the user’s persona and merely performs generic Q&A.",
    0: "The AI assistant misunderstands the user’s persona and provides incorrect responses that do not "
    "align with the user’s intent.",
}


def _rendered(call: Any, job: Any, prompt_set: str = "default") -> tuple[str, str]:
    messages = PromptLibrary(prompt_set=prompt_set).render(call.name, **call.variables_for(job)).messages
    return messages[0]["content"], messages[-1]["content"]


@pytest.mark.parametrize("prompt_set", ["default", "small"])
def test_rating_prompt_is_the_papers_word_for_word(prompt_set: str) -> None:
    """Solution 10/7/5/3/0, personalization 10/7/5/0 with 5 = generic Q&A; no reference answer shown."""
    row2 = row(2).model_copy(update={"expected_response": "REFERENCE-ANSWER-XYZ"})
    system, user = _rendered(JUDGE_RATING, RateJob(row2, "an answer"), prompt_set)
    solution, _, personal = system.partition("2. Personalization Score")
    for score, anchor in PAPER_SOLUTION.items():
        assert f"{score}: {anchor}" in solution.splitlines()
    for score, anchor in PAPER_PERSONALIZATION.items():
        assert f"{score}: {anchor}" in personal.splitlines()
    assert not any(line.startswith("3:") for line in personal.splitlines())  # no 3 for personalization
    assert "<rating>\nsolution_score; persona_score\n</rating>" in system
    assert "REFERENCE-ANSWER-XYZ" not in system + user and "reference answer" not in (system + user).lower()
    assert "Preference.Preferred_Formats: detailed tables" in user  # the golden persona in force at session 2
    assert "User Query: Suggest a dinner recipe." in user and "AI Assistant Response: an answer" in user
    assert JUDGE_RATING.temperature == 0.0
    assert parse_rating("<analysis>\nok\n</analysis>\n<rating>\n7; 5\n</rating>").persona == 5.0


def test_reference_judge_is_an_option_that_shows_the_reference_answer() -> None:
    row2 = row(2).model_copy(update={"expected_response": "REFERENCE-ANSWER-XYZ"})
    _, user = _rendered(JUDGE_RATING_REFERENCE, RateJob(row2, "an answer"))
    assert (
        "Reference answer: REFERENCE-ANSWER-XYZ" in user and "<rating>solution_score; persona_score" in user
    )
    with FakeOpenAI(responder=lambda body: "<rating>6; 4</rating>") as fake:

        async def go(llm: LLM) -> list[str]:
            for mode in ("paper", "reference"):
                await Judge(Caller(llm, "x", "p1"), mode).rate(row2, "answer")
            return [_system(r["body"]) for r in fake.requests]

        systems = run(with_llm(fake, go))
    assert systems[0].startswith("I will now provide you with a conversation") and "impartial" in systems[1]
    assert ReplayConfig(dataset="d").judge_mode == "paper"
    with pytest.raises(ValueError):
        ReplayConfig(dataset="d", judge_mode="lenient")


def test_similarity_prompt_is_the_papers() -> None:
    system, user = _rendered(JUDGE_SIMILARITY, SimilarityJob(persona_lines(initial_persona(row())), row()))
    assert "10: Fully consistent in semantics, coherent behavior, no ambiguity or deviation." in system
    assert (
        "5: Some fields reflect user characteristics, but overall restoration lacks depth, with many "
        in system
    )
    assert "<rating>\nconsistency_score ; detail_restoration_score\n</rating>" in system
    assert "<ground_truth>" in user and "<learned_truth>" in user and "- Demographics.Age: 34" in user
    sim = JUDGE_SIMILARITY.build(
        SimilarityJob([], row()), LLMResult("<rating>7 ; 3</rating>", "<rating>7 ; 3</rating>")
    )
    assert (sim.consistency, sim.detail, sim.raw) == (7.0, 3.0, None)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("<analysis>x</analysis><winner>1</winner>", "first"),
        ("<winner> Response 2 </winner>", "second"),
        ("<winner>tie</winner>", "tie"),
        ("format <winner>1, 2 or tie</winner> then <winner>2</winner>", "second"),
        ("<winner>both</winner>", None),
        ("I prefer the first.", None),
    ],
)
def test_parse_winner(text: str, verdict: str | None) -> None:
    assert parse_winner(text) == verdict


def test_pairwise_asks_both_orders_and_cancels_position_bias() -> None:
    """A judge that always picks Response 1 gives each agent ½; one that follows the content gives 1 and 0."""
    assert pair_score("first", "second") == 1.0 and pair_score("second", "first") == 0.0
    assert pair_score("first", "first") == 0.5 and pair_score("tie", "first") == 0.25
    assert pair_score(None, "second") == 1.0 and pair_score(None, None) is None

    def always_first(body: dict) -> str:
        return "<winner>1</winner>"

    def likes_tables(body: dict) -> str:
        first = _user(body).split("Response 1:")[1].split("Response 2:")[0]
        return "<winner>1</winner>" if "table" in first else "<winner>2</winner>"

    scores = []
    for responder in (always_first, likes_tables):
        with FakeOpenAI(responder=responder) as fake:
            got = run(
                with_llm(
                    fake, lambda llm: Judge(Caller(llm, "pairwise", "p1")).pair(row(), "a table", "text")
                )
            )
            scores.append(pair_score(*got))
            orders = [_user(r["body"]).split("Response 1: ")[1][:5] for r in fake.requests]
        # both orders asked (concurrently: either may reach the server first)
        assert sorted(o.strip() for o in orders) == ["a tab", "text"]
    assert scores == [0.5, 1.0]


def test_position_groups_and_pair_summary() -> None:
    assert position_groups(32) == [(1, 11), (12, 21), (22, 32)]
    assert position_groups(3) == [(1, 1), (2, 2), (3, 3)] and position_groups(2) == [(1, 1), (2, 2)]

    def pr(position: int, first: str, second: str) -> PairwiseRow:
        return PairwiseRow(
            persona_id="p1",
            session_index=position - 1,
            position=position,
            agent_a="learned-k3",
            agent_b="golden",
            a_first=first,
            a_second=second,
            score_a=pair_score(first, second),  # type: ignore[arg-type]
        )

    rows = [pr(1, "second", "first"), pr(2, "first", "first"), pr(3, "first", "second")]
    (s,) = summarize_pairs(rows, [("learned-k3", "golden")])
    assert (s.sessions, s.win_rate, s.consistent) == (3, 0.5, round(2 / 3, 3))
    assert [(g.positions, g.win_rate) for g in s.groups] == [("1-1", 0.0), ("2-2", 0.5), ("3-3", 1.0)]
    text = summary_markdown("t", [], [s])
    assert "| learned-k3 | golden | 0.50 | 0.00 | 0.50 | 1.00 | 0.67 | 3 |" in text


def test_pairwise_pairs_default_and_validation() -> None:
    cfg = ReplayConfig(dataset="d", agents=["none", "golden", "learned"], ks=[1, 3])
    assert cfg.pairwise_pairs() == [("learned-k1", "golden"), ("learned-k3", "golden")]
    assert ReplayConfig(dataset="d", agents=["none", "learned"]).pairwise_pairs() == []
    assert ReplayConfig(
        dataset="d", agents=["none", "golden"], pairwise=["none:golden"]
    ).pairwise_pairs() == [("none", "golden")]
    assert ReplayConfig(dataset="d", agents=["none", "golden"], pairwise=[]).pairwise_pairs() == []
    for bad in (["vars:golden"], ["golden:golden"], ["none-golden"]):
        with pytest.raises(ValueError):
            ReplayConfig(dataset="d", agents=["none", "golden"], pairwise=bad)


def test_judge_garbage_is_null_not_a_crash() -> None:
    with FakeOpenAI(responder=lambda body: "{{{ <rating> nope") as fake:
        rating = run(with_llm(fake, lambda llm: Judge(Caller(llm, "x", "p1")).rate(row(), "answer")))
        sim = run(
            with_llm(
                fake,
                lambda llm: Judge(Caller(llm, "x", "p1")).similarity(
                    persona_lines(initial_persona(row())), row()
                ),
            )
        )
    assert (
        rating.solution is None
        and rating.persona is None
        and not rating.ok
        and rating.raw == "{{{ <rating> nope"
    )
    assert sim.consistency is None and sim.detail is None and sim.raw


# ---------------------------------------------------------------- metrics on fixed inputs


def test_golden_applies_changes_and_initial_keeps_only_demographics() -> None:
    assert golden_at(row(1))["Preference.Preferred_Formats"] == "short bullet lists"
    assert golden_at(row(2))["Preference.Preferred_Formats"] == "detailed tables"
    start = initial_persona(row())
    assert (
        start["Demographics.Language"] == "Portuguese, English"
        and start["Personality.Values_and_Interests"] == ""
    )


def test_field_similarity_known_values() -> None:
    golden = golden_at(row(0))
    overall, sections = field_similarity(golden, golden)
    assert overall == 1.0 and all(s.score == 1.0 for s in sections)
    start = initial_persona(row())
    overall, sections = field_similarity(start, golden)
    by = {s.section: s.score for s in sections}
    assert overall == 0.0 and by["Demographics"] == 1.0 and by["Preference"] == 0.0
    # one of three Preference fields exactly right, one word-order swap (token_sort: exact), one empty
    learned = {
        **start,
        "Preference.Preferred_Styles": "direct and warm",
        "Preference.Preferred_Formats": "short bullet lists",
    }
    overall, sections = field_similarity(learned, golden)
    assert {s.section: s.score for s in sections}["Preference"] == pytest.approx(2 / 3, abs=1e-4)
    assert overall == pytest.approx((2 / 3) / 4, abs=1e-4)  # 4 sections other than Demographics
    assert text_similarity("", "") == 1.0 and text_similarity("a", "") == 0.0


def test_revealed_fields_held() -> None:
    golden = golden_at(row(0))
    start = initial_persona(row())
    learned = {
        **start,
        "Preference.Preferred_Formats": "short bullet lists",
        "Pattern.Usage_Pattern": "zzzz qqqq",
    }
    revealed = {
        "Preference.Preferred_Formats",
        "Pattern.Usage_Pattern",
        "Communication.verbosity",
        "Demographics.Age",
    }
    # Demographics.Age is given at the start, so not counted; Usage_Pattern changed but not toward the truth
    assert revealed_held(start, learned, golden, revealed) == (3, 1)
    assert revealed_held(start, golden, golden, revealed) == (3, 3)
    assert revealed_held(start, start, golden, revealed) == (3, 0)


def test_revealed_to_agent_reads_only_the_user_messages_it_received() -> None:
    log = SessionLog(
        0,
        "t",
        "q",
        [
            Message("user", "I need it before my triage shift.", 1),  # domain_vocabulary
            Message("assistant", "Some gardening and jazz ideas.", 1),  # the agent's own words
            Message("tool_result", "jazz club listings", 1, "find"),
            Message("user", "In Portuguese please.", 2),  # Language and Nationality: given, still found
        ],
    )
    assert revealed_to_agent(log, persona()) == {
        "Communication.domain_vocabulary",
        "Demographics.Language",
        "Demographics.Nationality",
    }


def test_revealed_held_scores_what_the_agent_saw_not_the_generators_intent() -> None:
    """The personalized query (never shown) names gardening; the generator says it reveals formats.

    The agent sees only the neutralized opening and the simulated follow-ups: one of them says
    'triage' in session 0, so domain_vocabulary is the one field revealed, and stays revealed.
    """
    intent = ["Preference.Preferred_Formats", "Personality.Values_and_Interests"]
    rows = [
        row(0, intent).model_copy(update={"personalized_query": "As a keen gardening fan, what can I cook?"}),
        row(1, intent).model_copy(update={"neutralized_query": "Plan my week in Portuguese."}),
    ]

    def responder(body: dict) -> str | None:
        user = _user(body)
        if call_of(body) == "agent/chatbot":
            return "Here is a plan."
        if call_of(body) == "agent/user_judge":
            if "Suggest a dinner recipe" in user and user.count("ASSISTANT:") < 2:
                return "<Continue> Quick please, I have triage at six."
            return "<Satisfied>"
        return None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> dict[str, Any]:
            cfg = ReplayConfig(dataset="d", judge=False)
            return {
                a: (await replay_user(rows, a, llm, cfg, HashingEmbedder())).metrics
                for a in ("golden", "none", "demographics-only")
            }

        metrics = run(with_llm(fake, go))
    golden = metrics["golden"]
    assert [(m.revealed_seen, m.revealed_held, m.revealed_intended) for m in golden] == [(1, 1, 2), (1, 1, 2)]
    assert [(m.revealed_seen, m.revealed_held) for m in metrics["none"]] == [(1, None), (1, None)]
    assert [(m.revealed_seen, m.revealed_held) for m in metrics["demographics-only"]] == [(1, 0), (1, 0)]


def test_interaction_efficiency_per_session_and_agent() -> None:
    """VARS' MultiSessionCollab metrics: success, timeout, user effort (turns, tokens, corrections)."""

    def responder(body: dict) -> str | None:
        user = _user(body)
        if call_of(body) == "agent/chatbot":
            return "Here is a plan."
        if call_of(body) == "agent/user_judge":
            if "Plan my week" in user:  # never satisfied: a timeout after 3 turns
                return "<Continue> No, shorter please."
            return "<Satisfied>"
        return None

    rows = [row(0), row(1).model_copy(update={"neutralized_query": "Plan my week."})]
    with FakeOpenAI(responder=responder) as fake:
        cfg = ReplayConfig(dataset="d", judge=False)
        out = run(with_llm(fake, lambda llm: replay_user(rows, "none", llm, cfg, HashingEmbedder())))
    first, second = out.metrics
    assert (first.satisfied, first.timeout, first.corrections, first.user_tokens) == (True, False, 0, 4)
    # "plan my week" + 2 × "no shorter please" (the third follow-up is never sent)
    assert (second.satisfied, second.timeout, second.corrections, second.user_tokens) == (False, True, 3, 9)
    (r,) = summarize(out.metrics, ["none"])
    assert (r.success, r.first_answer_success, r.timeout, r.utterances) == (0.5, 0.5, 0.5, 2.0)
    assert (r.user_tokens, r.corrections, r.success_per_1k_user_tokens) == (6.5, 1.5, round(1000 / 13, 2))
    text = summary_markdown("t", [r])
    assert (
        "## Interaction efficiency" in text
        and "| none | 0.50 | 0.50 | 0.50 | 2.00 | 6.5 | 1.50 | 76.92 |" in text
    )


def test_change_tracking() -> None:
    changes = row(2).active_changes
    old = {"Preference.Preferred_Formats": "short bullet lists"}
    new = {"Preference.Preferred_Formats": "detailed tables"}
    assert changes_tracked(old, changes) == (1, 0)
    assert changes_tracked(new, changes) == (1, 1)
    assert changes_tracked({}, changes) == (1, 0)
    later = PreferenceChange(
        date=date(2024, 6, 1),
        effective_session=3,
        field="Preference.Preferred_Formats",
        before="detailed tables",
        after="voice notes",
        reason="r",
    )
    assert changes_tracked(new, [*changes, later]) == (1, 0)  # only the newest change per field counts
    demo = PreferenceChange(
        date=date(2024, 6, 1),
        effective_session=1,
        field="Demographics.Career_Information",
        before="nurse",
        after="manager",
        reason="r",
    )
    assert changes_tracked(new, [*changes, demo]) == (1, 1)


def test_flatten_joins_lists() -> None:
    flat = flatten(persona())
    assert flat["Communication.domain_vocabulary"] == "triage, shift" and flat["Demographics.Age"] == "34"


# ---------------------------------------------------------------- demographics-only baseline


def test_demographics_only_agent_knows_demographics_and_never_learns() -> None:
    systems: list[str] = []
    updates: list[str] = []

    def responder(body: dict) -> str | None:
        system, user = _system(body), _user(body)
        if call_of(body) == "agent/chatbot":
            systems.append(system)
            return "Here is a plan."
        if call_of(body) == "agent/user_judge":
            if user.count("ASSISTANT:") < 2:
                return "<Continue> I love gardening; short bullet lists please."
            return "<Satisfied>"
        if call_of(body) == "agent/persona_update" or "rewrite" in system.lower():
            updates.append(system)
        return None

    with FakeOpenAI(responder=responder) as fake:

        async def go(llm: LLM) -> Any:
            cfg = ReplayConfig(dataset="d", agents=["demographics-only"], ks=[1], judge=False)
            return await replay_user(
                [row(0), row(1), row(2)], "demographics-only", llm, cfg, HashingEmbedder()
            )

        out = run(with_llm(fake, go))
    assert len(systems) == 6 and not updates  # two answers per session, no update call ever
    start = initial_persona(row())
    for system in systems:
        assert (
            "Demographics.Age: 34" in system and "Demographics.Career_Information: nurse in Lisbon" in system
        )
        for learned in ("Preference.", "Personality.", "Pattern.", "Communication.", "gardening", "bullet"):
            assert learned not in system  # nothing beyond Demographics, no memory of earlier sessions
    assert all({f.path: f.value for f in s.fields} == start for s in out.snapshots)
    assert len(out.snapshots) == 4 and not any(s.persona_updated for s in out.sessions)
    assert all(m.field_similarity == 0.0 and m.revealed_held == 0 for m in out.metrics)
    assert [m.revealed_seen for m in out.metrics] == [1, 1, 1]  # gardening, said to it every session


# ---------------------------------------------------------------- VARS


def test_hashing_embedder_is_deterministic_and_ranks_overlap() -> None:
    e = HashingEmbedder(128)
    a, b, c = (
        e.embed("vegan dinner recipe"),
        e.embed("a vegan dinner recipe please"),
        e.embed("flight to Oslo"),
    )
    assert np.allclose(a, HashingEmbedder(128).embed("vegan dinner recipe")) and np.linalg.norm(
        a
    ) == pytest.approx(1.0)
    assert a @ b > a @ c
