"""Life-long drift by construction: code plans each change, resolves its before and after, and checks it.

Stage 1 plans changes that fit the person (`plan_changes`: kind, session, life event, target value);
stage 2 resolves them against the synthesized persona (`resolve_changes`): `before` is exactly the value
in force, list fields change by one item, scale fields by one step. The LLM writes only the new value
of a narrative field and the story. `persona_at` gives the persona in force at any session, and
`change_violations` re-derives every fact to check it (an invariant: a violation is a bug).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from rapidfuzz import fuzz

from personaloom.schemas.drafts import ChangeDraft
from personaloom.schemas.fine import FINE_PREFIX, FineDimension, fine_alternatives, fine_id, load_fine_table
from personaloom.schemas.records import Persona, PlannedChange, PreferenceChange, SeedRow
from personaloom.stages.catalogue import (
    Catalogue,
    fact_closure,
    fact_conflicts,
    interest_weight,
    life_stage_for,
    settle_facts,
)

# Ordered scales (lowest → highest) in the seed attributes, by persona path.
SCALES = {
    "Communication.formality": "formality",
    "Communication.verbosity": "verbosity",
    "Communication.proactivity": "proactivity",
}
LIST_FIELDS = ("Personality.Values_and_Interests", "Communication.domain_vocabulary")
MAX_CHANGES_PER_FIELD = 2
REASON = "#reason"  # reveal-key suffix: why the latest change of a field happened (said in a session)
SIMILAR = 85.0  # rapidfuzz ratio at or above which a narrative "new" value is the old one again


# ---------------------------------------------------------------- reading and writing persona fields


def get_value(persona: Persona, path: str) -> Any:
    """The value at a persona path; a `Fine.<id>` the persona was not planted reads ""."""
    key = fine_id(path)
    if key is not None:
        return persona.Fine.get(key, "")
    section, name = path.split(".")
    return getattr(getattr(persona, section), name)


def set_value(persona: Persona, path: str, value: Any) -> Persona:
    key = fine_id(path)
    if key is not None:
        return persona.model_copy(update={"Fine": {**persona.Fine, key: str(value)}})
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


# the fields a user can show in what they ask and how (names, ages and type codes are not preferences)
REVEALABLE = (
    "Demographics.Career_Information",
    "Personality.Values_and_Interests",
    "Pattern.Behavior_Engagement_Pattern",
    "Pattern.Usage_Pattern",
    "Pattern.Emotion_Pattern",
    "Pattern.Purchase_Pattern",
    "Preference.Preferred_Styles",
    "Preference.Preferred_Formats",
    "Preference.Preferred_Workflows",
    "Communication.formality",
    "Communication.verbosity",
    "Communication.proactivity",
    "Communication.domain_vocabulary",
    "Communication.emotional_tone",
)


def in_force(persona: Persona, session_index: int) -> dict[str, str]:
    """Every preference a user can reveal, as text, as it reads at this session (changes applied): the
    REVEALABLE profile fields, then every fine-grained preference as `Fine.<id>`."""
    now = persona_at(persona, session_index)
    out = {path: as_text(get_value(now, path)) for path in REVEALABLE}
    out.update({FINE_PREFIX + key: value for key, value in now.Fine.items()})
    return out


# ---------------------------------------------------------------- fine-grained preferences


def fine_fits(dim: FineDimension, row: SeedRow, facts: frozenset[str]) -> bool:
    """Whether a dimension applies to this person: age, work status, and the facts it requires."""
    return (
        dim.min_age <= row.age <= dim.max_age
        and (dim.employment is None or row.employment in dim.employment)
        and dim.requires <= facts
    )


def plan_fine(
    rng: random.Random, cat: Catalogue, row: SeedRow, n_prefs: int, n_changes: int, n_sessions: int
) -> tuple[dict[str, str], list[PlannedChange]]:
    """`n_prefs` fine preferences that fit the person (fewer when fewer dimensions fit), one alternative
    each, in the table's order; then up to `n_changes` changes at sessions after the first, each switching
    one planted preference (a different one each time) to another alternative of its dimension."""
    if n_prefs <= 0:
        return {}, []
    facts = person_facts(cat, row)
    table = load_fine_table()
    fitting = [d for d in table.values() if fine_fits(d, row, facts)]
    chosen = rng.sample(fitting, min(n_prefs, len(fitting)))
    order = {key: i for i, key in enumerate(table)}
    chosen.sort(key=lambda d: order[d.id])
    fine = {d.id: rng.choice(d.alternatives) for d in chosen}
    slots = list(range(1, n_sessions))
    sessions = sorted(rng.sample(slots, min(n_changes, len(slots), len(chosen))))
    keys = rng.sample([d.id for d in chosen], len(sessions))
    planned: list[PlannedChange] = []
    for session, key in zip(sessions, keys, strict=True):
        dim = table[key]
        target = rng.choice([a for a in dim.alternatives if a != fine[key]])
        planned.append(
            PlannedChange(
                kind="fine",
                field=FINE_PREFIX + key,
                op="switch",
                at_session=session,
                direction=dim.category,
                event="",
                target=target,
            )
        )
    return fine, planned


# A fine change's story, by the dimension's category (code's: no LLM text rides on a fine change)
FINE_REASONS: dict[str, tuple[str, ...]] = {
    "travel": (
        "A few tiring trips made them rethink how they travel.",
        "A friend's travel tips won them over.",
    ),
    "food": (
        "A doctor's advice changed how they eat and drink.",
        "Cooking with a new flatmate changed their habits.",
    ),
    "work": (
        "A new routine at work changed how they organise their day.",
        "A colleague showed them another way.",
    ),
    "communication": (
        "Feedback from people they write to made them change.",
        "Their circle of friends started doing it the other way.",
    ),
    "shopping": (
        "A bad purchase made them change how they shop.",
        "Prices went up and they changed how they shop.",
    ),
    "health": (
        "A check-up made them change their routine.",
        "Sleeping badly for weeks made them try another way.",
    ),
    "home": (
        "Moving things around at home changed their habits.",
        "Energy bills made them change their habits.",
    ),
    "tech": ("A broken device made them switch.", "A family member talked them into switching."),
    "leisure": (
        "A busy season changed how they spend free time.",
        "New friends got them into something else.",
    ),
    "money": (
        "A tight month made them change how they handle money.",
        "A friend's advice on money won them over.",
    ),
    "news": (
        "Too much bad news made them change how they follow it.",
        "Less free time changed their news habit.",
    ),
    "pets": ("Time with a friend's pet changed their mind.", "A vet's advice changed their routine."),
    "learning": (
        "A course that did not work made them try another way.",
        "More free time changed how they learn.",
    ),
}
FINE_REASON = ("Their habits changed over the months.",)


def fine_reason(rng: random.Random, category: str) -> str:
    return rng.choice(FINE_REASONS.get(category, FINE_REASON))


# ---------------------------------------------------------------- stage 1: planning


def _events_by_name(cat: Catalogue) -> dict[str, dict[str, Any]]:
    hit = _BY_NAME.get(cat.digest)
    if hit is None:
        hit = _BY_NAME[cat.digest] = {e["event"]: e for e in cat.life_events}
    return hit


_BY_NAME: dict[str, dict[str, dict[str, Any]]] = {}
_KINDS: dict[str, dict[str, dict[str, Any]]] = {}


def _kinds_by_name(cat: Catalogue) -> dict[str, dict[str, Any]]:
    hit = _KINDS.get(cat.digest)
    if hit is None:
        hit = _KINDS[cat.digest] = {k["kind"]: k for k in cat.change_kinds}
    return hit


def status_after(cat: Catalogue, row: SeedRow, history: Sequence[str] = ()) -> tuple[str, str]:
    """(work status, life stage) in force after the events `history`: a work-status event sets the status."""
    status, stage = row.employment, row.life_stage
    events = _events_by_name(cat)
    for name in history:
        after = events.get(name, {}).get("work_status")
        if after and after != status:
            status, stage = after, life_stage_for(row.age, after)
    return status, stage


def changes_status(event: dict[str, Any], status: str) -> bool:
    """Whether the event moves someone of this work status to another one (lost their job, retired...)."""
    return bool(event["work_status"]) and event["work_status"] != status


def _fits_now(e: dict[str, Any], age: int, status: str, stage: str) -> bool:
    return (
        e["min_age"] <= age <= e["max_age"]
        and (e["employment"] is None or status in e["employment"])
        and (e["life_stages"] is None or stage in e["life_stages"])
    )


def eligible_events(cat: Catalogue, row: SeedRow, history: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Life events that can happen to this person next, after the events `history` (planned before, in
    order): the age, and the work status and life stage in force (no retiring retiree, no job loss for the
    unemployed; after "lost their job" the person is unemployed). Facts and repeats: `history_conflict`."""
    status, stage = status_after(cat, row, history)
    return [e for e in cat.life_events if _fits_now(e, row.age, status, stage)]


