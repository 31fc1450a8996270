"""Life-long drift by construction: code plans each change, resolves its before and after, and checks it.

Stage 1 plans changes that fit the person (`plan_changes`: kind, session, life event, target value);
stage 2 resolves them against the synthesized persona (`resolve_changes`): `before` is exactly the value
in force, list fields change by one item, scale fields by one step. The LLM writes only the new value
of a narrative field and the story. `persona_at` gives the persona in force at any session, and
`change_violations` re-derives every fact to check it (an invariant: a violation is a bug).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from datetime import date
from typing import Any

from rapidfuzz import fuzz

from personaloom.catalogue import Catalogue
from personaloom.schemas.drafts import ChangeDraft
from personaloom.schemas.records import Persona, PlannedChange, PreferenceChange, SeedRow

# Ordered scales (lowest → highest) in the seed attributes, by persona path.
SCALES = {
    "Communication.formality": "formality",
    "Communication.verbosity": "verbosity",
    "Communication.proactivity": "proactivity",
}
LIST_FIELDS = ("Personality.Values_and_Interests", "Communication.domain_vocabulary")
MAX_CHANGES_PER_FIELD = 2
SIMILAR = 85.0  # rapidfuzz ratio at or above which a narrative "new" value is the old one again


# ---------------------------------------------------------------- reading and writing persona fields


def get_value(persona: Persona, path: str) -> Any:
    section, name = path.split(".")
    return getattr(getattr(persona, section), name)


def set_value(persona: Persona, path: str, value: Any) -> Persona:
    section, name = path.split(".")
    part = getattr(persona, section).model_copy(update={name: value})
    return persona.model_copy(update={section: part})


def as_text(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def apply_change(persona: Persona, change: PreferenceChange) -> Persona:
    """The persona with one change applied (list changes by their items, others by the new value)."""
    if change.op in ("add", "remove"):
        current = list(get_value(persona, change.field))
        value: Any = [v for v in current if v not in change.removed] + list(change.added)
    else:
        value = change.after
    return set_value(persona, change.field, value)


def active_changes(persona: Persona, session_index: int) -> list[PreferenceChange]:
    """Changes in force at this session, in the order they happened."""
    return sorted(
        (c for c in persona.Changes if c.effective_session <= session_index),
        key=lambda c: c.effective_session,
    )


def persona_at(persona: Persona, session_index: int) -> Persona:
    """The user as they are at this session: the base persona with every change in force applied."""
    current = persona
    for change in active_changes(persona, session_index):
        current = apply_change(current, change)
    return current


# ---------------------------------------------------------------- stage 1: planning


def eligible_events(cat: Catalogue, row: SeedRow) -> list[dict[str, Any]]:
    """Life events that can happen to this person (age, work status, life stage)."""
    return [
        e
        for e in cat.life_events
        if e["min_age"] <= row.age <= e["max_age"]
        and (e["employment"] is None or row.employment in e["employment"])
        and (e["life_stages"] is None or row.life_stage in e["life_stages"])
    ]


# (catalogue digest, age, status, life stage) → kind → the eligible events that can motivate it: the same
# for every person of that profile, so a million skeletons compute it a few thousand times, not a million.
_MOTIVES: dict[tuple[str, int, str, str], dict[str, list[dict[str, Any]]]] = {}


def _motives(cat: Catalogue, row: SeedRow) -> dict[str, list[dict[str, Any]]]:
    key = (cat.digest, row.age, row.employment, row.life_stage)
    found = _MOTIVES.get(key)
    if found is None:
        events = eligible_events(cat, row)
        found = {}
        for k in cat.change_kinds:
            tags = set(k["tags"])
            matching = [e for e in events if e["tags"] & tags]
            if matching:
                found[k["kind"]] = matching
        _MOTIVES[key] = found
    return found


def _kind_fits(kind: dict[str, Any], state: dict[str, Any], cat: Catalogue, count: Counter[str]) -> bool:
    field, op = kind["field"], kind["op"]
    if count[field] >= MAX_CHANGES_PER_FIELD or count[kind["kind"]]:
        return False
    if op == "step":
        scale = cat.attributes[SCALES[field]]
        return 0 <= scale.index(state[field]) + kind["delta"] < len(scale)
    if op == "switch":
        return state[field] != kind["to"]
    if op == "remove":
        return len(state[field]) >= 3  # one item goes, the list keeps at least two
    return True


_POOLS: dict[tuple[str, str], list[str]] = {}


def _pool(cat: Catalogue, field: str) -> list[str]:
    key = (cat.digest, field)
    if key not in _POOLS:
        if field == "Personality.Values_and_Interests":
            _POOLS[key] = list(cat.values_interests)
        else:  # jargon of other jobs: what someone picks up moving into a new kind of work
            _POOLS[key] = sorted({w for o in cat.occupations for w in o["domain_vocabulary"]})
    return _POOLS[key]


def _new_item(rng: random.Random, cat: Catalogue, field: str, current: Sequence[str]) -> str | None:
    have = {c.lower() for c in current}
    pool = _pool(cat, field)
    fresh = [p for p in pool if p.lower() not in have]
    return rng.choice(fresh) if fresh else None


def plan_changes(
    rng: random.Random, cat: Catalogue, row: SeedRow, n_changes: int, n_sessions: int
) -> list[PlannedChange]:
    """Up to `n_changes` changes at distinct sessions after the first, each eligible for this person.

    Eligibility: a life event of the right age, work status and life stage motivates it; a scale moves
    only where it has room; a switch never sets the value already held; a list loses an item only when
    at least two stay; a field changes at most twice.
    """
    slots = list(range(1, n_sessions))
    sessions = sorted(rng.sample(slots, min(n_changes, len(slots))))
    motives = _motives(cat, row)
    state: dict[str, Any] = {
        "Communication.formality": row.formality,
        "Communication.verbosity": row.verbosity,
        "Communication.proactivity": row.proactivity,
        "Communication.emotional_tone": row.emotional_tone,
        "Personality.Values_and_Interests": list(row.values_interests),
        "Communication.domain_vocabulary": list(row.domain_vocabulary),
    }
    count: Counter[str] = Counter()
    planned: list[PlannedChange] = []
    for session in sessions:
        options = [k for k in cat.change_kinds if k["kind"] in motives and _kind_fits(k, state, cat, count)]
        if not options:
            break
        kind = rng.choice(options)
        event = rng.choice(motives[kind["kind"]])
        field, op = kind["field"], kind["op"]
        target: str | None = None
        if op == "step":
            scale = cat.attributes[SCALES[field]]
            target = scale[scale.index(state[field]) + kind["delta"]]
        elif op == "switch":
            target = kind["to"]
        elif op == "add":
            target = _new_item(rng, cat, field, state[field])
            if target is None:
                continue
        if target is not None and op != "add":
            state[field] = target
        elif op == "add":
            state[field] = [*state[field], target]
        elif op == "remove":
            state[field] = state[field][1:]  # planning only needs the length; stage 2 picks the item
        count.update((field, kind["kind"]))
        planned.append(
            PlannedChange(
                kind=kind["kind"],
                field=field,
                op=op,
                at_session=session,
                direction=kind["direction"],
                event=event["event"],
                target=target,
            )
        )
    return planned


# ---------------------------------------------------------------- stage 2: resolving


def fallback_after(plan: PlannedChange) -> str:
    """A narrative field's new value when the LLM gave none usable: the planned direction, stated."""
    return f"Now prefers {plan.direction}." if plan.field.startswith("Preference.") else f"{plan.direction}."


