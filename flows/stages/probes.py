"""Probes: evaluation items built after stage 5 from the kept sessions and the ground truth.

Code decides everything a reader could score on: what each item asks (a persona field at a checkpoint
session), the value in force (the key), the concrete value each distractor stands for (the value before
a change, other users' values of the same field by a seeded rotation, this user's other reasons, a
reordered sequence, things the user did mention), which kept sessions show it, and the option order.
No option is generic: every option is a concrete, plausible value of the same kind.

The LLM writes the user's question and one reply frame per option, *blind*: it sees the four values as A–D
in the order the item shows them, not which one holds, so whatever it leaks it leaks for all four. Code
puts each value into its frame verbatim, then checks the form (no empty or twin option, no frame naming
another option's value, no question naming any value, every length within a band around the median;
a failing answer is drawn again, then rejected). Last, `stages/blind.py` keeps every blind rule and the
judge model asked without history at chance over the kept items.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple, TypeVar

import orjson
from rapidfuzz import fuzz

from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.schemas.drafts import Draft
from personaloom.schemas.fine import fine_alternatives
from personaloom.schemas.probes import OptionKind, ProbeItem
from personaloom.schemas.records import DatasetRow, Persona, PreferenceChange, Rejection, Turn, evidence_keys
from personaloom.stages import blind
from personaloom.stages.base import Inputs, Stage, StageContext, StageOutcome
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.drift import REASON, as_text, get_value, persona_at
from personaloom.stages.filter.grounding import content_tokens, mentions
from personaloom.text.tokens import count as count_tokens

NAME = "probes"
T = TypeVar("T")
TYPES = {
    "recall": "recalling_facts_mentioned_by_the_user",
    "latest": "recalling_the_latest_user_preferences",
    "evolution": "tracking_the_full_sequence_of_preference_updates",
    "reason": "recalling_the_reasons_behind_previous_updates",
    "recommend": "recommendation_aligned_with_users_latest_preferences",
    "new": "identifying_new_things_not_mentioned_by_the_user",
    "generalize": "generalizing_past_reasons_in_memory_to_new_scenarios",
}
KIND_OF = {v: k for k, v in TYPES.items()}
LETTERS = "ABCD"
DISTINCT = 92.0  # rapidfuzz ratio above which two options count as the same reply
VALUES_APART = 70.0  # two values closer than this (rapidfuzz ratio) could both be read as the truth
LENGTH_BAND = (0.5, 2.0)  # every option's length against the item's median
STABLE_FIELDS = ("Preference.Preferred_Formats", "Preference.Preferred_Styles", "Pattern.Usage_Pattern")
# persona field → the seed attribute pool of plausible values of it (seeds/attributes.json)
SEED_POOLS = {
    "Pattern.Behavior_Engagement_Pattern": "behavior_engagement",
    "Pattern.Usage_Pattern": "usage",
    "Pattern.Emotion_Pattern": "emotion",
    "Pattern.Purchase_Pattern": "purchase",
    "Preference.Preferred_Styles": "preferred_styles",
    "Preference.Preferred_Formats": "preferred_formats",
    "Preference.Preferred_Workflows": "preferred_workflows",
    "Communication.formality": "formality",
    "Communication.verbosity": "verbosity",
    "Communication.proactivity": "proactivity",
    "Communication.emotional_tone": "emotional_tone",
}


class Spec(NamedTuple):
    """What one item asks, decided by code before any LLM call."""

    persona_id: str
    checkpoint: int
    kind: str  # a key of TYPES
    path: str
    truth: str
    values: tuple[str, ...]  # the four options' values, in the order shown (seeded)
    kinds: tuple[OptionKind, ...]  # what each stands for; exactly one "correct"
    outdated: str  # the value before the change ("" when the field never changed)
    evidence: tuple[int, ...]
    distance_sessions: int
    distance_tokens: int
    seed: int
    language: str
    evidence_turns: tuple[str, ...] = ()  # the user turns in the evidence sessions that reveal it

    @property
    def answer(self) -> int:
        return self.kinds.index("correct")

    @property
    def probe_id(self) -> str:
        return f"{self.persona_id}-c{self.checkpoint:03d}-{self.kind}"


class ProbeDraft(Draft):
    question: str
    reply_a: str
    reply_b: str
    reply_c: str
    reply_d: str

    def frames(self) -> list[str]:
        return [self.reply_a, self.reply_b, self.reply_c, self.reply_d]


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def said_turns(row: DatasetRow) -> list[Turn]:
    """A session's conversation as said (a version before conversations: its opening alone)."""
    if row.turns:
        return list(row.turns)
    return [Turn(turn_id=f"{row.query_id}-t0", role="user", content=row.personalized_query)]


def user_turns(row: DatasetRow) -> list[Turn]:
    return [t for t in said_turns(row) if t.role == "user"]


def _tokens(rows: Sequence[DatasetRow]) -> int:
    return sum(count_tokens(t.content) for r in rows for t in said_turns(r))


def _newest_per_field(changes: Sequence[PreferenceChange], upto: int) -> dict[str, list[PreferenceChange]]:
    by_field: dict[str, list[PreferenceChange]] = defaultdict(list)
    for c in sorted(changes, key=lambda c: c.effective_session):
        if c.effective_session <= upto:
            by_field[c.field].append(c)
    return by_field


@lru_cache(maxsize=1024)
def _alternatives(path: str) -> frozenset[str]:
    """`fine_alternatives` as a set, read once per field (`apart` asks it for every pair of values)."""
    return frozenset(fine_alternatives(path))


