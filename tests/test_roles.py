"""Roles get their own model: the client sends each call to its role's model, prices it at that model.

The requests are checked as the fake server on loopback received them (model and temperature per role).
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from personaloom.agent.agents import agent_calls
from personaloom.agent.calls import role_settings
from personaloom.agent.chatbot import CHATBOT
from personaloom.agent.judge import JUDGE_RATING, JUDGE_SIMILARITY
from personaloom.agent.user_simulator import USER_JUDGE
from personaloom.errors import UserError
from personaloom.llm import endpoint as endpoint_mod
from personaloom.llm.cache import ResponseCache
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLM, LLMError
from personaloom.schemas.config import LLMConfig
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.filter.judges import ANSWERABILITY
from personaloom.stages.queries import SIMULATE
from personaloom.stages.samples import sample_records
from personaloom.testing.cli import assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI

ROLES = LLMConfig(model="m-chat", user_model="m-user", judge_model="m-judge", temperature=0.8)
# (call, its role's model, the temperature it must be sent at)
EXPECTED: list[tuple[LLMCall[Any, Any], str, float]] = [
    (CHATBOT, "m-chat", 0.8),
    (USER_JUDGE, "m-user", 0.8),  # the simulated user keeps the run's temperature
    (JUDGE_RATING, "m-judge", 0.0),
    (JUDGE_SIMILARITY, "m-judge", 0.0),
    (SIMULATE, "m-user", 0.8),  # the build's user simulator
    (ANSWERABILITY, "m-judge", 0.0),  # the build's check
]


def make(fake: FakeOpenAI, config: LLMConfig, cache: Path | None = None) -> LLM:
    config = config.model_copy(update={"base_url": fake.base_url, "max_retries": 0})
    return LLM(
        config, base_url=fake.base_url, api_key="sk-test", cache=ResponseCache(cache) if cache else None
    )


def ask_each(llm: LLM, calls: list[LLMCall[Any, Any]]) -> None:
    """One call after the other, so request i is call i; usage under the call's name."""
    samples = sample_records(load_catalogue())

    async def go() -> None:
        try:
            for call in calls:
                await llm.run(call, call.sample(samples), stage=call.name)
        finally:
            await llm.aclose()

    asyncio.run(go())


def sent(fake: FakeOpenAI) -> list[tuple[str, float]]:
    return [(r["body"]["model"], r["body"]["temperature"]) for r in fake.requests]


def test_model_for_picks_the_role_model_else_the_build_model() -> None:
    assert [ROLES.model_for(r) for r in ("simulator", "judge", "chatbot", "writer", "memory")] == [
        "m-user",
        "m-judge",
        "m-chat",
        "m-chat",
        "m-chat",
    ]
    assert ROLES.models() == ["m-chat", "m-user", "m-judge"]
    plain = LLMConfig(model="m")
    assert plain.model_for("judge") == plain.model_for("simulator") == "m" and plain.models() == ["m"]


def test_each_role_is_sent_to_its_model_at_its_temperature() -> None:
    with FakeOpenAI() as fake:
        ask_each(make(fake, ROLES), [c for c, _, _ in EXPECTED])
        assert sent(fake) == [(m, t) for _, m, t in EXPECTED]


def test_without_role_models_every_call_goes_to_the_build_model() -> None:
    with FakeOpenAI() as fake:
        ask_each(make(fake, LLMConfig(model="m-chat")), [c for c, _, _ in EXPECTED])
        assert {m for m, _ in sent(fake)} == {"m-chat"}
        assert [t for _, t in sent(fake)] == [t for _, _, t in EXPECTED]  # judges stay at 0


