"""Algorithm 1 for one user and agent: sessions in order, ≤3 user turns each, updates on the agent's cadence.

Everything a session produces (turns, the session row, a persona snapshot, its metrics) is returned
as records; flows/runs/replay.py only schedules users and writes files.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from personaloom.agent.agents import Agent, make_agent
from personaloom.agent.calls import AGENT_ROLES, EVAL_ROLES, Caller
from personaloom.agent.chatbot import AgentContext, Chatbot
from personaloom.agent.judge import Judge, Rating, Similarity, pair_score
from personaloom.agent.memory import Embedder, tokens
from personaloom.agent.metrics import (
    changes_tracked,
    field_similarity,
    learnable,
    revealed_held,
    revealed_to_agent,
)
from personaloom.agent.persona import golden_at
from personaloom.agent.sessions import Message, SessionLog
from personaloom.agent.user_simulator import UserSimulator
from personaloom.llm.client import LLM
from personaloom.schemas.records import DatasetRow
from personaloom.schemas.replay import (
    MemoryCardRow,
    MetricRow,
    PairwiseRow,
    ReplayConfig,
    SessionRow,
    SnapshotRow,
    TurnRow,
)
from personaloom.stages.drift import persona_at


@dataclass
class ReplayOutputs:
    sessions: list[SessionRow] = field(default_factory=list)
    turns: list[TurnRow] = field(default_factory=list)
    snapshots: list[SnapshotRow] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)
    memory_cards: list[MemoryCardRow] = field(default_factory=list)
    pairwise: list[PairwiseRow] = field(default_factory=list)

    def extend(self, other: ReplayOutputs) -> None:
        self.sessions += other.sessions
        self.turns += other.turns
        self.snapshots += other.snapshots
        self.metrics += other.metrics
        self.memory_cards += other.memory_cards
        self.pairwise += other.pairwise


@dataclass
class World:
    """The chatbot, the simulated user and the judge, all billed to one (agent, persona)."""

    caller: Caller
    chatbot: Chatbot
    user: UserSimulator
    judge: Judge


async def run_session(
    ctx: AgentContext, row: DatasetRow, world: World, max_user_turns: int, agent: Agent | None = None
) -> tuple[SessionLog, int]:
    """(the session, malformed verdicts).

    The user opens with the neutralized query; at most `max_user_turns` turns. `agent`, when given, may
    change the context per turn and hears each verdict (VARS retrieves and learns per turn).
    """
    log = SessionLog(
        row.session_index, row.title, row.neutralized_query, [Message("user", row.neutralized_query, 1)]
    )
    malformed = 0
    for turn in range(1, max_user_turns + 1):
        turn_ctx = await agent.turn_context(ctx, log, turn) if agent is not None else ctx
        await world.chatbot.respond(turn_ctx, row, log, turn)
        log.user_turns = turn
        verdict = await world.user.judge(row, log, turns_left=max_user_turns - turn)
        malformed += verdict.malformed
        if agent is not None:
            await agent.after_turn(log, turn, verdict.satisfied)
        if verdict.satisfied:
            log.satisfied = True
            break
        if turn < max_user_turns:  # the last follow-up would go unanswered: the cap is on user utterances
            log.messages.append(Message("user", verdict.follow_up, turn + 1))
    return log, malformed


def turn_rows(log: SessionLog, persona_id: str, agent: str) -> list[TurnRow]:
    return [
        TurnRow(
            persona_id=persona_id,
            agent=agent,
            session_index=log.session_index,
            user_turn=m.user_turn,
            seq=i,
            role=m.role,
            content=m.content,
            tool_name=m.tool_name,
        )  # type: ignore[arg-type]
        for i, m in enumerate(log.messages)
    ]


def snapshot(
    agent: Agent, persona_id: str, after: int, position: int, changed: list[str]
) -> SnapshotRow | None:
    fields = agent.snapshot_fields()
    if fields is None:
        return None
    return SnapshotRow(
        persona_id=persona_id,
        agent=agent.name,
        after_session=after,
        position=position,
        fields=fields,
        changed=changed,
    )


Judged = tuple[Rating | None, Similarity | None]


async def _judge(
    world: World, row: DatasetRow, log: SessionLog, learned: list[dict[str, str]] | None, enabled: bool
) -> Judged:
    if not enabled:
        return None, None
    if learned is None:
        return await world.judge.rate(row, log.first_answer), None
    return await asyncio.gather(world.judge.rate(row, log.first_answer), world.judge.similarity(learned, row))


def metric_row(
    agent: Agent,
    row: DatasetRow,
    position: int,
    log: SessionLog,
    revealed: set[str],
    judged: Judged,
    tokens: int,
    wall: float,
    intended: int,
    max_user_turns: int = 3,
) -> MetricRow:
    """`revealed`: fields revealed to this agent so far (seen text); `intended`: the generator's count."""
    rating, sim = judged
    persona, golden = agent.persona, golden_at(row)
    overall, sections = field_similarity(persona, golden) if persona is not None else (None, [])
    seen, held_n = revealed_held(agent.start, persona or agent.start, golden, revealed)
    due, tracked_n = changes_tracked(persona or {}, row.active_changes)
    # no persona: nothing to hold or track; null, not zero, so summaries skip these agents
    held = held_n if persona is not None else None
    tracked = tracked_n if persona is not None else None
    return MetricRow(
        persona_id=row.persona_id,
        agent=agent.name,
        session_index=row.session_index,
        position=position,
        utterances=log.user_turns,
        satisfied=log.satisfied,
        helpfulness=rating.solution if rating else None,
        personalization=rating.persona if rating else None,
        rating_raw=rating.raw if rating and not rating.ok else None,
        field_similarity=overall,
        section_similarity=sections,
        judge_consistency=sim.consistency if sim else None,
        judge_detail=sim.detail if sim else None,
        similarity_raw=sim.raw if sim else None,
        revealed_seen=seen,
        revealed_held=held,
        revealed_intended=intended,
        changes_due=due,
        changes_tracked=tracked,
        tokens=tokens,
        wall_seconds=round(wall, 4),
        user_tokens=user_tokens(log),
        corrections=log.user_turns - int(log.satisfied),
        timeout=not log.satisfied and log.user_turns >= max_user_turns,
    )