def resolve_changes(
    seed: SeedRow,
    base: Persona,
    drafts: Sequence[ChangeDraft | None],
    cat: Catalogue,
    when: Sequence[date],
) -> tuple[list[PreferenceChange], list[str]]:
    """The planned changes made concrete against `base`; returns them and the fields that fell back.

    `when[i]` is the date of session i. Only a narrative `after` and each `reason` come from the drafts.
    """
    rng = random.Random(seed.seed ^ 0xD21F7)
    current = base
    changes: list[PreferenceChange] = []
    fallback: list[str] = []
    for i, plan in enumerate(seed.planned_changes):
        draft = drafts[i] if i < len(drafts) else None
        before = get_value(current, plan.field)
        added: list[str] = []
        removed: list[str] = []
        op = plan.op
        if op in ("step", "switch"):
            after: Any = plan.target
        elif op == "replace":
            after = (draft.after.strip() if draft else "") or ""
            if not after or fuzz.ratio(after.lower(), str(before).lower()) >= SIMILAR:
                after = fallback_after(plan)
                if after.lower() == str(before).lower():  # the same direction twice in a row
                    after = f"{after[:-1]}, even more than before."
                fallback.append(f"Changes[{i}].after")
        elif op == "remove" and len(before) >= 2:
            removed = [rng.choice(list(before))]
            after = [v for v in before if v not in removed]
        else:  # add — or a remove the written list is too short for, which becomes an add
            if op == "remove":
                op = "add"
                fallback.append(f"Changes[{i}].op")
            have = {b.lower() for b in before}
            item = plan.target if plan.target and plan.target.lower() not in have else None
            item = item or _new_item(rng, cat, plan.field, before) or f"new interest {i + 1}"
            added = [item]
            after = [*before, item]
        reason = draft.reason.strip() if draft and draft.reason.strip() else ""
        if not reason:
            reason = f"{plan.event[0].upper()}{plan.event[1:]}."
            fallback.append(f"Changes[{i}].reason")
        change = PreferenceChange(
            date=when[plan.at_session],
            effective_session=plan.at_session,
            field=plan.field,
            before=as_text(before),
            after=as_text(after),
            reason=reason,
            kind=plan.kind,
            op=op,
            event=plan.event,
            added=added,
            removed=removed,
        )
        changes.append(change)
        current = apply_change(current, change)
    return changes, fallback