def person_facts(cat: Catalogue, row: SeedRow) -> frozenset[str]:
    """What the skeleton states about the person's life: its hint's and interests' facts (facts.csv)."""
    hint = _hints(cat).get(row.hint)
    held = set(hint["facts"]) if hint else set()
    rules = _interest_rules(cat)
    for item in row.values_interests:
        rule = rules.get(item)
        if rule:
            held |= rule["facts"]
    return fact_closure(cat, held)


_HINTS: dict[str, dict[str, dict[str, Any]]] = {}
_INTERESTS: dict[str, dict[str, dict[str, Any]]] = {}


def _hints(cat: Catalogue) -> dict[str, dict[str, Any]]:
    hit = _HINTS.get(cat.digest)
    if hit is None:
        hit = _HINTS[cat.digest] = {h["hint"]: h for h in cat.hint_rules}
    return hit


def _interest_rules(cat: Catalogue) -> dict[str, dict[str, Any]]:
    hit = _INTERESTS.get(cat.digest)
    if hit is None:
        hit = _INTERESTS[cat.digest] = {r["item"]: r for r in cat.interest_rules}
    return hit


def history_conflict(
    event: dict[str, Any], facts: frozenset[str], used: set[str] | frozenset[str]
) -> str | None:
    """Why the event cannot follow this history (a repeat, or a fact it excludes), or None."""
    if event["event"] in used:
        return "happens twice"
    clash = sorted(event["excludes"] & facts)
    return f"contradicts {', '.join(clash)}" if clash else None


