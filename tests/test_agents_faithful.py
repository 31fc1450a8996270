"""The reference agents against their papers, on hand-computed examples.

PersonaAgent (arXiv 2506.06254): the alignment loop's count (batch × iterations), its textual loss against
the ground-truth response, persona-driven tool choice over Â = A ∪ D. VARS (arXiv 2603.20939): memory cards,
the score s = s₀ + ⟨z_eff, v_m⟩, the REINFORCE step Δz with its baseline and gate.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from personaloom.agent.agents import make_agent
from personaloom.agent.calls import Caller
from personaloom.agent.loop import replay_user
from personaloom.agent.memory import HashingEmbedder
from personaloom.agent.persona_agent import HISTORY_TOOL, INITIAL_PERSONA, PersonaAgent
from personaloom.agent.sessions import Message, SessionLog
from personaloom.llm.client import LLM
from personaloom.schemas.config import LLMConfig
from personaloom.schemas.replay import PersonaAgentParams, ReplayConfig
from personaloom.testing.fake_openai import FakeOpenAI
from tests.test_agent import row


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
        if "personalized AI assistant" in system:
            draft = "You can call these APIs" not in system and "Do not call any more APIs" not in system
            persona = re.search(r"and how you answer\.\n(.*)", system)
            if draft:
                self.log.append(("simulate", persona.group(1)[:10] if persona else "-"))
            return "Here is a plan."
        if "role-play" in system:
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
        if "simulate a software API" in system:
            executor.append(user)
            return "{}"
        if "personalized AI assistant" in system and "You can call these APIs" in system:
            systems.append(system)
            if "API RESULT" not in user:
                call = {"name": HISTORY_TOOL, "arguments": {"query": "dinner"}}
                return f"<tool_call>{json.dumps(call)}</tool_call>"
            return "Plan: " + user.split("API RESULT (search_user_history): ")[1].split("\n")[0]
        if "role-play" in system:
            return "<Satisfied>"
        if "rewrite the persona" in system:
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
