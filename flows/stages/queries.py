"""Stage 4 — sessions as conversations: a user simulator and a plain assistant talk through each scene.

The user simulator role-plays the persona as it is at the session (changes applied, no was/now), opens
the conversation and follows up; the build's model answers as a plain assistant that knows nothing of
the persona. Code decides what each user turn may reveal (`stages/reveals.py`), checks what it states,
and the calibrated reveal judge confirms what can be inferred: `Turn.reveals` records it per turn, and
`revealed_fields` holds the fields some turn is evidence for. The opening is also neutralized (persona
traits removed) for the replay's no-persona start.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLM, LLMResult
from personaloom.schemas.config import ConversationConfig
from personaloom.schemas.drafts import FollowDraft, NeutralDraft, QueryDraft
from personaloom.schemas.records import (
    Persona,
    PlannedReveal,
    Query,
    Rejection,
    Scene,
    Turn,
    evidence_keys,
)
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async
from personaloom.stages.drift import persona_at
from personaloom.stages.filter.checks import AnswerChecks
from personaloom.stages.reveals import (
    REASON,
    REVEAL,
    RevealJob,
    assign_turns,
    field_of,
    marks_for,
    plan_reveals,
    reveal_calibration,
)
from personaloom.text.tokens import count as count_tokens

# how a field reads to the simulator and the judge ("how much you write: concise")
LABELS = {
    "Demographics.Career_Information": "your work",
    "Personality.Values_and_Interests": "what you care about and enjoy",
    "Pattern.Behavior_Engagement_Pattern": "how you engage",
    "Pattern.Usage_Pattern": "how you use your assistant",
    "Pattern.Emotion_Pattern": "your moods",
    "Pattern.Purchase_Pattern": "how you buy things",
    "Preference.Preferred_Styles": "the style of answer you like",
    "Preference.Preferred_Formats": "the format of answer you like",
    "Preference.Preferred_Workflows": "how you like to work",
    "Communication.formality": "how formal you are",
    "Communication.verbosity": "how much you write",
    "Communication.proactivity": "how much you want the assistant to take initiative",
    "Communication.domain_vocabulary": "words you use",
    "Communication.emotional_tone": "your tone",
}


def lexical_reveals(text: str, persona: Persona) -> set[str]:
    """Persona fields whose concrete words appear in the user's turns: ground truth that needs no model."""
    low = text.lower()
    found = set()
    if any(w.lower() in low for w in persona.Communication.domain_vocabulary if len(w) > 3):
        found.add("Communication.domain_vocabulary")
    if any(v.lower() in low for v in persona.Personality.Values_and_Interests if len(v) > 3):
        found.add("Personality.Values_and_Interests")
    if any(lang.lower() in low for lang in persona.Demographics.Language):
        found.add("Demographics.Language")
    if persona.Demographics.Nationality.lower() in low:
        found.add("Demographics.Nationality")
    return found


def _label(key: str) -> str:
    return LABELS.get(field_of(key), "a habit of yours")


def ask_line(r: PlannedReveal) -> str:
    """What the simulator is asked to let come through (the value in force, never was/now)."""
    if r.who == "others":
        return (
            f"someone close to you (a friend, partner, colleague or relative: name them), not you: "
            f"{r.value}. Mention it in passing as theirs; it is not true of you"
        )
    if r.key.endswith(REASON):
        return f"something that happened to you lately: {r.value}. Mention it as it comes up"
    if r.mode == "explicit":
        return f"{_label(r.key)}: {r.value}. You may say it plainly"
    return (
        f"{_label(r.key)}: {r.value}. Let it show through what you ask and how; "
        "do not state it or use its words"
    )


def statement(r: PlannedReveal) -> str:
    """What the judge is asked to infer about the user from a turn."""
    if r.key.endswith(REASON):
        return f"Something that happened to the user lately: {r.value}"
    return f"The user ({_label(r.key).replace('your', 'their').replace('you', 'they')}): {r.value}"


def profile_lines(persona: Persona, planned: list[PlannedReveal]) -> list[str]:
    """The persona as the simulator plays it; of the fine-grained habits only those this session plans."""
    d, pa, pr, c = persona.Demographics, persona.Pattern, persona.Preference, persona.Communication
    lines = [
        f"Age {d.Age}, {d.Nationality}.",
        f"Work: {d.Career_Information}",
        f"Interests: {', '.join(persona.Personality.Values_and_Interests)}.",
        f"How you use your assistant: {pa.Usage_Pattern}",
        f"Moods: {pa.Emotion_Pattern}",
        f"Preferred styles: {pr.Preferred_Styles}",
        f"Preferred formats: {pr.Preferred_Formats}",
        f"Preferred workflows: {pr.Preferred_Workflows}",
        f"Communication: {c.formality}, {c.verbosity}, tone {c.emotional_tone}; "
        f"words you use: {', '.join(c.domain_vocabulary)}",
    ]
    fine = getattr(persona, "Fine", None) or {}
    habits = [
        fine[k.removeprefix("Fine.")]
        for k in (r.key for r in planned if r.who == "self")
        if k.startswith("Fine.") and k.removeprefix("Fine.") in fine
    ]
    if habits:
        lines.append(f"Habits: {'; '.join(habits)}")
    return lines


