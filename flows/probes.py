"""Probes: evaluation items built after stage 5 from the kept sessions and the ground truth.

Code chooses what each item asks (a persona field at a checkpoint session), the value in force (the
answer key), what each distractor must embody (the outdated value before a change, another persona's
value, a contradiction, a generic reply), which kept sessions revealed it, and the option order. The
LLM writes the user's question and the four replies; code then checks each reply embodies what it was
asked to (and each distractor contradicts the value in force) before the item is kept.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

from rapidfuzz import fuzz

from personaloom.drift import as_text, get_value, persona_at
from personaloom.filtering.grounding import content_tokens
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.drafts import Draft
from personaloom.schemas.probes import OptionKind, ProbeItem
from personaloom.schemas.records import DatasetRow, Persona, PreferenceChange, Rejection
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome, map_async

NAME = "probes"
TYPES = {
    "recall": "recalling_facts_mentioned_by_the_user",
    "latest": "recalling_the_latest_user_preferences",
    "evolution": "tracking_the_full_sequence_of_preference_updates",
    "reason": "recalling_the_reasons_behind_previous_updates",
    "recommend": "recommendation_aligned_with_users_latest_preferences",
    "new": "identifying_new_things_not_mentioned_by_the_user",
    "generalize": "generalizing_past_reasons_in_memory_to_new_scenarios",
}
LEARNABLE = ("Personality.", "Pattern.", "Preference.", "Communication.")
DISTINCT = 92.0  # rapidfuzz ratio above which two options count as the same reply


class Spec(NamedTuple):
    """What one item asks, decided by code before any LLM call."""

    persona_id: str
    checkpoint: int
    kind: str  # a key of TYPES
    path: str
    truth: str
    outdated: str  # the value before the change ("" when the field never changed)
    other: str  # another persona's value of the same field
    evidence: tuple[int, ...]
    distance_sessions: int
    distance_tokens: int
    seed: int
    persona: Persona  # in force at the checkpoint


class ProbeDraft(Draft):
    question: str
    correct: str
    outdated: str = ""
    other_persona: str = ""
    contradiction: str = ""
    generic: str = ""
    fabricated: str = ""


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def _tokens(rows: Sequence[DatasetRow]) -> int:
    return sum(len(r.personalized_query) + len(r.expected_response) for r in rows) // 4


def _newest_per_field(changes: Sequence[PreferenceChange], upto: int) -> dict[str, list[PreferenceChange]]:
    by_field: dict[str, list[PreferenceChange]] = defaultdict(list)
    for c in sorted(changes, key=lambda c: c.effective_session):
        if c.effective_session <= upto:
            by_field[c.field].append(c)
    return by_field


def plan_specs(rows: Sequence[DatasetRow], others: dict[str, Persona]) -> list[Spec]:
    """The items of one persona at its last kept session: at most one per type, each with evidence.

    `others` maps other persona ids to their persona in force at the end, for the other-persona distractor.
    """
    rows = sorted(rows, key=lambda r: r.session_index)
    checkpoint = rows[-1].session_index
    base = rows[-1].persona
    now = persona_at(base, checkpoint)
    pid = rows[-1].persona_id
    changed = _newest_per_field(base.Changes, checkpoint)
    other_pool = [p for k, p in sorted(others.items()) if k != pid]

    def other_value(path: str, truth: str) -> str:
        for p in other_pool:
            value = as_text(get_value(p, path))
            if fuzz.ratio(value.lower(), truth.lower()) < 70:
                return value
        return ""

    def evidence(path: str, since: int = 0) -> tuple[int, ...]:
        return tuple(r.session_index for r in rows if since <= r.session_index and path in r.revealed_fields)

    def spec(kind: str, path: str, truth: str, outdated: str = "", since: int = 0) -> Spec | None:
        ev = evidence(path, since)
        if not ev or not truth.strip():
            return None
        between = [r for r in rows if ev[-1] < r.session_index <= checkpoint]
        return Spec(
            persona_id=pid,
            checkpoint=checkpoint,
            kind=kind,
            path=path,
            truth=truth,
            outdated=outdated,
            other=other_value(path, truth),
            evidence=ev,
            distance_sessions=checkpoint - ev[-1],
            distance_tokens=_tokens(between),
            seed=_seed(pid, checkpoint, kind, path),
            persona=now,
        )

    out: list[Spec | None] = []
    # change items: for each type, the most recently changed field the kept sessions give evidence of
    newest_first = sorted(changed.items(), key=lambda kv: -kv[1][-1].effective_session)

    def first(make: Any) -> Spec | None:
        return next((sp for path, chain in newest_first if (sp := make(path, chain)) is not None), None)

    out.append(first(lambda p, ch: spec("latest", p, ch[-1].after, ch[-1].before, ch[-1].effective_session)))
    # the whole chain is the truth: its first value is part of it, so no "outdated" distractor here
    out.append(
        first(
            lambda p, ch: spec(
                "evolution",
                p,
                " → ".join([ch[0].before, *(c.after for c in ch)]),
                "",
                ch[0].effective_session,
            )
        )
    )
    out.append(first(lambda p, ch: spec("reason", p, ch[-1].reason, "", ch[-1].effective_session)))
    out.append(
        first(
            lambda p, ch: spec(
                "generalize",
                p,
                f"{ch[-1].after} (because {ch[-1].reason})",
                ch[-1].before,
                ch[-1].effective_session,
            )
        )
    )
    stable = [
        p
        for p in ("Preference.Preferred_Formats", "Preference.Preferred_Styles", "Pattern.Usage_Pattern")
        if p not in changed
    ]
    recalled = next((p for r in rows for p in r.revealed_fields if p in stable), None)
    if recalled:
        out.append(spec("recall", recalled, as_text(get_value(now, recalled))))
    prefs = [p for p in changed if p.startswith("Preference.")] or ["Preference.Preferred_Formats"]
    target = prefs[0]
    before = changed[target][-1].before if target in changed else ""
    out.append(spec("recommend", target, as_text(get_value(now, target)), before))
    interests = "Personality.Values_and_Interests"
    out.append(spec("new", interests, as_text(get_value(now, interests))))
    return [s for s in out if s is not None]


# ---------------------------------------------------------------- the LLM writes, code checks


def coverage(reply: str, value: str) -> float:
    """Share of the value's content words the reply carries (0 when the value has none)."""
    want = content_tokens(value)
    return len(want & content_tokens(reply)) / len(want) if want else 0.0


