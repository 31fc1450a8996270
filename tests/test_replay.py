"""`replay_dataset` end to end through the real Prefect flow against the fake server.

Every agent, the Parquet, the summary, resume.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import polars as pl
import pytest

from personaloom.pipeline import all_calls
from personaloom.pipeline.flow import build_dataset
from personaloom.runs.replay import replay_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.replay import ReplayConfig
from personaloom.testing.fake_openai import FakeOpenAI, Request, scripted

pytestmark = pytest.mark.usefixtures("prefect_harness")

AGENTS = ["none", "demographics-only", "golden", "learned", "learned-rag", "rag", "persona-agent", "vars"]
NAMES = [
    "none",
    "demographics-only",
    "golden",
    "learned-k1",
    "learned-k3",
    "learned-rag-k1",
    "learned-rag-k3",
    "rag",
    "persona-agent",
    "vars",
]


def _system(body: dict) -> str:
    return body["messages"][0]["content"]


def _user(body: dict) -> str:
    return body["messages"][-1]["content"]


def _neutralize(body: Request) -> str:
    """The build's neutralizer: keep the task's words."""
    request = re.search(r'^Request: "(.*)"$', _user(body), re.MULTILINE)
    return json.dumps({"neutralized_query": request.group(1) if request else "Plan it for me please."})


def _chatbot(body: Request) -> str:
    """The first answer of each turn calls the scene's first API; the next one answers."""
    system, user = _system(body), _user(body)
    tools = system.partition("You can call these APIs")[2]
    api = re.search(r"^- (\S+): ", tools, re.MULTILINE)
    last = user.split("\n\nWrite the assistant")[0].strip().splitlines()[-1]
    if api and last.startswith("USER:"):
        args = dict.fromkeys(re.findall(r"^\s+- (\S+) \(\w+, required\)", tools, re.MULTILINE), "x")
        return f"<tool_call>{json.dumps({'name': api.group(1), 'arguments': args})}</tool_call>"
    return "Here is a plan in short bullet lists."


def _user_judge(body: Request) -> str | None:
    """The user: satisfied at the second answer."""
    user = _user(body)
    if "<Satisfied>" not in user:
        return None
    return "<Satisfied>" if user.count("ASSISTANT:") >= 2 else "<Continue> Please use bullet lists."