def apart(value: str, others: Sequence[str], path: str = "") -> bool:
    """`value` cannot be mistaken for any of `others`: different text and different content words.

    Of a fine-grained preference (`path` Fine.<id>), the table's alternatives are exclusive by
    construction ("takes coffee black" / "with milk"): there, different text is enough.
    """
    alternatives = _alternatives(path) if path else frozenset()
    if alternatives and value in alternatives and all(o in alternatives for o in others):
        return value.casefold() not in {o.casefold() for o in others}
    mine = content_tokens(value)
    for o in others:
        theirs = content_tokens(o)
        shared = len(mine & theirs) / len(mine | theirs) if mine | theirs else 1.0
        if fuzz.ratio(value.casefold(), o.casefold()) >= VALUES_APART or shared >= 0.5:
            return False
    return True


# ---------------------------------------------------------------- planning: code owns every value


class Pools:
    """Values of other users (each persona in force at its last kept session), for distractors."""

    def __init__(self, finals: dict[str, Persona], bases: dict[str, Persona]) -> None:
        self.ids = sorted(finals)
        self.finals = finals
        self.bases = bases
        self.reasons = {pid: [c.reason for c in bases[pid].Changes if c.reason.strip()] for pid in bases}
        # Each field read once, in `ids` order: every item's distractors walk the other personas' values
        self._position = {pid: i for i, pid in enumerate(self.ids)}
        self._texts: dict[str, list[str]] = {}
        self._pairs: dict[str, list[tuple[str, str] | None]] = {}

    def texts(self, path: str) -> list[str]:
        """Every persona's value of the field at its last kept session, as text (`ids` order)."""
        column = self._texts.get(path)
        if column is None:
            column = self._texts[path] = [as_text(get_value(self.finals[p], path)).strip() for p in self.ids]
        return column

    def pairs(self, path: str) -> list[tuple[str, str] | None]:
        """Every persona's (value now, the value its last change of the field replaced), None when it never
        changed the field (`ids` order)."""
        column = self._pairs.get(path)
        if column is None:
            column = []
            for pid, now in zip(self.ids, self.texts(path), strict=True):
                changes = [c for c in self.bases[pid].Changes if c.field == path]
                column.append((now, changes[-1].before.strip()) if changes else None)
            self._pairs[path] = column
        return column

    def rotation(self, pid: str, seed: int) -> list[str]:
        """Other persona ids from a seeded start: no single persona lends most distractors."""
        return self._rotated(self.ids, pid, seed)

    def _rotated(self, column: list[T], pid: str, seed: int) -> list[T]:
        """A column (`ids` order) without `pid`'s entry, in `rotation`'s order."""
        i = self._position.get(pid)
        others = column if i is None else column[:i] + column[i + 1 :]
        if not others:
            return []
        start = seed % len(others)
        return others[start:] + others[:start]

    def values(self, pid: str, path: str, taken: list[str], k: int, seed: int) -> list[str]:
        out: list[str] = []
        # A value asked once is not asked again: taken, or not apart from `taken + out`, which only grows
        # (so it stays not apart): the same answer for a fraction of the fuzzy comparisons.
        asked: set[str] = set()
        for value in self._rotated(self.texts(path), pid, seed):
            if not value or value in asked:
                continue
            asked.add(value)
            if apart(value, taken + out, path):
                out.append(value)
                if len(out) == k:
                    break
        return out

    def changed_pair(self, pid: str, path: str, taken: list[str], seed: int) -> list[str]:
        """Another user's value of the field and the one it replaced: a pair as alike as the key and its
        outdated value are, so 'pick one of the two look-alike options' is no shortcut."""
        asked: set[tuple[str, str]] = set()  # the answer for a pair depends on the pair alone
        for pair in self._rotated(self.pairs(path), pid, seed):
            if pair is None or pair in asked:
                continue
            asked.add(pair)
            now, before = pair
            if now and before and apart(now, [*taken, before], path) and apart(before, taken, path):
                return [now, before]
        return []

    def other_reasons(self, pid: str, taken: list[str], k: int, seed: int) -> list[str]:
        out: list[str] = []
        for other in self.rotation(pid, seed):
            for reason in self.reasons.get(other, []):
                if apart(reason, taken + out):
                    out.append(reason)
                    break
            if len(out) == k:
                break
        return out


class Candidate(NamedTuple):
    path: str
    truth: str
    distractors: list[tuple[OptionKind, str]]
    outdated: str
    evidence: tuple[int, ...]