def option_plan(spec: Spec) -> list[OptionKind]:
    """The correct reply first, then three distractors: outdated and other-persona values when they exist.

    A persona with no change on the field and no other persona to borrow from (a one-persona build)
    still gets three: a contradiction, a generic reply, and a preference the user never stated.
    """
    have: list[tuple[OptionKind, bool]] = [
        ("outdated", bool(spec.outdated)),
        ("other_persona", bool(spec.other)),
        ("contradiction", True),
        ("generic", True),
        ("fabricated", True),
    ]
    return ["correct", *[k for k, ok in have if ok][:3]]


def validate(spec: Spec, draft: ProbeDraft, kinds: list[OptionKind]) -> str | None:
    """None when every reply embodies what it should; else the failed check (the rejection reason)."""
    texts = {k: getattr(draft, k).strip() for k in kinds if k != "correct"} | {
        "correct": draft.correct.strip()
    }
    if any(not t for t in texts.values()) or not draft.question.strip():
        return "probe_missing_option"
    values = list(texts.values())
    if any(fuzz.ratio(a, b) >= DISTINCT for i, a in enumerate(values) for b in values[i + 1 :]):
        return "probe_options_not_distinct"
    correct = coverage(texts["correct"], spec.truth)
    if correct == 0:
        return "probe_correct_not_grounded"
    for kind in kinds[1:]:
        text = texts[kind]
        if coverage(text, spec.truth) >= correct:
            return f"probe_{kind}_agrees_with_truth"
        source = {"outdated": spec.outdated, "other_persona": spec.other}.get(kind)
        if source and coverage(text, source) <= coverage(text, spec.truth):
            return f"probe_{kind}_not_grounded"
        if source and coverage(texts["correct"], source) >= correct:
            return "probe_correct_matches_a_distractor"
    return None


def build_probe(spec: Spec, res: LLMResult[Any]) -> ProbeItem | Rejection:
    kinds = option_plan(spec)
    row_id = f"{spec.persona_id}-c{spec.checkpoint:03d}-{spec.kind}"
    if res.value is None:
        return Rejection(
            stage=NAME,
            row_id=row_id,
            persona_id=spec.persona_id,
            reason="llm_invalid_output",
            detail=res.error,
            raw_output=res.raw,
        )
    failed = validate(spec, res.value, kinds)
    if failed:
        return Rejection(
            stage=NAME, row_id=row_id, persona_id=spec.persona_id, reason=failed, raw_output=res.raw
        )
    order = list(range(4))
    random.Random(spec.seed).shuffle(order)  # the row's seed: reproducible, balanced over items
    texts = [getattr(res.value, k).strip() for k in kinds]
    return ProbeItem(
        probe_id=row_id,
        persona_id=spec.persona_id,
        checkpoint_session=spec.checkpoint,
        type=TYPES[spec.kind],  # type: ignore[arg-type]
        path=spec.path,  # type: ignore[arg-type]
        question=res.value.question.strip(),
        options=[texts[i] for i in order],
        answer=order.index(0),
        option_kinds=[kinds[i] for i in order],
        truth=spec.truth,
        outdated=spec.outdated,
        language=spec.persona.Demographics.Interaction_Language,
        evidence_sessions=list(spec.evidence),
        distance_sessions=spec.distance_sessions,
        distance_tokens=spec.distance_tokens,
        seed=spec.seed,
    )


