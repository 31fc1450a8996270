"""What a user may reveal in a session, and whether they did: planned by code, checked by code and a judge.

Code owns the plan (`plan_reveals`): per session, which preferences in force the user may reveal, how
(implicit by default; `ConversationConfig.explicit_share` may state outright), in which user turn, and
sometimes someone else's preference as a trap (`who="others"`). The simulator is handed the value in force —
never the was/now bookkeeping of a change. Code then checks each user turn (`stated`: the value's content
words are in the turn), and the reveal judge (`queries/reveal`, temperature 0) says whether each planned
preference can be inferred from its turn; it is trusted only when it passes the hand-written items of
`seeds/reveal_calibration.csv` (implicit, explicit and absent revelations) at
`ConversationConfig.reveal_min_accuracy`, like stage 5's answerability judge.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
from pydantic import BaseModel, Field, create_model

from personaloom.errors import UserError
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLM, LLMResult
from personaloom.paths import SEEDS_DIR
from personaloom.schemas.config import ConversationConfig
from personaloom.schemas.drafts import Draft
from personaloom.schemas.fine import fine_alternatives
from personaloom.schemas.manifest import ConversationStats, JudgeCalibration
from personaloom.schemas.records import DatasetRow, Persona, PlannedReveal, RevealMark, Turn
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.drift import REASON, active_changes, in_force
from personaloom.stages.filter.grounding import mentions
from personaloom.text.tokens import count as count_tokens
from personaloom.text.tokens import tokenizer

CALIBRATION = SEEDS_DIR / "reveal_calibration.csv"
CALIBRATION_COLUMNS = ("preference", "message", "revealed")  # revealed: implicit | explicit | absent


def _rng(*parts: object) -> random.Random:
    return random.Random(
        int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")
    )


def field_of(key: str) -> str:
    return key.removesuffix(REASON)


def plan_reveals(
    persona: Persona, persona_id: str, session: int, conv: ConversationConfig, cat: Catalogue
) -> list[PlannedReveal]:
    """The preferences this session lets the user reveal, each assigned a user turn by `assign_turns`.

    A change that takes effect at this session comes first: its new value and, in the same or the next
    session, why it happened (the evidence a `reason` probe needs). The rest rotate over the persona's
    preferences in a seeded order, so that over a history every preference shows several times.
    """
    k = conv.reveals_per_session
    if k == 0:
        return []
    now = in_force(persona, session)
    forced: dict[str, PlannedReveal] = {}  # by key: of two changes of one field, the later one's
    for c in active_changes(persona, session):
        if c.effective_session == session and c.field in now:
            forced[c.field] = PlannedReveal(key=c.field, value=now[c.field])
        if c.effective_session in (session, session - 1) and c.reason.strip():
            # a life event is said, not hinted: the preference it changed stays implicit
            forced[c.field + REASON] = PlannedReveal(
                key=c.field + REASON, value=c.reason.strip(), mode="explicit"
            )
    out = list(forced.values())
    order = sorted(now)
    _rng(persona_id, "reveal-order").shuffle(order)
    for j in range(len(order)):
        if len(out) >= k:
            break
        key = order[(session * k + j) % len(order)]
        if key not in {r.key for r in out} and now[key].strip():
            out.append(PlannedReveal(key=key, value=now[key]))
    rng = _rng(persona_id, session, "reveal-mode")
    out = [
        r.model_copy(update={"mode": "explicit"}) if rng.random() < conv.explicit_share else r for r in out
    ]
    if conv.others_share > 0 and _rng(persona_id, session, "others").random() < conv.others_share:
        trap = others_reveal(now, persona, persona_id, session, cat)
        if trap is not None:
            out.append(trap)
    return out


def others_reveal(
    now: dict[str, str], persona: Persona, persona_id: str, session: int, cat: Catalogue
) -> PlannedReveal | None:
    """Someone else's preference (a value the user does not hold), which the user mentions in passing: of
    a field that changes (its items are where a word-matching reader falls for it), a fine-grained habit,
    or an interest."""
    from personaloom.stages.probes import (
        SEED_POOLS,  # the probes' own value pools: the trap is one of their options
    )

    rng = _rng(persona_id, session, "others-value")
    changed = sorted({c.field for c in persona.Changes if c.field in now})
    fine = sorted(k for k in now if k.startswith("Fine."))
    rng.shuffle(changed)
    rng.shuffle(fine)
    for key in [*changed, *fine]:
        pool = (
            fine_alternatives(key)
            if key.startswith("Fine.")
            else cat.attributes.get(SEED_POOLS.get(key, ""), [])
        )
        # never a value the user holds at any time (before, now or after a change)
        held = [v for c in persona.Changes if c.field == key for v in (c.before, c.after)] + [now[key]]
        alts = [a for a in pool if isinstance(a, str) and not any(mentions(h, a) or h == a for h in held)]
        if alts:
            return PlannedReveal(key=key, value=rng.choice(sorted(alts)), who="others")
    mine = now.get("Personality.Values_and_Interests", "")
    interests = [i for i in cat.values_interests if i.casefold() not in mine.casefold()]
    if not interests:
        return None
    return PlannedReveal(key="Personality.Values_and_Interests", value=rng.choice(interests), who="others")


def assign_turns(reveals: Sequence[PlannedReveal], user_turns: int) -> list[list[PlannedReveal]]:
    """Which user turn brings which reveal: round-robin from the opening, so later turns carry some too."""
    turns: list[list[PlannedReveal]] = [[] for _ in range(user_turns)]
    for i, r in enumerate(reveals):
        turns[i % user_turns].append(r)
    return turns


def stated(value: str, text: str) -> bool:
    """Code's check: the turn carries most of the value's content words (it says it, not lets it show)."""
    return mentions(text, value)


# ---------------------------------------------------------------- the reveal judge


class RevealJob(NamedTuple):
    """One user turn (with what came before it) and the preferences it was to reveal, in order."""

    before: tuple[Turn, ...]
    turn: str
    preferences: tuple[str, ...]  # the values, as a reader should infer them
    language: str = "en"


def judgement_model(n: int) -> type[BaseModel]:
    """{"P1": true, ...}: one verdict per listed preference, by its label (the model cannot reorder)."""
    fields: dict[str, Any] = {
        f"P{i + 1}": (bool, Field(description="true: the message lets a reader infer it")) for i in range(n)
    }
    return create_model("RevealJudgement", __base__=Draft, **fields)


def verdicts(job: RevealJob, res: LLMResult[Any]) -> list[bool | None]:
    if res.value is None:
        return [None] * len(job.preferences)
    return [bool(getattr(res.value, f"P{i + 1}")) for i in range(len(job.preferences))]


REVEAL: LLMCall[RevealJob, list[bool | None]] = LLMCall(
    name="queries/reveal",
    variables=("before", "turn", "preferences"),
    render=lambda job: {"before": job.before, "turn": job.turn, "preferences": job.preferences},
    build=verdicts,
    response=lambda job: judgement_model(len(job.preferences)),
    max_tokens=lambda job: 20 + 12 * len(job.preferences),
    role="judge",
    temperature=0.0,
    sample=lambda s: RevealJob(
        (), s.query.personalized_query, (s.persona.persona.Preference.Preferred_Formats,)
    ),
)


def marks_for(
    text: str, planned: Sequence[PlannedReveal], said: Sequence[bool | None], others: Sequence[PlannedReveal]
) -> list[RevealMark]:
    """The marks of one user turn: its planned reveals with code's check and the judge's verdict, plus any
    other planned value the turn states outright (code saw it; the judge was not asked)."""
    marks = [
        RevealMark(key=r.key, mode=r.mode, who=r.who, stated=stated(r.value, text), confirmed=v)
        for r, v in zip(planned, said, strict=True)
    ]
    seen = {(m.key, m.who) for m in marks}
    for r in others:
        if (r.key, r.who) not in seen and stated(r.value, text):
            marks.append(RevealMark(key=r.key, mode=r.mode, who=r.who, stated=True))
            seen.add((r.key, r.who))
    return marks


def calibration_jobs(path: Path = CALIBRATION) -> list[tuple[RevealJob, str]]:
    """(the judge's input, implicit | explicit | absent) for every hand-written item."""
    try:
        df = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise UserError(f"reveal calibration items {path}: {e}: restore the shipped file") from None
    if missing := [c for c in CALIBRATION_COLUMNS if c not in df.columns]:
        raise UserError(f"reveal calibration items {path}: missing column(s) {', '.join(missing)}")
    if bad := sorted(set(df["revealed"].to_list()) - {"implicit", "explicit", "absent"}):
        raise UserError(
            f"reveal calibration items {path}: revealed must be implicit, explicit or absent: {bad[0]}"
        )
    return [
        (RevealJob((), r["message"], (r["preference"],)), r["revealed"]) for r in df.iter_rows(named=True)
    ]


async def calibrate(llm: LLM, min_accuracy: float, path: Path = CALIBRATION) -> JudgeCalibration:
    """The judge on every calibration item: revealed (implicit or explicit) must read true, absent false."""
    jobs = calibration_jobs(path)
    said = await asyncio.gather(*(llm.run(REVEAL, job, stage="queries") for job, _ in jobs))
    hits = {True: 0, False: 0}
    totals = {True: 0, False: 0}
    invalid = 0
    for (_, label), got in zip(jobs, said, strict=True):
        right = label != "absent"
        totals[right] += 1
        hits[right] += got[0] is right
        invalid += got[0] is None
    rates = [hits[k] / totals[k] for k in (True, False) if totals[k]]
    accuracy = sum(rates) / len(rates) if rates else 0.0
    return JudgeCalibration(
        call=REVEAL.name,
        items=len(jobs),
        right_on_answerable=hits[True],
        answerable=totals[True],
        right_on_unanswerable=hits[False],
        unanswerable=totals[False],
        invalid=invalid,
        balanced_accuracy=round(accuracy, 4),
        min_accuracy=min_accuracy,
        trusted=accuracy >= min_accuracy,
    )


_runs: weakref.WeakKeyDictionary[LLM, asyncio.Task[JudgeCalibration]] = weakref.WeakKeyDictionary()


async def reveal_calibration(llm: LLM, min_accuracy: float) -> JudgeCalibration | None:
    """The run's calibration of the reveal judge, asked once per LLM client; None when off (0)."""
    if min_accuracy <= 0:
        return None
    task = _runs.get(llm)
    if task is None:
        task = _runs[llm] = asyncio.ensure_future(calibrate(llm, min_accuracy))
    return await asyncio.shield(task)


# ---------------------------------------------------------------- what the conversations hold


def conversation_stats(rows: Sequence[DatasetRow]) -> ConversationStats:
    """The manifest's account of the sessions: turns, own-history size, and what the reveals came to."""
    by_persona: dict[str, list[DatasetRow]] = {}
    for r in rows:
        by_persona.setdefault(r.persona_id, []).append(r)
    tokens = sorted(sum(count_tokens(t.content) for r in rs for t in r.turns) for rs in by_persona.values())
    prefs = [len(in_force(rs[0].persona, max(r.session_index for r in rs))) for rs in by_persona.values()]
    marks = [m for r in rows for t in r.turns for m in t.reveals]
    mine = [m for m in marks if m.who == "self"]
    implicit = [m for m in mine if m.mode == "implicit"]
    hidden = [m for m in implicit if not m.stated]
    judged = [m for m in hidden if m.confirmed is not None]
    traps = [m for m in marks if m.who == "others"]
    n = len(rows)
    return ConversationStats(
        sessions=n,
        turns_per_session=round(sum(len(r.turns) for r in rows) / n, 3) if n else 0.0,
        user_turns_per_session=round(sum(t.role == "user" for r in rows for t in r.turns) / n, 3)
        if n
        else 0.0,
        history_tokens_min=tokens[0] if tokens else 0,
        history_tokens_median=tokens[len(tokens) // 2] if tokens else 0,
        history_tokens_max=tokens[-1] if tokens else 0,
        preferences_per_persona=round(sum(prefs) / len(prefs), 3) if prefs else 0.0,
        planned_reveals=sum(r.who == "self" for row in rows for r in row.planned_reveals),
        planned_traps=sum(r.who == "others" for row in rows for r in row.planned_reveals),
        implicit_asked=len(implicit),
        implicit_stated=len(implicit) - len(hidden),
        implicit_confirmed=sum(m.confirmed is True for m in judged),
        implicit_judged=len(judged),
        evidence_marks=sum(m.confirmed is not False for m in mine),
        traps_taken_as_user=sum(m.confirmed is True for m in traps),
        tokenizer=tokenizer(),
    )