_RATING = "<analysis>fine</analysis><rating>7; 6</rating>"  # the paper's rating judge
_PREFERENCE = {"condition": "planning my week", "action": "use bullet lists", "confidence": 0.8, "turns": [2]}
_UPDATES = [
    {"field": "Demographics.Age", "value": "99", "evidence": "x"},
    {"field": "Preference.Preferred_Formats", "value": "bullet lists", "evidence": "asked twice"},
]
# The scripted agent world, keyed by the call a request names (never by its wording); the build's other
# calls fall through to the fake's schema-valid answers.
responder = scripted(
    {
        "queries/neutralize": _neutralize,
        "agent/chatbot": _chatbot,
        "agent/user_judge": _user_judge,
        "agent/judge_rating": lambda _: _RATING,
        "agent/judge_rating_reference": lambda _: _RATING,
        "agent/judge_similarity": lambda _: "<analysis>close</analysis><rating>6 ; 5</rating>",
        "agent/judge_pairwise": lambda _: "<analysis>first</analysis><winner>1</winner>",  # the first shown
        "agent/vars_extract": lambda _: json.dumps({"preferences": [_PREFERENCE]}),  # VARS' memory cards
        "agent/persona_update": lambda _: json.dumps({"updates": _UPDATES}),
    }
)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_replay_every_agent(out: Path) -> None:
    with FakeOpenAI(responder=responder) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        build = BuildConfig(
            dataset="demo",
            personas=2,
            scenes_per_persona=4,
            expand_hints=False,
            answerability=False,
            locales=["en_US"],
            llm=llm,
        )
        asyncio.run(build_dataset(build, out=str(out)))
        published = _files(out / "demo" / "v0001")
        cfg = ReplayConfig(
            dataset="demo", version="1", agents=AGENTS, ks=[1, 3], shard_size=1, run="t1", llm=llm
        )
        run_dir = Path(asyncio.run(replay_dataset(cfg, out=str(out))))
        # a published version is immutable: the run lives beside it, not one byte inside changed
        assert _files(out / "demo" / "v0001") == published
        calls = fake.stats.by_path["/v1/chat/completions"]
        # every request of the build, the agents and their world names its declared call (a header)
        named = {r["body"].call for r in fake.requests if r["method"] == "POST"}
        assert named <= {c.name for c in all_calls()} and {"agent/chatbot", "agent/user_judge"} <= named
        assert (
            Path(asyncio.run(replay_dataset(cfg, out=str(out)))) == run_dir
        )  # resume of a finished run: no LLM call
        assert fake.stats.by_path["/v1/chat/completions"] == calls

    assert run_dir == out / "demo" / "runs" / "v0001" / "replay" / "t1"
    dataset = pl.read_parquet(out / "demo" / "v0001" / "dataset" / "*.parquet")
    n_rows, n_personas = len(dataset), dataset["persona_id"].n_unique()
    assert n_personas == 2 and n_rows >= 4
    sessions = pl.read_parquet(run_dir / "sessions" / "*.parquet")
    turns = pl.read_parquet(run_dir / "turns" / "*.parquet")
    snaps = pl.read_parquet(run_dir / "snapshots" / "*.parquet")
    metrics = pl.read_parquet(run_dir / "metrics" / "*.parquet")
    assert len(list((run_dir / "metrics").glob("part-*.parquet"))) == 2  # one shard per persona

    # every agent replayed every session, with the scripted world
    assert len(sessions) == len(metrics) == n_rows * len(NAMES)
    assert sorted(sessions["agent"].unique()) == sorted(NAMES)
    assert sessions["user_turns"].max() <= 3
    assert (
        (sessions["user_turns"] == 2).all()
        and sessions["satisfied"].all()
        and (sessions["malformed_verdicts"] == 0).all()
    )
    with_api = dataset.select("persona_id", "session_index", (pl.col("apis").list.len() > 0).alias("has_api"))
    tools = sessions.join(with_api, on=["persona_id", "session_index"])
    assert tools["has_api"].any()
    # one per answer; persona-agent always has its own search_user_history beside the scene's APIs
    expected = pl.when(pl.col("has_api") | (pl.col("agent") == "persona-agent")).then(2).otherwise(0)
    assert tools.filter(pl.col("tool_calls") != expected).is_empty()
    assert (sessions["tool_errors"] == 0).all()
    assert set(turns["role"]) == {"user", "assistant", "tool_call", "tool_result"}
    assert sessions["first_answer"].str.contains("bullet lists").all()
    assert metrics["helpfulness"].to_list() == [7.0] * len(metrics) and metrics[
        "personalization"
    ].to_list() == [6.0] * len(metrics)
    assert (sessions["agent_prompt_tokens"] > 0).all()

    # update cadence: learned-k1 after every session, learned-k3 after the 3rd and the last
    per_persona = dataset.group_by("persona_id").len()
    for agent, k in (("learned-k1", 1), ("learned-k3", 3), ("learned-rag-k1", 1), ("learned-rag-k3", 3)):
        got = sessions.filter(pl.col("agent") == agent)
        for pid, total in per_persona.iter_rows():
            updated = (
                got.filter((pl.col("persona_id") == pid) & pl.col("persona_updated"))["position"]
                .sort()
                .to_list()
            )
            assert updated == sorted({p for p in range(1, total + 1) if p % k == 0 or p == total}), (
                agent,
                pid,
            )
    assert not sessions.filter(pl.col("agent").is_in(["none", "demographics-only", "golden", "rag", "vars"]))[
        "persona_updated"
    ].any()

    # Demographics survive an updater that tries to change them; the allowed field is learned
    learned = snaps.filter(pl.col("agent") == "learned-k1").explode("fields").unnest("fields")
    ages = learned.filter(pl.col("path") == "Demographics.Age")["value"].unique().to_list()
    assert len(ages) == 2 and "99" not in ages  # one real age per persona
    last = learned.filter((pl.col("path") == "Preference.Preferred_Formats") & (pl.col("after_session") >= 0))
    assert (last["value"] == "bullet lists").all()

    # persona metrics only where a persona exists; golden is the upper bound
    golden = metrics.filter(pl.col("agent") == "golden")
    assert (golden["field_similarity"] == 1.0).all() and golden["revealed_held"].to_list() == golden[
        "revealed_seen"
    ].to_list()
    assert (
        metrics.filter(pl.col("agent").is_in(["none", "rag", "vars"]))["field_similarity"].null_count()
        == 3 * n_rows
    )
    # demographics-only: the learned agent's start, held unchanged; it holds no revealed field
    demo = snaps.filter(pl.col("agent") == "demographics-only").explode("fields").unnest("fields")
    start = learned.filter(pl.col("after_session") == -1)
    assert demo.filter(pl.col("value") != "")["path"].str.starts_with("Demographics.").all()
    assert sorted(demo.filter(pl.col("value") != "")["value"].unique()) == sorted(
        start.filter(pl.col("value") != "")["value"].unique()
    )
    demo_m = metrics.filter(pl.col("agent") == "demographics-only")
    assert (demo_m["field_similarity"] == 0.0).all() and (demo_m["revealed_held"] == 0).all()
    k1 = metrics.filter(pl.col("agent") == "learned-k1")
    assert k1["field_similarity"].drop_nulls().len() == n_rows and (k1["field_similarity"] < 1).all()

    # persona-agent: the persona prompt is aligned every 3 sessions (and after the last), judged on its text
    pa = sessions.filter(pl.col("agent") == "persona-agent")
    for pid, total in per_persona.iter_rows():
        updated = pa.filter((pl.col("persona_id") == pid) & pl.col("persona_updated"))["position"].sort()
        assert updated.to_list() == sorted({p for p in range(1, total + 1) if p % 3 == 0 or p == total})
    pa_snaps = snaps.filter(pl.col("agent") == "persona-agent").explode("fields").unnest("fields")
    assert pa_snaps.filter(pl.col("path") == "PersonaAgent.persona_prompt")["value"].n_unique() >= 2
    pa_m = metrics.filter(pl.col("agent") == "persona-agent")
    assert pa_m["field_similarity"].is_null().all() and (pa_m["judge_consistency"] == 6.0).all()

    # VARS: its memory cards, one per note and persona, from the session where the user asked for them
    cards = pl.read_parquet(run_dir / "memory_cards" / "*.parquet")
    assert set(cards["agent"]) == {"vars"} and len(cards) == n_personas
    assert cards.select("condition", "action", "confidence", "is_global", "source_turns").rows()[0] == (
        "planning my week",
        "use bullet lists",
        0.8,
        False,
        [2],
    )
    assert (cards["source_session"] == 0).all() and (cards["injected"] > 0).all()

    # the summary: one row per agent, like Table 1
    summary = (run_dir / "summary.md").read_text()
    table1 = summary.split("| Agent |")[1].split("\n\n")[0]  # the first table, up to its blank line
    table = [line for line in table1.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == NAMES
    assert "Helpfulness" in summary and "Utterances" in summary
    # interaction efficiency: every agent's row; the scripted user is satisfied at the second answer
    efficiency = summary.split("## Interaction efficiency")[1].split("\n\n")[1]
    eff_rows = [line.split("|")[1:-1] for line in efficiency.splitlines()[2:]]
    assert [r[0].strip() for r in eff_rows] == NAMES
    assert {tuple(c.strip() for c in r[1:5]) + (r[6].strip(),) for r in eff_rows} == {
        ("1.00", "0.00", "0.00", "2.00", "1.00")
    }
    assert (
        (metrics["corrections"] == 1).all()
        and (metrics["user_tokens"] > 0).all()
        and not metrics["timeout"].any()
    )
    assert table[0].split("|")[2].strip() == "7.00"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["agents"] == NAMES and manifest["sessions"] == len(metrics) and manifest["personas"] == 2
    assert manifest["usage_by_agent"]["learned-k1"]["calls"] > 0 and "chatbot" in manifest["usage_by_role"]
    assert "agent/chatbot" in manifest["prompt_hashes"]
    settings = manifest["agent_settings"]
    assert (
        list(settings) == NAMES
        and settings["learned-k3"]["kind"] == "learned"
        and settings["learned-k3"]["k"] == 3
    )
    assert set(settings["learned-k1"]["calls"]) == {
        "agent/chatbot",
        "agent/tool_executor",
        "agent/persona_update",
    }
    assert all(len(h) == 16 for a in settings.values() for h in a["calls"].values())
    assert settings["rag"]["settings"]["retrieve"] == 2
    vars_settings = settings["vars"]["settings"]
    assert (vars_settings["eta_long"], vars_settings["eta_short"], vars_settings["beta_short"]) == (
        0.01,
        0.05,
        5.0,
    )
    assert "agent/vars_extract" in settings["vars"]["calls"]
    assert settings["persona-agent"]["settings"]["iterations"] == 3

    # Fig. 4: each learned-kK against golden on every session, both orders; a judge that always picks
    # Response 1 gives ½ (the order swap cancels its position bias)
    pairwise = pl.read_parquet(run_dir / "pairwise" / "*.parquet")
    assert len(pairwise) == 2 * n_rows and set(pairwise["agent_b"]) == {"golden"}
    assert (pairwise["score_a"] == 0.5).all() and (pairwise["a_first"] == "first").all()
    assert [(p["agent_a"], p["win_rate"], p["consistent"]) for p in manifest["pairwise"]] == [
        ("learned-k1", 0.5, 0.0),
        ("learned-k3", 0.5, 0.0),
    ]
    assert "## Pair-wise comparison (Fig. 4)" in summary and "| learned-k1 | golden | 0.50 |" in summary
    assert {r: (v["model"], v["temperature"]) for r, v in manifest["roles"].items()} == {
        "chatbot": ("fake-model", 0.8),
        "tool": ("fake-model", 0.8),
        "simulator": ("fake-model", 0.8),
        "judge": ("fake-model", 0.0),
        "memory": ("fake-model", 0.8),
    }


def test_resume_redoes_only_missing_shards(out: Path) -> None:
    with FakeOpenAI(responder=responder) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=8)
        asyncio.run(
            build_dataset(
                BuildConfig(
                    dataset="demo",
                    personas=2,
                    scenes_per_persona=2,
                    expand_hints=False,
                    answerability=False,
                    locales=["en_US"],
                    llm=llm,
                ),
                out=str(out),
            )
        )
        cfg = ReplayConfig(dataset="demo", agents=["none", "learned"], shard_size=1, run="r", llm=llm)
        run_dir = Path(asyncio.run(replay_dataset(cfg, out=str(out))))
        before = pl.read_parquet(run_dir / "sessions" / "*.parquet").sort(
            "persona_id", "agent", "session_index"
        )
        for table in ("sessions", "turns", "snapshots", "metrics"):
            (run_dir / table / "part-00001.parquet").unlink()  # as if the crash hit shard 1
        (run_dir / "manifest.json").unlink()
        calls = fake.stats.by_path["/v1/chat/completions"]
        asyncio.run(replay_dataset(cfg.model_copy(update={"shard_size": 1}), out=str(out)))
        assert (
            fake.stats.by_path["/v1/chat/completions"] == calls
        )  # shard 1 is redone from the response cache
        with pytest.raises(Exception, match="exists with other settings"):
            asyncio.run(replay_dataset(cfg.model_copy(update={"max_user_turns": 2}), out=str(out)))
    after = pl.read_parquet(run_dir / "sessions" / "*.parquet").sort("persona_id", "agent", "session_index")
    assert after.drop(
        "wall_seconds",
        "agent_llm_seconds",
        "agent_calls",
        "agent_prompt_tokens",
        "agent_completion_tokens",
        "eval_prompt_tokens",
        "eval_completion_tokens",
    ).equals(
        before.drop(
            "wall_seconds",
            "agent_llm_seconds",
            "agent_calls",
            "agent_prompt_tokens",
            "agent_completion_tokens",
            "eval_prompt_tokens",
            "eval_completion_tokens",
        )
    )
    assert (run_dir / "manifest.json").exists()