class Planner:
    """The items of one persona: at each kept session (a checkpoint), the types whose key the history
    up to it backs, each with its evidence, concrete values and a seeded option order."""

    def __init__(self, rows: Sequence[DatasetRow], pools: Pools, cat: Catalogue, per_checkpoint: int) -> None:
        self.rows = sorted(rows, key=lambda r: r.session_index)
        self.base = self.rows[-1].persona
        self.pid = self.rows[-1].persona_id
        self.language = self.base.Demographics.Interaction_Language
        self.pools, self.cat, self.per_checkpoint = pools, cat, per_checkpoint
        # (type, field) → items planned so far: each type turns to the fields it asked least, so that
        # checkpoints in a row do not ask the same thing again
        self.used: Counter[tuple[str, str]] = Counter()
        self.kind = ""
        self._at: dict[int, Persona] = {}

    def plan(self) -> list[Spec]:
        out: list[Spec] = []
        for row in self.rows[1:]:  # the first kept session has no history before it to ask about
            c = row.session_index
            found = [s for kind in TYPES if (s := self.spec(kind, c)) is not None]
            random.Random(_seed(self.pid, c, "types")).shuffle(found)
            for s in found[: self.per_checkpoint]:
                self.used[(s.kind, s.path)] += 1
                out.append(s)
        return out

    def at(self, c: int) -> Persona:
        """The user as they are at session c (`persona_at`, worked out once per checkpoint)."""
        persona = self._at.get(c)
        if persona is None:
            persona = self._at[c] = persona_at(self.base, c)
        return persona

    def least_used(self, paths: Sequence[str]) -> list[str]:
        """`paths` with the ones this type asked least first (stable: the given order among equals)."""
        return sorted(paths, key=lambda p: self.used[(self.kind, p)])

    @staticmethod
    def backed(evidence: tuple[int, ...], c: int) -> bool:
        """Evidence before the checkpoint (never the checkpoint session alone)."""
        return bool(evidence) and min(evidence) < c

    def spec(self, kind: str, c: int) -> Spec | None:
        seed = _seed(self.pid, c, kind)
        self.kind = kind
        got: Candidate | None = getattr(self, f"_{kind}")(c, seed)
        if got is None or len(got.distractors) < 3 or not got.truth.strip():
            return None
        if not self.backed(got.evidence, c):
            return None
        options: list[tuple[OptionKind, str]] = [("correct", got.truth), *got.distractors[:3]]
        random.Random(seed).shuffle(options)  # the row's seed: reproducible, balanced over items
        between = [r for r in self.rows if got.evidence[-1] < r.session_index <= c]
        return Spec(
            persona_id=self.pid,
            checkpoint=c,
            kind=kind,
            path=got.path,
            truth=got.truth,
            values=tuple(v for _, v in options),
            kinds=tuple(k for k, _ in options),
            outdated=got.outdated,
            evidence=got.evidence,
            distance_sessions=c - got.evidence[-1],
            distance_tokens=_tokens(between),
            seed=seed,
            language=self.language,
            evidence_turns=self.evidence_turns(got),
        )

    # ------------------------------------------------------------ evidence

    def shows(self, path: str, c: int, since: int = 0) -> tuple[int, ...]:
        """Kept sessions in since..c whose query reveals the field."""
        return tuple(
            r.session_index for r in self.rows if since <= r.session_index <= c and path in r.revealed_fields
        )

    def said(self, text: str, c: int, since: int = 0, key: str = "") -> tuple[int, ...]:
        """Kept sessions in since..c where a user turn carries the text's content words (or, given a
        reveal key, is evidence for it: `Turn.reveals`)."""
        return tuple(
            r.session_index
            for r in self.rows
            if since <= r.session_index <= c
            and any(mentions(t.content, text) or key in evidence_keys(t) for t in user_turns(r))
        )

    def evidence_turns(self, got: Candidate) -> tuple[str, ...]:
        """The user turns of the evidence sessions that reveal the item: marked for its field (or the
        reason of its change), or carrying one of its values or reasons; a session with none: all of them."""
        keys = {got.path, got.path + REASON}
        texts = [got.truth, got.outdated, *(v for _, v in got.distractors)]
        texts += [ch.reason for ch in self.base.Changes if ch.field == got.path]
        out: list[str] = []
        for r in self.rows:
            if r.session_index not in got.evidence:
                continue
            turns = user_turns(r)
            hits = [
                t.turn_id
                for t in turns
                if keys & evidence_keys(t) or any(x.strip() and mentions(t.content, x) for x in texts)
            ]
            out += hits or [t.turn_id for t in turns]
        return tuple(out)

    def traps(self, path: str) -> list[str]:
        """Values of the field the user said were someone else's (a trap mark code saw in a turn)."""
        said = {
            m.key
            for r in self.rows
            for t in user_turns(r)
            for m in t.reveals
            if m.who == "others" and m.stated
        }
        return [
            p.value
            for r in self.rows
            for p in r.planned_reveals
            if p.who == "others" and p.key == path and p.key in said
        ]

    def others(self, path: str, taken: list[str], k: int, seed: int) -> list[tuple[OptionKind, str]]:
        """Someone else's value the user mentioned (one, when there is one), other users' values of the
        field; too few users (a small build): values from the seed tables."""
        found: list[tuple[OptionKind, str]] = [
            ("someone_else", v)
            for v in self.traps(path)
            if apart(v, taken, path) and not mentions(" ".join(taken), v)
        ][:1]
        found += [
            ("other_persona", v)
            for v in self.pools.values(self.pid, path, [*taken, *(v for _, v in found)], k, seed)
        ][: k - len(found)]
        # a fine-grained preference's own alternatives (seeds/fine_preferences.csv), else the seed table's
        pool = fine_alternatives(path) or list(self.cat.attributes.get(SEED_POOLS.get(path, ""), []))
        random.Random(seed ^ 0xA17).shuffle(pool)
        for value in pool:
            if len(found) >= k:
                break
            if isinstance(value, str) and apart(value, [*taken, *(v for _, v in found)], path):
                found.append(("alternative", value))
        return found

    def changed(self, c: int) -> list[tuple[str, list[PreferenceChange]]]:
        """Fields changed by session c, the most recently changed first."""
        chains = _newest_per_field(self.base.Changes, c)
        # the fields this type asked least first, then the most recently changed
        return sorted(
            chains.items(), key=lambda kv: (self.used[(self.kind, kv[0])], -kv[1][-1].effective_session)
        )

    # ------------------------------------------------------------ the types

    def _value_in_force(self, c: int, seed: int, preference_only: bool) -> Candidate | None:
        """The value in force of the most recently changed field, with the value before it."""
        for path, chain in self.changed(c):
            if preference_only and not path.startswith("Preference."):
                continue
            last = chain[-1]
            truth = as_text(get_value(self.at(c), path))
            if not apart(last.before, [truth], path):
                continue
            rest = self.others(path, [truth, last.before], 2, seed)
            evidence = self.shows(path, c, last.effective_session)
            # a two-way habit has no third option, a field not shown since its change no evidence:
            # the next changed field may have both
            if len(rest) < 2 or not self.backed(evidence, c):
                continue
            return Candidate(path, truth, [("outdated", last.before), *rest], last.before, evidence)
        return None

    def _latest(self, c: int, seed: int) -> Candidate | None:
        return self._value_in_force(c, seed, preference_only=False)

    def _recommend(self, c: int, seed: int) -> Candidate | None:
        changed = self._value_in_force(c, seed, preference_only=True)
        if changed is not None:
            return changed
        return self._stable(c, seed, ("Preference.Preferred_Styles", "Preference.Preferred_Workflows"))

    def _recall(self, c: int, seed: int) -> Candidate | None:
        return self._stable(c, seed, STABLE_FIELDS)

    def _stable(self, c: int, seed: int, fields: Sequence[str]) -> Candidate | None:
        """A field that never changed by session c, shown before it."""
        changed = {p for p, _ in self.changed(c)}
        for path in self.least_used(fields):
            if path in changed:
                continue
            truth = as_text(get_value(self.base, path))
            evidence = self.shows(path, c)
            others = self.others(path, [truth], 3, seed)
            if len(others) == 3 and self.backed(evidence, c):
                return Candidate(path, truth, others, "", evidence)
        return None

    def _evolution(self, c: int, seed: int) -> Candidate | None:
        """The whole sequence of a field's values; the distractors are sequences of the same length."""
        for path, chain in self.changed(c):
            seq = [chain[0].before, *(ch.after for ch in chain)]
            if not apart(seq[-1], seq[:-1], path):
                continue
            truth = " → ".join(seq)
            other = self.pools.values(self.pid, path, seq, 2, seed)
            if len(other) < 2:
                continue
            wrong: list[tuple[OptionKind, str]] = [
                ("reordered", " → ".join(reversed(seq))),
                ("other_persona", " → ".join([*seq[:-1], other[0]])),
                ("other_persona", " → ".join([other[1], *seq[1:]])),
            ]
            before = self.shows(path, chain[0].effective_session - 1)
            after = self.shows(path, c, chain[-1].effective_session)
            if before and after:
                return Candidate(path, truth, wrong, chain[-1].before, before + after)
        return None

    def _reason(self, c: int, seed: int) -> Candidate | None:
        """Why the field changed: the session where the reason was said is the evidence."""
        for path, chain in self.changed(c):
            last = chain[-1]
            evidence = self.said(last.reason, c, last.effective_session, key=path + REASON)
            if not self.backed(evidence, c):
                continue
            own = [
                ("other_change", ch.reason)
                for ch in self.base.Changes
                if ch is not last and apart(ch.reason, [last.reason])
            ]
            taken = [last.reason, *(v for _, v in own)]
            rest = [("other_persona", v) for v in self.pools.other_reasons(self.pid, taken, 3, seed)]
            wrong: list[tuple[OptionKind, str]] = [*own[:1], *rest]  # type: ignore[list-item]
            if len(wrong) < 3:
                continue
            return Candidate(path, last.reason, wrong, "", evidence)
        return None

    def _generalize(self, c: int, seed: int) -> Candidate | None:
        """A new situation where the reason behind a change applies: its value, the reason said before."""
        for path, chain in self.changed(c):
            last = chain[-1]
            said = self.said(last.reason, c, last.effective_session, key=path + REASON)
            truth = as_text(get_value(self.at(c), path))
            if not self.backed(said, c) or not apart(last.before, [truth], path):
                continue
            pair = self.pools.changed_pair(self.pid, path, [truth, last.before], seed)
            rest = [("other_persona", v) for v in pair] or self.others(path, [truth, last.before], 2, seed)
            if len(rest) < 2:
                continue
            evidence = tuple(sorted(set(said) | set(self.shows(path, c, last.effective_session))))
            return Candidate(path, truth, [("outdated", last.before), *rest], last.before, evidence)
        return None

    def _new(self, c: int, seed: int) -> Candidate | None:
        """PersonaMem's 'new things': the key is an interest the user never mentioned; each distractor
        is one they did mention (a reader with the history knows it is not new)."""
        path = "Personality.Values_and_Interests"
        items = [str(v) for v in get_value(self.at(c), path)]
        mentioned = [(i, s) for i in items if (s := self.said(i, c))]
        if len(mentioned) < 3:
            return None
        mentioned = mentioned[:3]
        traps = self.traps(path)  # mentioned as someone else's: not new to a reader with the history
        fresh = [
            i
            for i in self.cat.values_interests
            if i not in items and i not in traps and apart(i, [*(m for m, _ in mentioned), *traps])
        ]
        if not fresh:
            return None
        truth = random.Random(seed).choice(fresh)
        evidence = tuple(sorted({s for _, ss in mentioned for s in ss}))
        return Candidate(path, truth, [("mentioned", m) for m, _ in mentioned], "", evidence)


