"""The reference agents against their papers, on hand-computed examples.

PersonaAgent (arXiv 2506.06254): the alignment loop's count (batch × iterations), its textual loss against
the ground-truth response, persona-driven tool choice over Â = A ∪ D. VARS (arXiv 2603.20939): memory cards,
the score s = s₀ + ⟨z_eff, v_m⟩, the REINFORCE step Δz with its baseline and gate.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from personaloom.agent.agents import make_agent
from personaloom.agent.calls import Caller
from personaloom.agent.chatbot import Chatbot
from personaloom.agent.judge import Judge
from personaloom.agent.loop import World, replay_user, run_session
from personaloom.agent.memory import HashingEmbedder
from personaloom.agent.persona_agent import HISTORY_TOOL, INITIAL_PERSONA, PersonaAgent
from personaloom.agent.sessions import Message, SessionLog
from personaloom.agent.user_simulator import UserSimulator
from personaloom.agent.vars import VarsAgent, VarsState, gate, is_global, verdict_reward
from personaloom.llm.client import LLM
from personaloom.schemas.replay import PersonaAgentParams, ReplayConfig, VarsParams
from personaloom.testing.fake_openai import FakeOpenAI, call_of
from tests.test_agent import _system, _user, row, run, with_llm


def rows(n: int) -> list:
    """n sessions of the test persona, each with its own reference answer (the ground truth)."""
    return [
        row(i).model_copy(
            update={"expected_response": f"GROUND-TRUTH-{i}", "neutralized_query": f"Plan dinner number {i}."}
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------- PersonaAgent


class AlignWorld:
    """A scripted world that records PersonaAgent's alignment calls in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []  # (kind, detail)
        self.rewrites = 0

    def __call__(self, body: dict) -> str | None:
        system, user = _system(body), _user(body)
        if system.startswith("You evaluate a personalized AI assistant"):  # the textual loss
            truth = re.search(r"Ground-truth response:\n(.*)", user).group(1)
            persona = re.search(r"Current persona \(system prompt\):\n(.*)", user).group(1)
            self.log.append(("loss", f"{truth} | {persona[:10]}"))
            return f"Closer to {truth}: the user wants short lists."
        if system.startswith("You rewrite the persona"):
            self.rewrites += 1
            self.log.append(("rewrite", str(user.count("- Session "))))
            return f"PERSONA-v{self.rewrites}: short lists for this user."
        if system.startswith("You keep a short semantic memory"):
            self.log.append(("summary", str(user.count("Session "))))
            return "- likes short lists"
        if call_of(body) == "agent/chatbot":
            draft = "You can call these APIs" not in system and "Do not call any more APIs" not in system
            persona = re.search(r"and how you answer\.\n(.*)", system)
            if draft:
                self.log.append(("simulate", persona.group(1)[:10] if persona else "-"))
            return "Here is a plan."
        if call_of(body) == "agent/user_judge":
            return "<Satisfied>"
        return None


def test_persona_agent_alignment_runs_batch_times_iterations_against_the_ground_truth() -> None:
    """Default batch 3, iterations 3, every 3 sessions: after session 3, three rounds of (3 simulations with
    the current persona → 3 textual losses against r^gt → 1 rewrite), each round on the previous round's
    persona; the semantic memory is summarized from the episodes first."""
    world = AlignWorld()
    cfg = ReplayConfig(dataset="d", agents=["persona-agent"], judge=False)
    assert cfg.persona_agent == PersonaAgentParams(batch=3, iterations=3, every=3, top_k=3)
    with FakeOpenAI(responder=world) as fake:

        async def go(llm: LLM) -> Any:
            out = await replay_user(rows(3), "persona-agent", llm, cfg, HashingEmbedder())
            return out, {k: u.calls for k, u in llm.usage.items()}

        out, calls = run(with_llm(fake, go))
    kinds = [k for k, _ in world.log]
    assert kinds == ["summary"] + (["simulate"] * 3 + ["loss"] * 3 + ["rewrite"]) * 3
    assert world.log[0] == ("summary", "3")
    # every loss compares with the session's ground truth, under the persona of its round
    losses = [d for k, d in world.log if k == "loss"]
    assert sorted(losses[:3]) == [f"GROUND-TRUTH-{i} | {INITIAL_PERSONA[:10]}" for i in range(3)]
    assert sorted(losses[3:6]) == [f"GROUND-TRUTH-{i} | PERSONA-v1" for i in range(3)]
    assert sorted(losses[6:]) == [f"GROUND-TRUTH-{i} | PERSONA-v2" for i in range(3)]
    assert [d for k, d in world.log if k == "simulate"][3:6] == ["PERSONA-v1"] * 3  # simulated with the new P
    assert [d for k, d in world.log if k == "rewrite"] == ["3", "3", "3"]  # one feedback item per interaction
    assert calls["align|persona-agent|p1"] == 3 * (3 + 3 + 1) and calls["memory|persona-agent|p1"] == 1
    snap = out.snapshots[-1]
    fields = {f.path: f.value for f in snap.fields}
    assert fields["PersonaAgent.persona_prompt"] == "PERSONA-v3: short lists for this user."
    assert snap.changed == ["PersonaAgent.persona_prompt"] and fields["Demographics.Age"] == "34"
    assert [s.persona_updated for s in out.sessions] == [False, False, True]