def test_roles_get_their_models_in_build_and_replay(out: Path) -> None:
    """--user-model / --judge-model: each request goes to its role's model and temperature.

    The build and replay manifests record the model of each call and role.
    """
    with FakeOpenAI(responder=responder) as fake:
        llm = LLMConfig(
            model="m-chat", user_model="m-user", judge_model="m-judge", base_url=fake.base_url, concurrency=8
        )
        build = BuildConfig(
            dataset="roles",
            personas=1,
            scenes_per_persona=2,
            expand_hints=False,
            answerability=True,
            locales=["en_US"],
            llm=llm,
        )
        version = asyncio.run(build_dataset(build, out=str(out)))
        built = len(fake.requests)
        cfg = ReplayConfig(
            dataset="roles",
            agents=["none", "demographics-only", "golden", "learned"],
            ks=[1],
            run="r",
            llm=llm,
        )
        run_dir = Path(asyncio.run(replay_dataset(cfg, out=str(out))))
        chats = [r["body"] if "messages" in (r["body"] or {}) else None for r in fake.requests]

    def sent(rs: list[dict | None], needle: str) -> set[tuple[str, float]]:
        return {(b["model"], b["temperature"]) for b in rs if b is not None and needle in _system(b)}

    build_rs, replay_rs = chats[:built], chats[built:]
    assert sent(build_rs, "You role-play a real person") == {("m-user", 0.8)}  # queries/simulate
    assert sent(build_rs, "You check evaluation data") == {("m-judge", 0.0)}  # filter/answerability
    assert sent(replay_rs, "You role-play") == {("m-user", 0.8)}  # the simulated user
    assert sent(replay_rs, "I will now provide you with a conversation") == {("m-judge", 0.0)}  # rating
    assert sent(replay_rs, "two persona profiles") == {("m-judge", 0.0)}  # similarity
    assert sent(replay_rs, "two responses from AI assistants") == {("m-judge", 0.0)}  # pair-wise
    assert sent(replay_rs, "You are a personalized AI assistant") == {("m-chat", 0.8)}
    assert sent(replay_rs, "maintain a profile") == {("m-chat", 0.8)}

    built_manifest = json.loads((out / "roles" / version / "manifest.json").read_text())
    assert built_manifest["calls"]["queries/simulate"]["model"] == "m-user"
    assert built_manifest["calls"]["filter/answerability"]["model"] == "m-judge"
    assert built_manifest["calls"]["personas/synthesize"]["model"] == "m-chat"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {r: (v["model"], v["temperature"]) for r, v in manifest["roles"].items()} == {
        "chatbot": ("m-chat", 0.8),
        "tool": ("m-chat", 0.8),
        "simulator": ("m-user", 0.8),
        "judge": ("m-judge", 0.0),
        "memory": ("m-chat", 0.8),
    }
    assert manifest["config"]["llm"]["judge_model"] == "m-judge"
    summary = (run_dir / "summary.md").read_text()
    assert "| demographics-only |" in summary