WRITE: LLMCall[Spec, ProbeItem | Rejection] = LLMCall(
    name="probes/write",
    variables=("persona", "kind", "field", "truth", "outdated", "other", "distractors", "language"),
    render=lambda s: {
        "persona": s.persona,
        "language": s.persona.Demographics.Interaction_Language,
        "kind": s.kind,
        "field": s.path,
        "truth": s.truth,
        "outdated": s.outdated,
        "other": s.other,
        "distractors": option_plan(s)[1:],
    },
    build=build_probe,
    response=ProbeDraft,
    max_tokens=900,
    sample=lambda s: Spec(
        persona_id=s.persona.persona_id,
        checkpoint=3,
        kind="latest",
        path="Preference.Preferred_Formats",
        truth="short bullet points",
        outdated=s.persona.persona.Preference.Preferred_Formats,
        other="long narrated explanations",
        evidence=(2,),
        distance_sessions=1,
        distance_tokens=120,
        seed=7,
        persona=s.persona.persona,
    ),
)


def _finals(rows: Sequence[DatasetRow]) -> dict[str, Persona]:
    """Each persona in force at its last kept session."""
    last: dict[str, DatasetRow] = {}
    for r in rows:
        if r.persona_id not in last or r.session_index > last[r.persona_id].session_index:
            last[r.persona_id] = r
    return {pid: persona_at(r.persona, r.session_index) for pid, r in last.items()}


def _key(item: ProbeItem) -> str:
    """Two items ask the same when their question and correct reply read the same (case, spacing aside)."""
    correct = item.options[item.answer]
    return " ".join(f"{item.question}\n{correct}".casefold().split())


def dedup(items: Sequence[ProbeItem], earlier: Sequence[ProbeItem] = ()) -> StageOutcome[ProbeItem]:
    """Drop an item that repeats an earlier version's item or one before it in this run."""
    seen = {_key(i): i.probe_id for i in earlier}
    out: StageOutcome[ProbeItem] = StageOutcome()
    for item in items:
        if (first := seen.setdefault(_key(item), item.probe_id)) != item.probe_id:
            out.rejections.append(
                Rejection(
                    stage=NAME,
                    row_id=item.probe_id,
                    persona_id=item.persona_id,
                    reason="duplicate_probe",
                    detail=f"duplicate of {first}",
                    raw_output=item.question,
                )
            )
        else:
            out.records.append(item)
    return out


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[ProbeItem]:
    if not ctx.config.probes:
        return StageOutcome()
    by_persona: dict[str, list[DatasetRow]] = defaultdict(list)
    for row in inputs["dataset"]:
        by_persona[row.persona_id].append(row)
    # a grown build: earlier personas lend other-persona distractors, earlier items are not repeated
    finals = _finals(ctx.earlier("dataset")) | _finals(inputs["dataset"])
    specs = [s for pid in sorted(by_persona) for s in plan_specs(by_persona[pid], finals)]
    written = StageOutcome.split(await map_async(specs, lambda s: ctx.llm.run(WRITE, s), ctx.advance))
    return written.then(dedup(written.records, ctx.earlier("probes")))


STAGE = Stage(
    name="probes",
    inputs=("dataset",),
    output="probes",
    record=ProbeItem,
    run=run,
    scope="dataset",
    calls=(WRITE,),
    rows_in=lambda cfg, n: n["probes"] + n["rejected:probes"],  # the items planned
)


# ---------------------------------------------------------------- the history an item is asked after


def history(
    rows: Sequence[DatasetRow],
    checkpoint: int,
    *,
    replies: dict[int, str] | None = None,
    context_tokens: int | None = None,
    filler: Sequence[DatasetRow] = (),
    keep: Sequence[int] = (),
) -> list[dict[str, str]]:
    """The user's sessions up to the checkpoint as chat messages.

    Assistant turns are the expected responses, or the agent's actual replies of a replay run
    (`replies`: session → text). `context_tokens` caps the history (the oldest sessions not in `keep`
    go first) or pads it to about that size with unrelated sessions (`filler`, other personas'),
    placed before the user's own, so one version serves short and long contexts.
    """
    mine = sorted((r for r in rows if r.session_index <= checkpoint), key=lambda r: r.session_index)

    def turns(r: DatasetRow, own: bool) -> list[dict[str, str]]:
        # the agent's actual replies belong to this user's sessions only, never to the padding
        reply = (replies or {}).get(r.session_index, r.expected_response) if own else r.expected_response
        return [{"role": "user", "content": r.personalized_query}, {"role": "assistant", "content": reply}]

    if context_tokens is not None:
        while _tokens(mine) > context_tokens and any(r.session_index not in keep for r in mine):
            mine.remove(next(r for r in mine if r.session_index not in keep))
    pad: list[DatasetRow] = []
    if context_tokens is not None:
        for r in filler:
            if _tokens(mine) + _tokens(pad) >= context_tokens:
                break
            pad.append(r)
    return [m for r in pad for m in turns(r, False)] + [m for r in mine for m in turns(r, True)]


def message_tokens(messages: Sequence[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages) // 4