def test_persona_agent_iterations_and_batch_are_settings() -> None:
    world = AlignWorld()
    params = PersonaAgentParams(batch=2, iterations=2, every=2)
    cfg = ReplayConfig(dataset="d", agents=["persona-agent"], judge=False, persona_agent=params)
    with FakeOpenAI(responder=world) as fake:
        run(with_llm(fake, lambda llm: replay_user(rows(4), "persona-agent", llm, cfg, HashingEmbedder())))
    kinds = [k for k, _ in world.log]
    one = ["summary"] + (["simulate"] * 2 + ["loss"] * 2 + ["rewrite"]) * 2
    assert kinds == one + one  # after sessions 2 and 4, over the latest 2 each time
    later = [d for k, d in world.log if k == "loss"][4:]
    assert sorted(d.split(" | ")[0] for d in later[:2]) == ["GROUND-TRUTH-2", "GROUND-TRUTH-3"]


def test_persona_agent_persona_prompt_drives_its_tools_and_episodic_memory() -> None:
    """The persona prompt sits in the chatbot's system prompt with the scene's APIs and the agent's own
    search_user_history; a call of that tool is answered from episodic memory (no Tool Executor); the top-K
    episodes by query similarity enter the prompt."""
    systems: list[str] = []
    executor: list[str] = []

    def responder(body: dict) -> str | None:
        system, user = _system(body), _user(body)
        if call_of(body) == "agent/tool_executor":
            executor.append(user)
            return "{}"
        if call_of(body) == "agent/chatbot" and "You can call these APIs" in system:
            systems.append(system)
            if "API RESULT" not in user:
                call = {"name": HISTORY_TOOL, "arguments": {"query": "dinner"}}
                return f"<tool_call>{json.dumps(call)}</tool_call>"
            return "Plan: " + user.split("API RESULT (search_user_history): ")[1].split("\n")[0]
        if call_of(body) == "agent/user_judge":
            return "<Satisfied>"
        if call_of(body) == "agent/persona_agent_rewrite":
            return "PERSONA-NEW"
        return None

    cfg = ReplayConfig(dataset="d", agents=["persona-agent"], judge=False)
    with FakeOpenAI(responder=responder) as fake:
        out = run(
            with_llm(fake, lambda llm: replay_user(rows(4), "persona-agent", llm, cfg, HashingEmbedder()))
        )
    assert not executor  # the personal tool never reaches the Tool Executor
    assert all(f"- {HISTORY_TOOL}: search this user's earlier sessions" in s for s in systems)
    assert all("- find_recipe: search recipes" in s for s in systems)  # A and D together
    assert INITIAL_PERSONA in systems[0] and "PERSONA-NEW" in systems[-1]  # the aligned persona at session 4
    assert out.sessions[0].first_answer == "Plan: no earlier session matches"
    assert out.sessions[1].first_answer == "Plan: [session 0: Dinner plan]"
    assert "Relevant earlier sessions" not in systems[0] and systems[-1].count("---\n[session ") == 3  # top 3
    assert all(s.tool_calls == 1 and s.tool_errors == 0 for s in out.sessions)


def test_persona_agent_holds_no_flat_persona_but_is_judged_on_its_prompt() -> None:
    cfg = ReplayConfig(dataset="d", agents=["persona-agent"])
    with FakeOpenAI() as fake:

        async def go(llm: LLM) -> Any:
            agent = make_agent(
                "persona-agent", Caller(llm, "persona-agent", "p1"), cfg, row(), 3, HashingEmbedder()
            )
            assert isinstance(agent, PersonaAgent)
            log = SessionLog(0, "t", "q", [Message("user", "q", 1), Message("assistant", "a", 1)], True, 1)
            assert await agent.observe(log, 1, row()) is None  # not due yet: no call
            return agent

        agent = run(with_llm(fake, go))
        assert fake.stats.by_path.get("/v1/chat/completions", 0) == 0
    assert agent.persona is None
    lines = {f["path"]: f["value"] for f in agent.learned_lines()}
    assert lines["PersonaAgent.persona_prompt"] == INITIAL_PERSONA and lines["Demographics.Age"] == "34"
    assert agent.episodes[0].ground_truth == "a recipe list" and agent.episodes[0].feedback == []