class Earlier(NamedTuple):
    """The session a revisit continues: its scene and what the user asked then."""

    scene: Scene
    query: str


class SimulateJob(NamedTuple):
    scene: Scene
    persona: Persona  # the base persona; the prompt sees the one in force at the scene's session
    earlier: Earlier | None = None
    reveals: tuple[PlannedReveal, ...] = ()  # what this opening may reveal (code's plan)


def _speaker(job: SimulateJob) -> dict[str, object]:
    now = persona_at(job.persona, job.scene.session_index)
    return {
        "speaker": now.Demographics.Name,
        "profile": profile_lines(now, list(job.reveals)),
        "scene": job.scene,
        "asks": [ask_line(r) for r in job.reveals],
        "language": now.Demographics.Interaction_Language,
    }


def build_query(job: SimulateJob, res: LLMResult[QueryDraft]) -> Query | Rejection:
    """The opening; the conversation, its marks and the neutralized text come later."""
    scene = job.scene
    if res.value is None:
        return Rejection(
            stage="queries",
            row_id=scene.scene_id,
            persona_id=scene.persona_id,
            reason="llm_invalid_output",
            detail=res.error,
            raw_output=res.raw,
        )
    text = res.value.personalized_query.strip()
    query_id = f"{scene.scene_id}-q0"
    return Query(
        query_id=query_id,
        scene_id=scene.scene_id,
        persona_id=scene.persona_id,
        session_index=scene.session_index,
        personalized_query=text,
        neutralized_query=text,
        revealed_fields=[],
        turns=[Turn(turn_id=f"{query_id}-t0", role="user", content=text)],
        fallback_fields=["neutralized_query"],
        raw_output=None,
    )


def query_grounded(job: SimulateJob, draft: QueryDraft, checks: AnswerChecks) -> str | None:
    """Stage 5 drops a query that repeats a prompt example or is not in the persona's language."""
    text = draft.personalized_query
    return checks.copied({"personalized_query": text}) or checks.wrong_language(
        "personalized_query", text, job.persona.Demographics.Interaction_Language
    )


SIMULATE: LLMCall[SimulateJob, Query | Rejection] = LLMCall(
    name="queries/simulate",
    variables=("speaker", "profile", "scene", "asks", "language", "earlier", "persona"),
    render=lambda job: {
        **_speaker(job),
        "earlier": job.earlier,
        "persona": persona_at(job.persona, job.scene.session_index),
    },
    build=build_query,
    response=QueryDraft,
    max_tokens=300,
    role="simulator",
    sample=lambda s: SimulateJob(s.scene, s.persona.persona, Earlier(s.scene, s.query.personalized_query)),
    check=query_grounded,
)


class TurnJob(NamedTuple):
    """The next message of a conversation: the assistant's reply, or the user's follow-up."""

    scene: Scene
    persona: Persona
    turns: tuple[Turn, ...]
    reveals: tuple[PlannedReveal, ...] = ()
    side: bool = False  # a --context-target build's extra exchange: the user may drift to a side topic


def _text(job: TurnJob, res: LLMResult[str]) -> str | None:
    return res.value.strip() if isinstance(res.value, str) and res.value.strip() else None


ASSIST: LLMCall[TurnJob, str | None] = LLMCall(
    name="queries/assist",
    variables=("turns", "language"),
    render=lambda job: {"turns": job.turns, "language": job.persona.Demographics.Interaction_Language},
    build=_text,
    response=None,
    max_tokens=250,
    role="writer",
    sample=lambda s: TurnJob(s.scene, s.persona.persona, tuple(s.query.turns[:1])),
)


def _follow(job: TurnJob, res: LLMResult[FollowDraft]) -> str | None:
    return res.value.message.strip() if res.value is not None else None


def follow_grounded(job: TurnJob, draft: FollowDraft, checks: AnswerChecks) -> str | None:
    """A follow-up that repeats a prompt example or leaves the user's language is drawn again."""
    return checks.copied({"message": draft.message}) or checks.wrong_language(
        "message", draft.message, job.persona.Demographics.Interaction_Language
    )