def interest_misfit(
    cat: Catalogue, row: SeedRow, item: str, origin: str | None = None
) -> tuple[str, str] | None:
    """The rule an interest breaks for this person, with a detail: `interest_age`, or `interest_locale` (no
    weight in the locale nor the origin, or it learns a language they speak); None when it fits."""
    rule = _interest_rules(cat).get(item)
    if rule is None:
        return None  # the LLM may name interests of its own; the sampler only draws listed ones
    if not rule["min_age"] <= row.age <= rule["max_age"]:
        return "interest_age", f"{item!r} at {row.age} ({rule['min_age']}-{rule['max_age']})"
    places = {row.locale, origin or row.locale}
    if not any(interest_weight(cat, rule, loc) > 0 for loc in places):
        return "interest_locale", f"{item!r} in {', '.join(sorted(places))}"
    if rule["learns"] and rule["learns"] in row.languages:
        return "interest_locale", f"{item!r} for a speaker of {rule['learns']}"
    return None


# (catalogue digest, age, status, life stage) -> kind -> the eligible events that can motivate it: the same
# for every person of that profile, so a million skeletons compute it a few thousand times, not a million.
# A work-status event (one that changes the status) motivates only the change kind that follows that status
# (`status` in change_kinds.json: the work routine in Pattern.Usage_Pattern); other events, the kinds whose
# tags they share.
_MOTIVES: dict[tuple[str, int, str, str], dict[str, list[dict[str, Any]]]] = {}


def _motives(cat: Catalogue, age: int, status: str, stage: str) -> dict[str, list[dict[str, Any]]]:
    key = (cat.digest, age, status, stage)
    found = _MOTIVES.get(key)
    if found is None:
        events = [e for e in cat.life_events if _fits_now(e, age, status, stage)]
        found = {}
        for k in cat.change_kinds:
            if k.get("status"):
                matching = [
                    e for e in events if changes_status(e, status) and e["work_status"] == k["status"]
                ]
            else:
                tags = set(k["tags"])
                matching = [e for e in events if not changes_status(e, status) and e["tags"] & tags]
            if matching:
                found[k["kind"]] = matching
        # in the catalogue's order: the kinds with a motive, each one's event names, and every such event
        _MOTIVE_KINDS[key] = (
            [k for k in cat.change_kinds if k["kind"] in found],
            {kind: frozenset(e["event"] for e in es) for kind, es in found.items()},
            list({e["event"]: e for es in found.values() for e in es}.values()),
        )
        # published last: shards sample in threads, and a thread that finds _MOTIVES[key] reads the above
        _MOTIVES[key] = found
    return found


_MOTIVE_KINDS: dict[tuple[str, int, str, str], tuple[list[dict], dict[str, frozenset[str]], list[dict]]] = {}


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


def _new_item(
    rng: random.Random,
    cat: Catalogue,
    field: str,
    current: Sequence[str],
    fits: Callable[[str], bool] | None = None,
) -> str | None:
    have = {c.lower() for c in current}
    pool = _pool(cat, field)
    fresh = [p for p in pool if p.lower() not in have and (fits is None or fits(p))]
    return rng.choice(fresh) if fresh else None