def plan_specs(
    rows: Sequence[DatasetRow], pools: Pools, cat: Catalogue, per_checkpoint: int = 2
) -> list[Spec]:
    return Planner(rows, pools, cat, per_checkpoint).plan()


# ---------------------------------------------------------------- the LLM writes blind, code checks the form


def _placeholder(letter: str) -> str:
    return f"[{letter}]"


def assemble(spec: Spec, draft: ProbeDraft) -> list[str]:
    """Each option: its frame with the value put in by code. A frame that holds its own marker exactly
    once (and no other) takes the value there; otherwise every option of the item reads `"value": frame`,
    so the form is the same for all four."""
    frames = [f.strip() for f in draft.frames()]
    inline = all(
        f.count(_placeholder(x)) == 1 and not any(_placeholder(y) in f for y in LETTERS if y != x)
        for x, f in zip(LETTERS, frames, strict=True)
    )
    if inline:
        return [
            f.replace(_placeholder(x), f'"{v}"') for x, f, v in zip(LETTERS, frames, spec.values, strict=True)
        ]
    clean = [re.sub(r"\[[A-D]\]", "", f).strip() for f in frames]
    return [f'"{v}": {f}' for v, f in zip(spec.values, clean, strict=True)]


def form_problem(spec: Spec, draft: ProbeDraft) -> str | None:
    """None when no option can be told apart by its form; else the rejection reason."""
    frames = [f.strip() for f in draft.frames()]
    question = draft.question.strip()
    if not question or any(not f for f in frames):
        return "probe_missing_option"
    options = assemble(spec, draft)
    if any(fuzz.ratio(a, b) >= DISTINCT for i, a in enumerate(options) for b in options[i + 1 :]):
        return "probe_options_not_distinct"
    words = [content_tokens(v) for v in spec.values]
    for i, frame in enumerate(frames):
        carried = content_tokens(frame)
        for j, value_words in enumerate(words):
            own = value_words - words[i]
            if j != i and len(own) >= 2 and len(own & carried) / len(own) >= 0.5:
                return "probe_option_names_another_value"
    asked = content_tokens(question)
    for value_words in words:
        own = value_words - set().union(*(w for w in words if w is not value_words))
        if len(own) >= 2 and len(own & asked) / len(own) >= 0.5:
            return "probe_question_names_a_value"
    mid = median(len(o) for o in options)
    lo, hi = LENGTH_BAND
    if any(not lo * mid <= len(o) <= hi * mid for o in options):
        return "probe_length_unbalanced"
    return None