FOLLOW: LLMCall[TurnJob, str | None] = LLMCall(
    name="queries/follow",
    variables=("speaker", "profile", "scene", "asks", "language", "turns"),
    render=lambda job: {
        **_speaker(SimulateJob(job.scene, job.persona, None, job.reveals)),
        "turns": job.turns,
        "asks": [*(ask_line(r) for r in job.reveals), *([SIDE_TOPIC] if job.side else [])],
    },
    build=_follow,
    response=FollowDraft,
    max_tokens=250,
    role="simulator",
    sample=lambda s: TurnJob(s.scene, s.persona.persona, tuple(s.query.turns[:2])),
    check=follow_grounded,
)


class NeutralizeJob(NamedTuple):
    query: Query
    scene: Scene
    language: str = "en"  # ISO 639-1: the neutralized query stays in the persona's language


def neutralized(job: NeutralizeJob, res: LLMResult[NeutralDraft]) -> Query:
    # an un-neutralized query would leak the persona into the baseline: flag it, keep the text
    if res.value is None:
        return job.query.model_copy(update={"raw_output": res.raw})
    fallback = [f for f in job.query.fallback_fields if f != "neutralized_query"]
    return job.query.model_copy(
        update={"neutralized_query": res.value.neutralized_query.strip(), "fallback_fields": fallback}
    )


def neutral_grounded(job: NeutralizeJob, draft: NeutralDraft, checks: AnswerChecks) -> str | None:
    """Stage 5 drops a neutralized query that repeats a prompt example or left the task."""
    text, scene = draft.neutralized_query, job.scene
    return checks.copied({"neutralized_query": text}) or checks.drifted(
        text, job.query.personalized_query, f"{scene.title} {scene.description} {scene.context}"
    )


NEUTRALIZE: LLMCall[NeutralizeJob, Query] = LLMCall(
    name="queries/neutralize",
    variables=("query", "scene", "language"),
    render=lambda job: {"query": job.query.personalized_query, "scene": job.scene, "language": job.language},
    build=neutralized,
    response=NeutralDraft,
    max_tokens=250,
    sample=lambda s: NeutralizeJob(s.query, s.scene, s.seed.interaction_language or "en"),
    check=neutral_grounded,
)


async def converse(
    llm: LLM, query: Query, job: SimulateJob, by_turn: list[list[PlannedReveal]], user_turns: int
) -> Query:
    """The rest of the conversation after the opening: assistant, user, …, assistant."""
    turns = list(query.turns)
    fallback = list(query.fallback_fields)
    for i in range(1, user_turns + 1):
        reply = await llm.run(ASSIST, TurnJob(job.scene, job.persona, tuple(turns)))
        if reply is None:  # no reply to build on: the conversation ends here, marked
            fallback.append("turns")
            break
        turns.append(Turn(turn_id=f"{query.query_id}-t{len(turns)}", role="assistant", content=reply))
        if i == user_turns:
            break
        follow = await llm.run(FOLLOW, TurnJob(job.scene, job.persona, tuple(turns), tuple(by_turn[i])))
        if follow is None:
            fallback.append("turns")
            break
        turns.append(Turn(turn_id=f"{query.query_id}-t{len(turns)}", role="user", content=follow))
    return query.model_copy(update={"turns": turns, "fallback_fields": fallback})


async def mark(llm: LLM, query: Query, by_turn: list[list[PlannedReveal]], trusted: bool | None) -> Query:
    """Each user turn's marks: code's check of what it states; the judge's verdict when it is trusted."""
    planned = [r for rs in by_turn for r in rs]
    users = [t for t in query.turns if t.role == "user"]
    marked = {}
    for n, t in enumerate(users):
        mine = by_turn[n] if n < len(by_turn) else []
        said: list[bool | None] = [None] * len(mine)
        if mine and trusted:
            before = tuple(query.turns[: query.turns.index(t)])
            said = await llm.run(REVEAL, RevealJob(before, t.content, tuple(statement(r) for r in mine)))
        marked[t.turn_id] = t.model_copy(update={"reveals": marks_for(t.content, mine, said, planned)})
    turns = [marked.get(t.turn_id, t) for t in query.turns]
    fields = {field_of(k) for t in turns for k in evidence_keys(t) if not k.endswith(REASON)}
    return query.model_copy(update={"turns": turns, "revealed_fields": sorted(fields)})


GROW_MARGIN = 1.25  # stage 5 drops some sessions: a persona's history grows past the target by this
SIDE_TOPIC = (
    "a side topic from your own life (your plans, people around you, something that happened): "
    "bring it up as people do, then come back to the task or not"
)
MAX_USER_TURNS = 60  # a session never grows past this, whatever the target


def said_tokens(queries: list[Query]) -> int:
    return sum(count_tokens(t.content) for q in queries for t in q.turns)