# ---------------------------------------------------------------- VARS


def test_vars_defaults_are_the_papers_table_10_to_12() -> None:
    p = VarsParams()
    assert (p.eta_long, p.eta_short, p.decay, p.baseline_alpha, p.tau) == (1e-2, 5e-2, 0.1, 0.05, 1.0)
    assert (p.beta_long, p.beta_short, p.top_m, p.dense_top_k, p.item_dim) == (2.0, 5.0, 3, 64, 256)
    assert (p.mix, p.global_cap) == ("beta", 10)


def test_reinforce_step_delta_z_baseline_and_gate_by_hand() -> None:
    """Two cards v1 = (1, 0), v2 = (0, 1), base scores s0 = (0.5, 0.2), J = 1, the paper's η, λ, α, τ, β.

    Turn 1: z = 0, so s = s0 and π = softmax(0.5, 0.2) = (0.574443, 0.425557); v1 is chosen; the user is
    satisfied (r̂ = +1) and the card is relevant (s_max 0.5 > 0.4): g = 0.6, A = 0.6·(1 - 0) = 0.6,
    v_chosen - μ = (0.425557, -0.425557), Δz_L = 0.01·0.6·that = (0.0025533, -0.0025533),
    Δz_S = 0.05·0.6·that = (0.0127667, -0.0127667), z_S = 0.9·0 + Δz_S, b = 0.95·0 + 0.05·1 = 0.05.
    Turn 2: z_eff = 2·z_L + 5·z_S = (0.0689403, -0.0689403), s = (0.5689403, 0.1310597),
    π = (0.607754, 0.392246); v1 again; the user asks for more (r̂ = -1) and nothing similar was retrieved
    (s_max 0.1 < 0.2): g = 0.9, A = 0.9·(-1 - 0.05) = -0.945, grad = -0.945·(0.392246, -0.392246),
    z_L = (0.0025533 - 0.0037067) = -0.0011534, z_S = 0.9·0.0127667 + 0.05·grad = -0.0070436,
    b = 0.95·0.05 - 0.05 = -0.0025."""
    s = VarsState(VarsParams(top_m=1), 2)
    items, base = np.eye(2), np.array([0.5, 0.2])
    scores = s.scores(base, items)
    probs = s.policy(scores)
    assert scores.tolist() == [0.5, 0.2] and probs.tolist() == pytest.approx([0.574443, 0.425557], abs=1e-6)
    chosen = s.select(scores)
    assert chosen == [0] and gate(verdict_reward(True), 0.5) == 0.6
    step = s.update(items, chosen, probs, reward=1.0, gate=0.6)
    assert step.advantage == pytest.approx(0.6)
    assert step.delta_long.tolist() == pytest.approx([0.0025533, -0.0025533], abs=1e-7)
    assert step.delta_short.tolist() == pytest.approx([0.0127667, -0.0127667], abs=1e-7)
    assert s.z_short.tolist() == pytest.approx(step.delta_short.tolist()) and s.baseline == pytest.approx(
        0.05
    )

    assert s.z_eff.tolist() == pytest.approx([0.0689403, -0.0689403], abs=1e-7)
    scores = s.scores(base, items)
    probs = s.policy(scores)
    assert scores.tolist() == pytest.approx([0.5689403, 0.1310597], abs=1e-7)
    assert probs.tolist() == pytest.approx([0.607754, 0.392246], abs=1e-6)
    assert gate(verdict_reward(False), 0.1) == 0.9
    step = s.update(items, s.select(scores), probs, reward=-1.0, gate=0.9)
    assert step.advantage == pytest.approx(-0.945)
    assert s.z_long.tolist() == pytest.approx([-0.0011534, 0.0011534], abs=1e-7)
    assert s.z_short.tolist() == pytest.approx([-0.0070436, 0.0070436], abs=1e-7)
    assert s.baseline == pytest.approx(-0.0025)

    # no chosen card, or an advantage of 0: no step, the baseline stays
    assert s.update(items, [], probs, reward=1.0, gate=0.6) is None
    s.baseline = 1.0
    assert s.update(items, [0], probs, reward=1.0, gate=0.6) is None and s.baseline == 1.0
    s.new_session()
    assert s.z_short.tolist() == [0.0, 0.0] and s.z_long.tolist() != [0.0, 0.0]  # z_S resets, z_L persists