def test_spend_is_priced_at_the_model_called() -> None:
    prices = {"m-chat": (1.0, 2.0), "m-user": (0.0, 0.0), "m-judge": (100.0, 300.0)}
    with FakeOpenAI() as fake:
        llm = make(fake, ROLES.model_copy(update={"prices": prices, "max_cost": 1000.0}))
        ask_each(llm, [CHATBOT, USER_JUDGE, JUDGE_RATING])
    for call, model in ((CHATBOT, "m-chat"), (USER_JUDGE, "m-user"), (JUDGE_RATING, "m-judge")):
        u, (pin, pout) = llm.usage[call.name], prices[model]
        assert u.calls == 1 and u.prompt_tokens > 0
        assert u.cost_usd == pytest.approx((u.prompt_tokens * pin + u.completion_tokens * pout) / 1e6)
    assert llm.budget.cost == pytest.approx(sum(u.cost_usd for u in llm.usage.values()))
    unpriced = ROLES.model_copy(update={"prices": {"m-chat": (1, 1), "m-user": (1, 1)}, "max_cost": 1.0})
    with pytest.raises(UserError, match="no price for model 'm-judge'"):
        LLM(unpriced, base_url="http://127.0.0.1:1/v1", api_key="k", cache=None)


def test_the_cache_key_follows_the_role_model(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        ask_each(make(fake, ROLES, tmp_path), [JUDGE_RATING, CHATBOT])
        ask_each(make(fake, ROLES, tmp_path), [JUDGE_RATING, CHATBOT])  # all cached
        assert len(fake.requests) == 2
        other = ROLES.model_copy(update={"judge_model": "m-judge-2"})
        ask_each(make(fake, other, tmp_path), [JUDGE_RATING, CHATBOT])  # only the judge asks again
        assert sent(fake)[2:] == [("m-judge-2", 0.0)]


def test_an_unknown_role_model_is_named_in_the_one_line_error() -> None:
    with FakeOpenAI(known_models={"m-chat", "m-user"}) as fake:
        with pytest.raises(LLMError) as err:
            ask_each(make(fake, ROLES), [CHATBOT, JUDGE_RATING])
    msg = str(err.value)
    assert "model 'm-judge' not found" in msg and "--judge-model" in msg and "\n" not in msg


def test_role_settings_for_the_replay_manifest() -> None:
    roles = role_settings(agent_calls(), ROLES)
    got = {r: (s.model, s.temperature) for r, s in roles.items()}
    assert got == {
        "chatbot": ("m-chat", 0.8),
        "tool": ("m-chat", 0.8),
        "simulator": ("m-user", 0.8),
        "judge": ("m-judge", 0.0),
        "memory": ("m-chat", 0.8),
    }
    assert {"agent/judge_rating", "agent/judge_similarity"} <= set(roles["judge"].calls)
    assert sorted(c for s in roles.values() for c in s.calls) == sorted(c.name for c in agent_calls())


def test_the_embedded_endpoint_serves_every_role_with_its_one_model(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def local_server() -> Any:
        class Server:
            base_url, model = "http://127.0.0.1:1/v1", "gemma3-270m"

        yield Server()

    monkeypatch.setattr(endpoint_mod, "LocalServer", local_server)
    with endpoint_mod.open_endpoint(ROLES) as ep:
        assert ep.embedded
        assert [ep.config.model_for(r) for r in ("chatbot", "simulator", "judge")] == ["gemma3-270m"] * 3
        assert ep.config.models() == ["gemma3-270m"]


def test_cli_role_options_reach_the_config(fake: FakeOpenAI, tmp_path: Path) -> None:
    """--judge-model is the model the budget check prices: an unpriced one fails before any work."""
    res = run(
        "build",
        "--base-url",
        fake.base_url,
        "--model",
        "gpt-4o-mini",
        "--judge-model",
        "my-judge",
        "--max-cost",
        "1",
        "--out",
        str(tmp_path),
    )
    assert_one_line_error(res, "no price for model 'my-judge'")
    for command in ("build", "replay"):
        shown = run(command, "--help", env={"COLUMNS": "200"})
        assert "--user-model" in shown.stdout and "--judge-model" in shown.stdout, command