def interest_fits(cat: Catalogue, row: SeedRow, facts: frozenset[str] | None = None) -> Callable[[str], bool]:
    """Whether a new interest fits the person: age, locale or origin, languages, and the facts they hold."""
    origin = origin_locale(cat, row) or row.locale
    held = person_facts(cat, row) if facts is None else facts
    rules = _interest_rules(cat)
    pool = _fitting_interests(cat, row.locale, origin, row.age)

    def fits(item: str) -> bool:
        rule = rules.get(item)
        if rule is None or item not in pool or (rule["learns"] and rule["learns"] in row.languages):
            return False
        return not (rule["facts"] and fact_conflicts(cat, held | rule["facts"]))

    return fits


_FITTING: dict[tuple[str, str, str, int], frozenset[str]] = {}


def _fitting_interests(cat: Catalogue, locale: str, origin: str, age: int) -> frozenset[str]:
    """The items of values_interests.csv for this age with a weight above 0 in the locale or the origin."""
    key = (cat.digest, locale, origin, age)
    hit = _FITTING.get(key)
    if hit is None:
        hit = _FITTING[key] = frozenset(
            r["item"]
            for r in cat.interest_rules
            if r["min_age"] <= age <= r["max_age"]
            and any(interest_weight(cat, r, loc) > 0 for loc in {locale, origin})
        )
    return hit


def origin_locale(cat: Catalogue, row: SeedRow) -> str | None:
    """The locale of the person's nationality (their own, or an immigrant's origin); None if unknown."""
    hit = _ORIGINS.get(cat.digest)
    if hit is None:
        hit = _ORIGINS[cat.digest] = {loc["nationality"]: loc["locale"] for loc in cat.locales}
    return hit.get(row.nationality)


_ORIGINS: dict[str, dict[str, str]] = {}


def plan_changes(
    rng: random.Random, cat: Catalogue, row: SeedRow, n_changes: int, n_sessions: int
) -> list[PlannedChange]:
    """Up to `n_changes` changes at distinct sessions after the first, each eligible for this person.

    Eligibility: a life event of the right age, work status and life stage (those in force at that session:
    an earlier work-status event changed them) motivates it; it happens once and contradicts no fact the
    person holds (their hint's and interests', then each earlier event's: no first child for a parent, no
    divorce after a wedding); an event that changes the work status changes the work routine
    (Pattern.Usage_Pattern, the kind with that `status`); a scale moves only where it has room; a switch never
    sets the value already held; a list loses an item only when at least two stay, and gains one that fits
    the person; a field changes at most twice.
    """
    slots = list(range(1, n_sessions))
    sessions = sorted(rng.sample(slots, min(n_changes, len(slots))))
    state: dict[str, Any] = {
        "Communication.formality": row.formality,
        "Communication.verbosity": row.verbosity,
        "Communication.proactivity": row.proactivity,
        "Communication.emotional_tone": row.emotional_tone,
        "Personality.Values_and_Interests": list(row.values_interests),
        "Communication.domain_vocabulary": list(row.domain_vocabulary),
    }
    status, stage = row.employment, row.life_stage
    facts = person_facts(cat, row)
    used: set[str] = set()
    count: Counter[str] = Counter()
    planned: list[PlannedChange] = []
    for session in sessions:
        motives = _motives(cat, row.age, status, stage)
        kinds, names, events = _MOTIVE_KINDS[(cat.digest, row.age, status, stage)]
        # the events this history rules out (a repeat, a fact they exclude): usually the one used before
        blocked = used | {e["event"] for e in events if e["excludes"] & facts} if facts else used
        options = [
            k
            for k in kinds
            if _kind_fits(k, state, cat, count) and (not blocked or not names[k["kind"]] <= blocked)
        ]
        if not options:
            break
        kind = rng.choice(options)
        event = rng.choice([e for e in motives[kind["kind"]] if e["event"] not in blocked])
        field, op = kind["field"], kind["op"]
        target: str | None = None
        if op == "step":
            scale = cat.attributes[SCALES[field]]
            target = scale[scale.index(state[field]) + kind["delta"]]
        elif op == "switch":
            target = kind["to"]
        elif op == "add":
            fits = interest_fits(cat, row, facts) if field == "Personality.Values_and_Interests" else None
            target = _new_item(rng, cat, field, state[field], fits)
            if target is None:
                continue
        if target is not None and op != "add":
            state[field] = target
        elif op == "add":
            state[field] = [*state[field], target]
        elif op == "remove":
            state[field] = state[field][1:]  # planning only needs the length; stage 2 picks the item
        count.update((field, kind["kind"]))
        used.add(event["event"])
        if event["sets"]:
            facts = settle_facts(cat, facts, event["sets"])
        if changes_status(event, status):
            status, stage = event["work_status"], life_stage_for(row.age, event["work_status"])
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