def test_gate_is_table_13() -> None:
    assert gate(-1.0, 0.1) == 0.9  # retrieval failure
    assert gate(-1.0, 0.6) == 0.2  # LLM failure
    assert gate(-1.0, 0.3) == 0.5  # in between: neutral
    assert gate(1.0, 0.41) == 0.6 and gate(1.0, 0.4) == 0.3  # retrieval helped / no retrieval help
    assert gate(0.0, 0.9) == 0.5


def test_alpha_mix_is_the_option() -> None:
    s = VarsState(VarsParams(mix="alpha", mix_alpha=0.25), 2)
    s.z_long, s.z_short = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert s.z_eff.tolist() == [0.25, 0.75]
    s.params = VarsParams()
    assert s.z_eff.tolist() == [2.0, 5.0]


def test_global_preferences_by_the_papers_rule() -> None:
    assert is_global("general") and is_global("always") and is_global("for any request")
    assert is_global("replies") and not is_global("math")  # under three words, no domain term
    assert not is_global("planning dinner meals") and not is_global("company offsite planning")


class VarsWorld:
    """Extraction finds a global and a conditional preference; the user is satisfied at the second answer."""

    def __init__(self) -> None:
        self.systems: list[str] = []

    def __call__(self, body: dict) -> str | None:
        system, user = _system(body), _user(body)
        if system.startswith("You are a preference extraction assistant"):
            assert "USER (turn 2): Shorter, with prices." in user
            prefs = [
                {
                    "condition": "general",
                    "action": "answer in short bullet lists",
                    "confidence": 0.9,
                    "turns": [2],
                },
                {
                    "condition": "planning dinner meals",
                    "action": "include prices",
                    "confidence": 0.7,
                    "turns": [2, 5],
                },
            ]
            return json.dumps({"preferences": prefs})
        if call_of(body) == "agent/chatbot":
            self.systems.append(system)
            return "Here is a plan."
        if call_of(body) == "agent/user_judge":
            return "<Satisfied>" if user.count("ASSISTANT:") >= 2 else "<Continue> Shorter, with prices."
        return None


def test_vars_agent_extracts_cards_injects_them_and_learns_per_turn() -> None:
    world = VarsWorld()
    cfg = ReplayConfig(dataset="d", agents=["vars"], judge=False)
    data = [r.model_copy(update={"apis": []}) for r in rows(3)]
    with FakeOpenAI(responder=world) as fake:

        async def go(llm: LLM) -> Any:
            agent = make_agent("vars", Caller(llm, "vars", "p1"), cfg, data[0], 3, HashingEmbedder())
            world_ = World(
                agent.caller, Chatbot(agent.caller, 0), UserSimulator(agent.caller), Judge(agent.caller)
            )
            z_short_at_start = []
            for position, r in enumerate(data, start=1):
                ctx = await agent.context(r)
                z_short_at_start.append(float(np.abs(agent.state.z_short).sum()))
                log, _ = await run_session(ctx, r, world_, 3, agent)
                await agent.observe(log, position, r)
            return agent, z_short_at_start

        agent, z_short_at_start = run(with_llm(fake, go))
    assert isinstance(agent, VarsAgent)
    assert z_short_at_start == [0.0, 0.0, 0.0]  # reset at each session start
    global_note, cond_note = (
        "When general, answer in short bullet lists.",
        "When planning dinner meals, include prices.",
    )
    assert [global_note in s for s in world.systems] == [False, False, True, True, True, True]
    assert [cond_note in s for s in world.systems] == [False, False, True, True, True, True]
    # session 1 had no card: no step; sessions 2 and 3: turn 1 (-1, asked for more), turn 2 (+1, satisfied)
    assert [st.reward for st in agent.steps] == [-1.0, 1.0, -1.0, 1.0]
    assert agent.state.baseline == pytest.approx(
        (((0.95 * 0 - 0.05) * 0.95 + 0.05) * 0.95 - 0.05) * 0.95 + 0.05
    )
    cards = agent.memory_cards("p1")
    assert [(c.condition, c.action, c.is_global, c.source_session, c.source_turns) for c in cards] == [
        ("general", "answer in short bullet lists", True, 0, [2]),
        ("planning dinner meals", "include prices", False, 0, [2]),  # turn 5 does not exist: dropped
    ]
    assert [c.injected for c in cards] == [2, 4] and cards[0].confidence == 0.9
    assert len(agent.cards) == 2  # the same notes extracted again are not added twice