async def extend(llm: LLM, query: Query, job: SimulateJob) -> Query:
    """One more exchange on a session: the user's side talk or follow-up, and the assistant's reply."""
    turns = list(query.turns)
    follow = await llm.run(FOLLOW, TurnJob(job.scene, job.persona, tuple(turns), (), side=True))
    if follow is None:
        return query
    turns.append(Turn(turn_id=f"{query.query_id}-t{len(turns)}", role="user", content=follow))
    reply = await llm.run(ASSIST, TurnJob(job.scene, job.persona, tuple(turns)))
    if reply is not None:
        turns.append(Turn(turn_id=f"{query.query_id}-t{len(turns)}", role="assistant", content=reply))
    return query.model_copy(update={"turns": turns})


async def grow_history(llm: LLM, sessions: list[tuple[Query, SimulateJob]], target: int) -> list[Query]:
    """Longer conversations until the persona's own history holds the target (rounds of one more
    exchange on every session, all at once; a round that adds nothing ends it)."""
    queries = [q for q, _ in sessions]
    goal = int(target * GROW_MARGIN)
    while said_tokens(queries) < goal:
        open_ = [i for i, q in enumerate(queries) if sum(t.role == "user" for t in q.turns) < MAX_USER_TURNS]
        if not open_:
            break
        grown = await asyncio.gather(*(extend(llm, queries[i], sessions[i][1]) for i in open_))
        before = said_tokens(queries)
        for i, q in zip(open_, grown, strict=True):
            queries[i] = q
        if said_tokens(queries) == before:
            break
    return queries


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[Query]:
    by_id = {p.persona_id: p.persona for p in inputs["personas"]}
    scene_of = {s.scene_id: s for s in inputs["scenes"]}
    conv: ConversationConfig = ctx.config.conversation
    calibration = await reveal_calibration(ctx.llm, conv.reveal_min_accuracy)
    trusted = calibration.trusted if calibration is not None else None
    done: dict[str, Query | Rejection] = {}
    plans: dict[str, tuple[SimulateJob, list[list[PlannedReveal]]]] = {}

    async def talk(scene: Scene) -> None:
        earlier = None
        if scene.revisits is not None:  # the user picks up where they left off, in their own words
            then = done[scene.revisits]
            if isinstance(then, Query):
                earlier = Earlier(scene_of[scene.revisits], then.personalized_query)
        persona = by_id[scene.persona_id]
        planned = plan_reveals(persona, scene.persona_id, scene.session_index, conv, ctx.catalogue)
        by_turn = assign_turns(planned, conv.user_turns)
        job = SimulateJob(scene, persona, earlier, tuple(by_turn[0]))
        plans[scene.scene_id] = (job, by_turn)
        query = await ctx.llm.run(SIMULATE, job)
        if not isinstance(query, Rejection):
            query = query.model_copy(update={"planned_reveals": planned})
            query = await converse(ctx.llm, query, job, by_turn, conv.user_turns)
        done[scene.scene_id] = query

    async def grow(persona_id: str) -> None:
        mine = [
            (q, plans[q.scene_id][0])
            for q in done.values()
            if isinstance(q, Query) and q.persona_id == persona_id
        ]
        mine.sort(key=lambda qj: qj[0].session_index)
        for q in await grow_history(ctx.llm, mine, conv.context_target or 0):
            done[q.scene_id] = q

    async def finish(scene: Scene) -> Query | Rejection:
        query = done[scene.scene_id]
        if isinstance(query, Rejection):
            return query
        job, by_turn = plans[scene.scene_id]
        query = await mark(ctx.llm, query, by_turn, trusted)
        said = " ".join(t.content for t in query.turns if t.role == "user")
        now = persona_at(job.persona, scene.session_index)
        query = query.model_copy(
            update={"revealed_fields": sorted(set(query.revealed_fields) | lexical_reveals(said, now))}
        )
        language = job.persona.Demographics.Interaction_Language
        query = await ctx.llm.run(NEUTRALIZE, NeutralizeJob(query, scene, language))
        done[scene.scene_id] = query
        return query

    # sessions that revisit an earlier one go second, once what the user asked then is known
    await map_async([s for s in inputs["scenes"] if s.revisits is None], talk)
    await map_async([s for s in inputs["scenes"] if s.revisits is not None], talk)
    if conv.context_target:  # the user's own life fills the context: longer talks, side topics
        await asyncio.gather(*(grow(pid) for pid in sorted({s.persona_id for s in inputs["scenes"]})))
    await map_async(inputs["scenes"], finish, ctx.advance)
    return StageOutcome.split(done[s.scene_id] for s in inputs["scenes"])


STAGE = Stage(
    name="queries",
    inputs=("scenes", "personas"),
    output="queries",
    record=Query,
    run=run,
    calls=(SIMULATE, ASSIST, FOLLOW, NEUTRALIZE, REVEAL),
    rows_in=lambda cfg, n: n["scenes"],
)