def _check(spec: Spec, draft: Any, checks: Any) -> str | None:
    return form_problem(spec, draft)


def build_probe(spec: Spec, res: LLMResult[Any]) -> ProbeItem | Rejection:
    if res.value is None:
        return Rejection(
            stage=NAME,
            row_id=spec.probe_id,
            persona_id=spec.persona_id,
            reason="llm_invalid_output",
            detail=res.error,
            raw_output=res.raw,
        )
    if failed := form_problem(spec, res.value):
        return Rejection(
            stage=NAME, row_id=spec.probe_id, persona_id=spec.persona_id, reason=failed, raw_output=res.raw
        )
    return ProbeItem(
        probe_id=spec.probe_id,
        persona_id=spec.persona_id,
        checkpoint_session=spec.checkpoint,
        type=TYPES[spec.kind],  # type: ignore[arg-type]
        path=spec.path,  # type: ignore[arg-type]
        question=res.value.question.strip(),
        options=assemble(spec, res.value),
        answer=spec.answer,
        option_kinds=list(spec.kinds),
        option_values=list(spec.values),
        truth=spec.truth,
        outdated=spec.outdated,
        language=spec.language,
        evidence_sessions=list(spec.evidence),
        evidence_turns=list(spec.evidence_turns),
        distance_sessions=spec.distance_sessions,
        distance_tokens=spec.distance_tokens,
        seed=spec.seed,
    )


WRITE: LLMCall[Spec, ProbeItem | Rejection] = LLMCall(
    name="probes/write",
    variables=("kind", "field", "values", "language"),
    render=lambda s: {
        "kind": s.kind,
        "field": s.path,
        "values": dict(zip(LETTERS, s.values, strict=True)),
        "language": s.language,
    },
    build=build_probe,
    response=ProbeDraft,
    max_tokens=700,
    check=_check,
    sample=lambda s: Spec(
        persona_id=s.persona.persona_id,
        checkpoint=3,
        kind="latest",
        path="Preference.Preferred_Formats",
        truth="short bullet points",
        values=("long narrated explanations", "short bullet points", "colour-coded tables", "voice notes"),
        kinds=("other_persona", "correct", "outdated", "other_persona"),
        outdated="colour-coded tables",
        evidence=(2,),
        distance_sessions=1,
        distance_tokens=120,
        seed=7,
        language=s.persona.persona.Demographics.Interaction_Language,
    ),
)


# ---------------------------------------------------------------- the judge, asked without the history


def sample_item(s: Any) -> ProbeItem:
    """An item for `personaloom prompts --show` of the calls that read one (probes/*, eval/*)."""
    values = ["short bullet points", "long detailed walk-throughs", "colour-coded tables", "voice notes"]
    return ProbeItem(
        probe_id="p000000-c003-latest",
        persona_id=s.persona.persona_id,
        checkpoint_session=3,
        type="recalling_the_latest_user_preferences",
        path="Preference.Preferred_Formats",
        question="Can you summarise the offers I got?",
        options=[f'"{v}": here are the offers that way.' for v in values],
        answer=0,
        option_kinds=["correct", "outdated", "other_persona", "other_persona"],
        option_values=values,
        truth=values[0],
        outdated=values[1],
        evidence_sessions=[2],
        distance_sessions=1,
        distance_tokens=100,
        seed=1,
    )


class BlindChoice(Draft):
    choice: str


class Blind(NamedTuple):
    item: ProbeItem
    order: tuple[int, ...]  # option indices in the order shown to the judge


def _choice(asked: Blind, res: LLMResult[Any]) -> int | None:
    letter = (res.value.choice.strip().upper()[:1] if res.value is not None else "") or "?"
    return asked.order[LETTERS.index(letter)] if letter in LETTERS else None


BLIND: LLMCall[Blind, int | None] = LLMCall(
    name="probes/blind",
    variables=("question", "options", "language"),
    render=lambda b: {
        "question": b.item.question,
        "options": dict(zip(LETTERS, (b.item.options[i] for i in b.order), strict=True)),
        "language": b.item.language,
    },
    build=_choice,
    response=BlindChoice,
    max_tokens=20,
    role="judge",
    temperature=0.0,
    sample=lambda s: Blind(sample_item(s), (0, 1, 2, 3)),
)


class Matching(Draft):
    matching: list[str]


def _matching(item: ProbeItem, res: LLMResult[Any]) -> list[int] | None:
    if res.value is None:
        return None
    letters = {m.strip().upper()[:1] for m in res.value.matching}
    return sorted(LETTERS.index(x) for x in letters if x in LETTERS)


CONFIRM: LLMCall[ProbeItem, list[int] | None] = LLMCall(
    name="probes/confirm",
    variables=("value", "field", "options", "language"),
    render=lambda i: {
        "value": i.truth,
        "field": i.path,
        "options": dict(zip(LETTERS, i.options, strict=True)),
        "language": i.language,
    },
    build=_matching,
    response=Matching,
    max_tokens=40,
    role="judge",
    temperature=0.0,
    sample=lambda s: BLIND.sample(s).item,  # type: ignore[misc]
)