# ---------------------------------------------------------------- invariants


def change_violations(
    persona: Persona, n_sessions: int, scales: dict[str, list[str]] | None = None
) -> list[tuple[str, str]]:
    """Every change re-derived from the base persona: (invariant, detail) for each that does not hold.

    `scales` (path → ordered values) also checks that a step moves exactly one step.
    """
    out: list[tuple[str, str]] = []
    current = persona
    last = 0
    for i, c in enumerate(persona.Changes):
        where = f"Changes[{i}] {c.field}"
        if c.field.startswith("Demographics."):
            out.append(("change_learnable_field", f"{where}: Demographics never change"))
        if not 1 <= c.effective_session < n_sessions or c.effective_session < last:
            out.append(("change_session_order", f"{where}: session {c.effective_session}"))
        last = c.effective_session
        before = get_value(current, c.field)
        if c.before != as_text(before):
            out.append(
                ("change_before_in_force", f"{where}: before {c.before!r} but {as_text(before)!r} in force")
            )
        if c.op in ("add", "remove"):
            ok = (c.op == "add" and len(c.added) == 1 and not c.removed and c.added[0] not in before) or (
                c.op == "remove" and len(c.removed) == 1 and not c.added and c.removed[0] in before
            )
            expected = [v for v in before if v not in c.removed] + list(c.added)
            if not ok or c.after != as_text(expected) or not expected:
                out.append(("change_list_by_items", f"{where}: {c.op} {c.added or c.removed}"))
        elif c.added or c.removed:
            out.append(("change_list_by_items", f"{where}: a {c.op} change names items"))
        if c.op == "step" and scales and c.field in scales:
            scale = scales[c.field]
            if (
                c.before not in scale
                or c.after not in scale
                or abs(scale.index(c.after) - scale.index(c.before)) != 1
            ):
                out.append(("change_one_step", f"{where}: {c.before!r} -> {c.after!r}"))
        if c.after.strip().lower() == c.before.strip().lower():
            out.append(("change_after_differs", f"{where}: after equals before"))
        current = apply_change(current, c)
    return out


def scales_of(cat: Catalogue) -> dict[str, list[str]]:
    return {path: list(cat.attributes[key]) for path, key in SCALES.items()}