def plan_violations(cat: Catalogue, row: SeedRow) -> list[tuple[str, str]]:
    """The planned changes replayed in order: (rule, detail) for each that breaks one.

    `change_event_eligible`: the event fits the age, work status and life stage in force; `event_history`:
    it does not repeat nor contradict a fact held (hint, interests, earlier events); `work_change_learnable`:
    an event that changes the work status changes the work routine, the kind that follows that status (a
    learnable Pattern field: Demographics never change), and such a kind follows only such an event.
    """
    out: list[tuple[str, str]] = []
    events = _events_by_name(cat)
    kinds = _kinds_by_name(cat)
    status, stage = row.employment, row.life_stage
    facts = person_facts(cat, row)
    used: set[str] = set()
    for i, p in enumerate(row.planned_changes):
        e = events.get(p.event)
        where = f"planned_changes[{i}] {p.event!r}"
        if e is None or not _fits_now(e, row.age, status, stage):
            out.append(("change_event_eligible", f"{where} at {row.age} as {status} ({stage})"))
        if e is None:
            continue
        why = history_conflict(e, facts, used)
        if why:
            out.append(("event_history", f"{where} {why}"))
        follows = kinds.get(p.kind, {}).get("status")
        if changes_status(e, status) and follows != e["work_status"]:
            out.append(
                ("work_change_learnable", f"{where} makes them {e['work_status']} but changes {p.field}")
            )
        elif follows and not changes_status(e, status):
            out.append(("work_change_learnable", f"{where}: {p.kind} follows no change to {follows}"))
        used.add(e["event"])
        if e["sets"]:
            facts = settle_facts(cat, facts, e["sets"])
        if changes_status(e, status):
            status, stage = e["work_status"], life_stage_for(row.age, e["work_status"])
    return out


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
            fits = interest_fits(cat, seed) if plan.field == "Personality.Values_and_Interests" else None
            item = item or _new_item(rng, cat, plan.field, before, fits) or f"new interest {i + 1}"
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
    merged = _by_session(changes + resolve_fine(seed, current, when))
    if len(merged) == len(changes):
        return merged, fallback
    # a fallback names the change where it sits in the merged, session-ordered list
    at = {id(c): j for j, c in enumerate(merged)}
    moved = [
        re.sub(r"^Changes\[(\d+)\]", lambda m: f"Changes[{at[id(changes[int(m[1])])]}]", f) for f in fallback
    ]
    return merged, moved


def resolve_fine(seed: SeedRow, current: Persona, when: Sequence[date]) -> list[PreferenceChange]:
    """The planned fine changes against the persona's Fine values: before the value in force, after the
    planned alternative, a templated reason (code's: nothing about them is the LLM's)."""
    rng = random.Random(seed.seed ^ 0xF17E)
    out: list[PreferenceChange] = []
    for plan in seed.planned_fine:
        before = as_text(get_value(current, plan.field))
        change = PreferenceChange(
            date=when[plan.at_session],
            effective_session=plan.at_session,
            field=plan.field,
            before=before,
            after=plan.target or "",
            reason=fine_reason(rng, plan.direction),
            kind=plan.kind,
            op="switch",
            event=plan.event,
        )
        out.append(change)
        current = apply_change(current, change)
    return out


def _by_session(changes: list[PreferenceChange]) -> list[PreferenceChange]:
    return sorted(changes, key=lambda c: c.effective_session)  # stable: a field's changes keep their order


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
        key = fine_id(c.field)
        alternatives = set(fine_alternatives(key)) if key is not None else set()
        if key is not None and not (key in current.Fine and {c.before, c.after} <= alternatives):
            out.append(("fine_from_table", f"{where}: {c.before!r} -> {c.after!r} (not of the table)"))
        current = apply_change(current, c)
    return out


def fine_violations(cat: Catalogue, row: SeedRow) -> list[str]:
    """The planted fine preferences that are not one alternative of a dimension that fits the person."""
    table = load_fine_table()
    facts = person_facts(cat, row)
    return [
        key
        for key, value in row.fine.items()
        if key not in table or value not in table[key].alternatives or not fine_fits(table[key], row, facts)
    ]


def scales_of(cat: Catalogue) -> dict[str, list[str]]:
    return {path: list(cat.attributes[key]) for path, key in SCALES.items()}