def confirmed(items: Sequence[ProbeItem], verdicts: dict[str, list[int] | None]) -> StageOutcome[ProbeItem]:
    """A judge at temperature 0 confirms that exactly one option, the key, follows the value in force:
    `verdicts` holds its answer (the options it said match) to CONFIRM on each item. Asked only when the
    build's judge earned trust on items with a known answer (stage 5's calibration); an untrusted judge's
    verdict would be no evidence, so the items then go on unconfirmed (`run`)."""
    out: StageOutcome[ProbeItem] = StageOutcome()
    for item in items:
        matching = verdicts[item.probe_id]
        if matching == [item.answer]:
            out.records.append(item)
            continue
        said = "no verdict" if matching is None else f"options {[LETTERS[i] for i in matching]} match"
        out.rejections.append(
            Rejection(
                stage=NAME,
                row_id=item.probe_id,
                persona_id=item.persona_id,
                reason="probe_key_not_confirmed",
                detail=f"{said}; the key is {LETTERS[item.answer]}",
                raw_output=item.question,
            )
        )
    return out


BLIND_ORDERS = ((0, 1, 2, 3), (3, 2, 1, 0))  # the item's order, then reversed: a position bias cancels


async def judge_credit(ctx: StageContext, item: ProbeItem) -> float | None:
    """The judge model's share of orders in which it picks the key with no history (chance: 0.25);
    None when it named no option in any order (no verdict is not a wrong guess)."""
    said = await asyncio.gather(*(ctx.llm.run(BLIND, Blind(item, order)) for order in BLIND_ORDERS))
    picks = [p for p in said if p is not None]
    return sum(p == item.answer for p in picks) / len(picks) if picks else None


def gate(
    items: Sequence[ProbeItem], judged: dict[str, float], rules: dict[str, dict[str, float]] | None = None
) -> StageOutcome[ProbeItem]:
    """Keep every blind rule (and the judge without history) at chance over the kept items. `rules`: each
    item's `blind.rule_credits` by probe id, where already scored (the stage scores an item as it is done)."""
    ordered = sorted(items, key=lambda i: i.seed)  # a seeded order: no persona always goes first
    credits = []
    for item in ordered:
        scored = rules.get(item.probe_id) if rules else None
        c = (
            dict(scored)
            if scored is not None
            else blind.rule_credits(item.question, item.options, item.answer)
        )
        if item.probe_id in judged:
            c[blind.JUDGE] = judged[item.probe_id]
        credits.append(c)
    out: StageOutcome[ProbeItem] = StageOutcome()
    for item, c, kept in zip(ordered, credits, blind.select(credits), strict=True):
        if kept:
            out.records.append(item.model_copy(update={"blind_judge": judged.get(item.probe_id)}))
            continue
        leaned = [r for r, v in c.items() if v > 0] or ["none (a rule's score would fall below chance)"]
        out.rejections.append(
            Rejection(
                stage=NAME,
                row_id=item.probe_id,
                persona_id=item.persona_id,
                reason="probe_blind_answerable",
                detail="picked by " + ", ".join(leaned),
                raw_output=item.question,
            )
        )
    out.records = sorted(balance_positions(out.records), key=lambda i: i.probe_id)
    return out


def balance_positions(items: Sequence[ProbeItem]) -> list[ProbeItem]:
    """Move each key to a position drawn without replacement from blocks of A–D (seeded): over the kept
    items every position holds the key as often, so 'always pick the most common position' is chance.
    An option is a whole reply (its value is inside it), so reordering changes no text."""
    out = []
    targets: list[int] = []
    for n, item in enumerate(sorted(items, key=lambda i: i.seed)):
        if not targets:
            targets = list(range(len(LETTERS)))
            random.Random(_seed("positions", n, item.seed)).shuffle(targets)
        at = targets.pop()
        rest = [i for i in range(len(item.options)) if i != item.answer]
        order = rest[:at] + [item.answer] + rest[at:]
        out.append(
            item.model_copy(
                update={
                    "options": [item.options[i] for i in order],
                    "option_kinds": [item.option_kinds[i] for i in order],
                    "option_values": [item.option_values[i] for i in order] if item.option_values else [],
                    "answer": at,
                }
            )
        )
    return out