def user_tokens(log: SessionLog) -> int:
    """User effort in tokens: word tokens (Unicode words, character bigrams in unspaced scripts) of every
    message the user wrote in the session."""
    return sum(len(tokens(m.content)) for m in log.messages if m.role == "user")


def session_row(
    agent: Agent,
    row: DatasetRow,
    position: int,
    log: SessionLog,
    malformed: int,
    updated: bool,
    caller: Caller,
    before: tuple,
    wall: float,
) -> SessionRow:
    a0, e0 = before
    a1, e1 = caller.totals(AGENT_ROLES), caller.totals(EVAL_ROLES)
    tool_results = [m for m in log.messages if m.role == "tool_result"]
    return SessionRow(
        persona_id=row.persona_id,
        agent=agent.name,
        session_index=row.session_index,
        position=position,
        scene_id=row.scene_id,
        kind=row.kind,
        user_turns=log.user_turns,
        satisfied=log.satisfied,
        malformed_verdicts=malformed,
        tool_calls=sum(1 for m in log.messages if m.role == "tool_call"),
        tool_errors=sum(1 for m in tool_results if m.content.startswith("ERROR:")),
        first_answer=log.first_answer,
        final_answer=log.final_answer,
        persona_updated=updated,
        agent_calls=a1.calls - a0.calls,
        agent_prompt_tokens=a1.prompt_tokens - a0.prompt_tokens,
        agent_completion_tokens=a1.completion_tokens - a0.completion_tokens,
        eval_prompt_tokens=e1.prompt_tokens - e0.prompt_tokens,
        eval_completion_tokens=e1.completion_tokens - e0.completion_tokens,
        agent_llm_seconds=round(a1.seconds - a0.seconds, 4),
        wall_seconds=round(wall, 4),
    )


async def replay_user(
    rows: list[DatasetRow], agent_name: str, llm: LLM, cfg: ReplayConfig, embedder: Embedder
) -> ReplayOutputs:
    """One persona's sessions (already in session order) through one agent."""
    rows = sorted(rows, key=lambda r: r.session_index)
    pid = rows[0].persona_id
    caller = Caller(llm, agent_name, pid)
    world = World(
        caller, Chatbot(caller, cfg.max_tool_rounds), UserSimulator(caller), Judge(caller, cfg.judge_mode)
    )
    agent = make_agent(agent_name, caller, cfg, rows[0], len(rows), embedder)
    out = ReplayOutputs()
    if (first := snapshot(agent, pid, -1, 0, [])) is not None:
        out.snapshots.append(first)
    revealed: set[str] = set()  # fields the user messages this agent received revealed, cumulative
    intended: set[str] = set()  # what the generator meant the (personalized) queries to reveal
    for position, row in enumerate(rows, start=1):
        started, before = time.perf_counter(), (caller.totals(AGENT_ROLES), caller.totals(EVAL_ROLES))
        log, malformed = await run_session(await agent.context(row), row, world, cfg.max_user_turns, agent)
        changed = await agent.observe(log, position, row)
        revealed |= revealed_to_agent(log, persona_at(row.persona, row.session_index))
        intended |= learnable(row.revealed_fields)
        judged = await _judge(world, row, log, agent.learned_lines(), cfg.judge)
        wall = time.perf_counter() - started
        srow = session_row(agent, row, position, log, malformed, changed is not None, caller, before, wall)
        out.sessions.append(srow)
        out.turns += turn_rows(log, pid, agent_name)
        if (snap := snapshot(agent, pid, row.session_index, position, changed or [])) is not None:
            out.snapshots.append(snap)
        out.metrics.append(
            metric_row(
                agent,
                row,
                position,
                log,
                revealed,
                judged,
                srow.agent_prompt_tokens + srow.agent_completion_tokens,
                wall,
                len(intended),
                cfg.max_user_turns,
            )
        )
    out.memory_cards = agent.memory_cards(pid)
    return out


async def judge_pairs(
    sessions: list[SessionRow], users: dict[str, list[DatasetRow]], pairs: list[tuple[str, str]], llm: LLM
) -> list[PairwiseRow]:
    """Fig. 4: for each pair (A, B) and each session both replayed, the judge prefers one first answer, asked
    with A shown first and again with B shown first; A's score averages the two (a tie counts ½)."""
    answers = {(s.persona_id, s.agent, s.session_index): s for s in sessions}
    jobs, keys = [], []
    for pid, rows in users.items():
        judge = Judge(Caller(llm, "pairwise", pid))
        for row in rows:
            for a, b in pairs:
                sa, sb = answers.get((pid, a, row.session_index)), answers.get((pid, b, row.session_index))
                if sa is None or sb is None:
                    continue
                jobs.append(judge.pair(row, sa.first_answer, sb.first_answer))
                keys.append((pid, row.session_index, sa.position, a, b))
    out = []
    for (pid, index, position, a, b), (first, second) in zip(keys, await asyncio.gather(*jobs), strict=True):
        out.append(
            PairwiseRow(
                persona_id=pid,
                session_index=index,
                position=position,
                agent_a=a,
                agent_b=b,
                a_first=first,
                a_second=second,
                score_a=pair_score(first, second),
            )
        )
    return out