def baselines(
    items: Sequence[ProbeItem], judged: dict[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """Each blind rule's accuracy over the items, overall and per type, with chance beside it."""
    by_type: dict[str, list[ProbeItem]] = defaultdict(list)
    for i in items:
        by_type["all"].append(i)
        by_type[i.type].append(i)
    table: dict[str, dict[str, float]] = {}
    for group, its in sorted(by_type.items()):
        row = {"items": float(len(its)), "chance": round(sum(1 / len(i.options) for i in its) / len(its), 3)}
        sums: dict[str, float] = defaultdict(float)
        for i in its:
            for rule, c in blind.rule_credits(i.question, i.options, i.answer).items():
                sums[rule] += c
        row |= {rule: round(v / len(its), 3) for rule, v in sums.items()}
        row["position_majority"] = round(blind.position_majority([i.answer for i in its]), 3)
        if judged is not None:
            scored = [judged[i.probe_id] for i in its if i.probe_id in judged]
            if scored:
                row[blind.JUDGE] = round(sum(scored) / len(scored), 3)
        table[group] = row
    return table


def yield_by_type(items: Sequence[ProbeItem], rejections: Sequence[Rejection]) -> dict[str, dict[str, int]]:
    """Planned, kept and rejected per reason, per item type (a rejection's row id ends in its type)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int, planned=0, kept=0))
    for i in items:
        table[i.type]["kept"] += 1
        table[i.type]["planned"] += 1
    for r in rejections:
        kind = r.row_id.rsplit("-", 1)[-1]
        if r.stage == NAME and kind in TYPES:
            table[TYPES[kind]]["planned"] += 1
            table[TYPES[kind]][f"rejected:{r.reason}"] += 1
    return {t: dict(sorted(v.items())) for t, v in sorted(table.items())}


def no_probes_message(dataset: str, version_dir: Path) -> str:
    """Why a version has no probes: how many were planned and what dropped them (from its manifest)."""
    try:
        m = orjson.loads((version_dir / "manifest.json").read_bytes())
    except (OSError, ValueError):
        m = {}
    table = m.get("probe_yield") or {}
    planned = sum(t.get("planned", 0) for t in table.values())
    kept = sum(t.get("kept", 0) for t in table.values())
    if not (m.get("config") or {}).get("probes", True):
        why = "it was built with --no-probes: build a version with probes"
    elif kept:
        why = (
            f"its probes table is missing or empty although its manifest lists {kept} kept items: "
            f"run `personaloom verify {dataset}@{version_dir.name}`"
        )
    elif planned:
        reasons: Counter[str] = Counter()
        for t in table.values():
            reasons.update(
                {k.removeprefix("rejected:"): n for k, n in t.items() if k.startswith("rejected:")}
            )
        top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(3))
        why = f"{planned} were planned and all were rejected ({top}; `personaloom show` lists every reason)"
    else:
        why = "no item could be planned from its kept sessions (too few kept sessions, changes or personas)"
    return f"{dataset}@{version_dir.name} has no probes: {why}"


def _finals(rows: Sequence[DatasetRow]) -> dict[str, Persona]:
    """Each persona in force at its last kept session."""
    last: dict[str, DatasetRow] = {}
    for r in rows:
        if r.persona_id not in last or r.session_index > last[r.persona_id].session_index:
            last[r.persona_id] = r
    return {pid: persona_at(r.persona, r.session_index) for pid, r in last.items()}


def _bases(rows: Sequence[DatasetRow]) -> dict[str, Persona]:
    return {r.persona_id: r.persona for r in rows}


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


class _Calls:
    """The stage's LLM calls, each item through all of its own as soon as it can: write, then (once it is
    known not to repeat an earlier item) confirm and the blind judge.

    Every item went through one call at a time over all items (write all, then confirm all, then judge
    all): each step waited for the slowest item of the one before, and the planning of every item before
    the first write; the endpoint's slots sat idle meanwhile (a 200-persona build: 6 to 7 s before the first
    write, and a tail at each step). Here the items are planned on a worker thread and written as they are
    planned, `workers` of them at a time (more than the LLM's concurrency: an item waiting for an earlier
    one to be written leaves no slot idle). The calls and their answers are the same; `run` composes the
    outcome from them as before, in the items' order.
    """

    def __init__(self, ctx: StageContext, earlier: Sequence[ProbeItem]) -> None:
        self.ctx = ctx
        self.specs: list[Spec] = []
        self.written: list[ProbeItem | Rejection | None] = []  # by spec index, once written
        self.verdicts: dict[str, list[int] | None] = {}  # CONFIRM's answer by probe id
        self.credits: dict[str, float | None] = {}  # the blind judge's
        self.rules: dict[str, dict[str, float]] = {}  # the blind rules' (blind.rule_credits)
        self.planned: asyncio.Queue[list[Spec] | BaseException | None] = asyncio.Queue()
        self._decided: list[asyncio.Future[bool]] = []
        self.new: list[bool] = []  # by spec index: a written item that repeats no earlier one
        self._next = 0  # the first item whose repeat or not is undecided
        self._seen = {_key(i): i.probe_id for i in earlier}  # as `dedup`: the first of a key is kept
        self._claimed = 0
        self._all_planned = False
        self._stop = False  # the stage failed: the planner thread stops at its next persona
        self._taking = asyncio.Lock()
        self.calibration: asyncio.Future[Any] | None = None

    def plan(self, loop: asyncio.AbstractEventLoop, jobs: list[Sequence[DatasetRow]], pools: Pools) -> None:
        """On a worker thread: each persona's items, handed to the loop persona by persona."""

        def hand(got: list[Spec] | BaseException | None) -> None:
            loop.call_soon_threadsafe(self.planned.put_nowait, got)

        cfg = self.ctx.config
        try:
            for rows in jobs:
                if self._stop:
                    return
                hand(plan_specs(rows, pools, self.ctx.catalogue, cfg.probes_per_checkpoint))
            hand(None)
        except RuntimeError:  # the loop closed under a failed stage
            pass
        except Exception as e:
            hand(e)

    async def _take(self) -> int | None:
        """The next item's index, in the planned order; None when every item is taken."""
        while self._claimed >= len(self.specs):
            if self._all_planned:
                return None
            async with self._taking:  # one worker at a time waits for the planner
                if self._claimed >= len(self.specs) and not self._all_planned:
                    got = await self.planned.get()
                    if got is None:
                        self._all_planned = True
                    elif isinstance(got, BaseException):
                        raise got
                    else:
                        self.specs += got
                        self.written += [None] * len(got)
                        self._decided += [asyncio.get_running_loop().create_future() for _ in got]
        self._claimed += 1
        return self._claimed - 1

    def _decide(self) -> None:
        """Decide, in the items' order, which written items are new (not a repeat of an earlier one)."""
        while self._next < len(self.written) and (got := self.written[self._next]) is not None:
            new = (
                isinstance(got, ProbeItem) and self._seen.setdefault(_key(got), got.probe_id) == got.probe_id
            )
            self._decided[self._next].set_result(new)
            self.new.append(new)
            self._next += 1

    async def worker(self) -> None:
        while (i := await self._take()) is not None:
            await self._item(i)

    async def _item(self, i: int) -> None:
        ctx = self.ctx
        got = await ctx.llm.run(WRITE, self.specs[i])
        ctx.advance(1)
        self.written[i] = got
        self._decide()
        if not await self._decided[i]:
            return
        assert isinstance(got, ProbeItem)
        assert self.calibration is not None
        calibration = await asyncio.shield(self.calibration)
        if calibration is None or calibration.trusted:
            self.verdicts[got.probe_id] = verdict = await ctx.llm.run(CONFIRM, got)
            if verdict != [got.answer]:
                return
        if ctx.config.probe_blind_judge:
            self.credits[got.probe_id] = await judge_credit(ctx, got)
        self.rules[got.probe_id] = blind.rule_credits(got.question, got.options, got.answer)

    async def run(self, jobs: list[Sequence[DatasetRow]], pools: Pools, workers: int) -> None:
        from personaloom.stages.calibration import judge_calibration

        self.calibration = asyncio.ensure_future(
            judge_calibration(self.ctx.llm, self.ctx.config.judge_min_accuracy)
        )
        planner = asyncio.ensure_future(asyncio.to_thread(self.plan, asyncio.get_running_loop(), jobs, pools))
        tasks = [asyncio.ensure_future(self.worker()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
            await planner
            await self.calibration  # asked even with no item to confirm, as always
        finally:
            self._stop = True
            for t in (*tasks, self.calibration):
                t.cancel()


async def run(inputs: Inputs, ctx: StageContext) -> StageOutcome[ProbeItem]:
    cfg = ctx.config
    if not cfg.probes:
        return StageOutcome()
    by_persona: dict[str, list[DatasetRow]] = defaultdict(list)
    for row in inputs["dataset"]:
        by_persona[row.persona_id].append(row)
    # a grown build: earlier personas lend distractor values too, earlier items are not repeated
    earlier = ctx.earlier("dataset")
    pools = Pools(_finals(earlier) | _finals(inputs["dataset"]), _bases(earlier) | _bases(inputs["dataset"]))
    earlier_items = ctx.earlier("probes")
    calls = _Calls(ctx, earlier_items)
    await calls.run([by_persona[pid] for pid in sorted(by_persona)], pools, 2 * ctx.llm.config.concurrency)
    assert all(w is not None for w in calls.written)
    written = StageOutcome.split(w for w in calls.written if w is not None)
    unique = written.then(dedup(written.records, earlier_items))
    assert [i.probe_id for i in unique.records] == [  # the items the pipeline took on as new
        w.probe_id
        for w, new in zip(calls.written, calls.new, strict=True)
        if new and isinstance(w, ProbeItem)
    ]
    calibration = calls.calibration.result() if calls.calibration is not None else None
    if calibration is not None and not calibration.trusted:
        confirmed_items = StageOutcome(records=list(unique.records))
    else:
        confirmed_items = confirmed(unique.records, calls.verdicts)
    unique = unique.then(confirmed_items)
    judged: dict[str, float] = {}
    if cfg.probe_blind_judge:
        judged = {i.probe_id: c for i in unique.records if (c := calls.credits[i.probe_id]) is not None}
    return unique.then(gate(unique.records, judged, calls.rules))


STAGE = Stage(
    name="probes",
    inputs=("dataset",),
    output="probes",
    record=ProbeItem,
    run=run,
    scope="dataset",
    calls=(WRITE, CONFIRM, BLIND),
    rows_in=lambda cfg, n: n["probes"] + n["rejected:probes"],  # the items planned
)


# ---------------------------------------------------------------- the history an item is asked after


def history_blocks(
    rows: Sequence[DatasetRow],
    checkpoint: int,
    *,
    replies: dict[int, str] | None = None,
    context_tokens: int | None = None,
    filler: Sequence[DatasetRow] = (),
    keep: Sequence[int] = (),
) -> list[tuple[int | None, list[dict[str, str]]]]:
    """The user's sessions up to the checkpoint, each as (session index, its messages); padding
    sessions (other personas') come first with index None.

    Messages are what was said (`DatasetRow.turns`), or the agent's actual reply of a replay run
    (`replies`: session → text) after the user's opening. `context_tokens` caps the history (the oldest
    sessions not in `keep` — the evidence — go first; a kept session never goes) or pads it to about
    that size with unrelated sessions (`filler`, other personas'), placed before the user's own: padding
    never displaces one of the user's sessions.
    """
    mine = sorted((r for r in rows if r.session_index <= checkpoint), key=lambda r: r.session_index)

    def turns(r: DatasetRow, own: bool) -> list[dict[str, str]]:
        # only what was said; a replay's actual reply stands for the session's, on the user's own only
        if own and replies and r.session_index in replies:
            return [
                {"role": "user", "content": r.personalized_query},
                {"role": "assistant", "content": replies[r.session_index]},
            ]
        return [{"role": t.role, "content": t.content} for t in said_turns(r)]

    if context_tokens is not None:
        while _tokens(mine) > context_tokens and any(r.session_index not in keep for r in mine):
            mine.remove(next(r for r in mine if r.session_index not in keep))
    pad: list[DatasetRow] = []
    if context_tokens is not None:
        for r in filler:
            if _tokens(mine) + _tokens(pad) >= context_tokens:
                break
            pad.append(r)
    return [(None, turns(r, False)) for r in pad] + [(r.session_index, turns(r, True)) for r in mine]


def history(
    rows: Sequence[DatasetRow],
    checkpoint: int,
    *,
    replies: dict[int, str] | None = None,
    context_tokens: int | None = None,
    filler: Sequence[DatasetRow] = (),
    keep: Sequence[int] = (),
) -> list[dict[str, str]]:
    """`history_blocks` as one list of chat messages."""
    blocks = history_blocks(
        rows, checkpoint, replies=replies, context_tokens=context_tokens, filler=filler, keep=keep
    )
    return [m for _, ms in blocks for m in ms]


def message_tokens(messages: Sequence[dict[str, str]]) -> int:
    return sum(count_tokens(m["content"]) for m in messages)
