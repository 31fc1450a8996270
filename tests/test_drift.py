"""Drift by construction: code plans, resolves and checks every change; the LLM only writes text."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from functools import cache

import pytest

from personaloom.catalogue import Catalogue, load_catalogue
from personaloom.drift import (
    active_changes,
    apply_change,
    change_violations,
    eligible_events,
    get_value,
    persona_at,
    plan_changes,
    resolve_changes,
    scales_of,
)
from personaloom.schemas.drafts import ChangeDraft
from personaloom.schemas.records import PlannedChange, SeedRow
from personaloom.stages.personas import merge_persona, session_times
from personaloom.stages.seed import sample_skeletons


@cache
def catalogue() -> Catalogue:
    return load_catalogue()


@cache
def thousand() -> list[SeedRow]:
    return sample_skeletons(catalogue(), range(1000), 11, n_sessions=8, n_changes=3)


def when(n: int = 12) -> list[date]:
    return [date(2025, 1, 6) + timedelta(days=3 * i) for i in range(n)]


def test_the_catalogue_is_wide_and_never_touches_demographics() -> None:
    kinds = catalogue().change_kinds
    assert len(kinds) >= 40 and len({k["kind"] for k in kinds}) == len(kinds)
    assert not [k for k in kinds if k["field"].startswith("Demographics.")]
    used = Counter(c.kind for row in thousand() for c in row.planned_changes)
    assert len(used) >= 35 and max(used.values()) < 200  # no template reused ~125 times per 1,000 any more


def test_planned_changes_fit_the_person() -> None:
    cat = catalogue()
    scales = scales_of(cat)
    for row in thousand():
        state = {"Communication.formality": row.formality, "Communication.verbosity": row.verbosity}
        state |= {
            "Communication.proactivity": row.proactivity,
            "Communication.emotional_tone": row.emotional_tone,
        }
        sessions = [c.at_session for c in row.planned_changes]
        assert sessions == sorted(set(sessions)) and all(1 <= s < 8 for s in sessions)
        for i, c in enumerate(row.planned_changes):
            history = [p.event for p in row.planned_changes[:i]]  # an earlier work-status event counts
            events = {e["event"] for e in eligible_events(cat, row, history)}
            assert c.event in events, (row.age, row.employment, history, c.event)
            if c.op in ("step", "switch"):
                assert c.target != state[c.field]
                if c.op == "step":
                    scale = scales[c.field]
                    assert abs(scale.index(c.target) - scale.index(state[c.field])) == 1
                state[c.field] = c.target


def test_no_retirement_before_55_and_no_grandchildren_at_30() -> None:
    for row in thousand():
        events = {c.event for c in row.planned_changes}
        if row.age < 55:
            assert "retired from work" not in events
        if row.age < 45:
            assert "became a grandparent" not in events


def test_every_change_of_1000_fallback_personas_is_consistent() -> None:
    cat = catalogue()
    scales = scales_of(cat)
    for row in thousand():
        persona = merge_persona(row, None, cat).persona
        assert change_violations(persona, 8, scales) == [], row.persona_id


def _seed_with(plans: list[PlannedChange]) -> SeedRow:
    row = sample_skeletons(catalogue(), range(1), 5, n_sessions=10, n_changes=0)[0]
    return row.model_copy(update={"planned_changes": plans, "values_interests": ["chess", "jazz", "baking"]})


def test_before_is_exactly_the_value_in_force_when_a_field_changes_twice() -> None:
    formats = {"field": "Preference.Preferred_Formats", "op": "replace"}
    plans = [
        PlannedChange(
            kind="formats_brief", at_session=2, direction="shorter", event="got married", **formats
        ),
        PlannedChange(
            kind="formats_tables", at_session=5, direction="tables", event="rent went up", **formats
        ),
    ]
    seed = _seed_with(plans)
    base = merge_persona(seed, None, catalogue()).persona.model_copy(update={"Changes": []})
    drafts = [
        ChangeDraft(after="bullet points only", reason="new job"),
        ChangeDraft(after="price tables", reason="rent"),
    ]
    changes, fallback = resolve_changes(seed, base, drafts, catalogue(), when())
    first, second = changes
    assert first.before == base.Preference.Preferred_Formats and first.after == "bullet points only"
    assert second.before == "bullet points only" and second.after == "price tables"  # chained, not invented
    assert fallback == []
    persona = base.model_copy(update={"Changes": changes})
    assert persona_at(persona, 1).Preference.Preferred_Formats == base.Preference.Preferred_Formats
    assert persona_at(persona, 3).Preference.Preferred_Formats == "bullet points only"
    assert persona_at(persona, 9).Preference.Preferred_Formats == "price tables"
    assert [c.effective_session for c in active_changes(persona, 4)] == [2]


def test_a_new_value_equal_to_the_old_one_is_replaced_by_the_planned_direction() -> None:
    styles = {"field": "Preference.Preferred_Styles", "op": "replace", "at_session": 1}
    plans = [
        PlannedChange(kind="styles_blunt", direction="blunt answers", event="a stressful project", **styles)
    ]
    seed = _seed_with(plans)
    base = merge_persona(seed, None, catalogue()).persona.model_copy(update={"Changes": []})
    same = ChangeDraft(after=base.Preference.Preferred_Styles, reason="work")
    (change,), fallback = resolve_changes(seed, base, [same], catalogue(), when())
    assert change.after != change.before and "blunt answers" in change.after
    assert fallback == ["Changes[0].after"]


def test_list_fields_change_by_one_item() -> None:
    values = {"field": "Personality.Values_and_Interests", "direction": "changes", "event": "moved"}
    plans = [
        PlannedChange(kind="interest_new", op="add", at_session=1, target="rowing", **values),
        PlannedChange(kind="interest_dropped", op="remove", at_session=3, **values),
    ]
    seed = _seed_with(plans)
    base = merge_persona(seed, None, catalogue()).persona.model_copy(update={"Changes": []})
    changes, _ = resolve_changes(seed, base, [None, None], catalogue(), when())
    add, drop = changes
    before = base.Personality.Values_and_Interests
    assert add.added == ["rowing"] and add.after == ", ".join([*before, "rowing"])
    assert len(drop.removed) == 1 and drop.removed[0] in [*before, "rowing"]
    final = persona_at(base.model_copy(update={"Changes": changes}), 5).Personality.Values_and_Interests
    assert final == [v for v in [*before, "rowing"] if v not in drop.removed]
    assert "Values_and_Interests" not in drop.after.split(", ")


@pytest.mark.parametrize(
    ("tamper", "invariant"),
    [
        (lambda c: c.model_copy(update={"before": "something that never held"}), "change_before_in_force"),
        (lambda c: c.model_copy(update={"after": c.before}), "change_after_differs"),
        (
            lambda c: c.model_copy(update={"field": "Demographics.Career_Information"}),
            "change_learnable_field",
        ),
        (lambda c: c.model_copy(update={"effective_session": 0}), "change_session_order"),
        (lambda c: c.model_copy(update={"op": "add", "added": ["x", "y"]}), "change_list_by_items"),
    ],
)
def test_each_change_invariant_catches_its_violation(tamper, invariant: str) -> None:
    cat = catalogue()
    row = next(r for r in thousand() if r.planned_changes)
    persona = merge_persona(row, None, cat).persona
    assert change_violations(persona, 8, scales_of(cat)) == []
    broken = persona.model_copy(update={"Changes": [tamper(persona.Changes[0]), *persona.Changes[1:]]})
    assert invariant in {name for name, _ in change_violations(broken, 8, scales_of(cat))}


def test_a_step_of_two_is_caught() -> None:
    cat = catalogue()
    row = next(r for r in thousand() if any(c.op == "step" for c in r.planned_changes))
    persona = merge_persona(row, None, cat).persona
    i = next(i for i, c in enumerate(persona.Changes) if c.op == "step")
    scale = scales_of(cat)[persona.Changes[i].field]
    far = next(v for v in scale if abs(scale.index(v) - scale.index(persona.Changes[i].before)) >= 2)
    changes = list(persona.Changes)
    changes[i] = changes[i].model_copy(update={"after": far})
    found = {
        n for n, _ in change_violations(persona.model_copy(update={"Changes": changes}), 8, scales_of(cat))
    }
    assert "change_one_step" in found


def test_apply_change_of_a_list_uses_the_items() -> None:
    cat = catalogue()
    row = next(r for r in thousand() if any(c.op == "add" for c in r.planned_changes))
    persona = merge_persona(row, None, cat).persona
    c = next(c for c in persona.Changes if c.op == "add")
    after = apply_change(persona_at(persona, c.effective_session - 1), c)
    assert c.added[0] in get_value(after, c.field)


def test_planning_is_reproducible_from_the_row_seed() -> None:
    row = thousand()[17]
    again = plan_changes(random.Random(0), catalogue(), row, 3, 8)
    assert again == plan_changes(random.Random(0), catalogue(), row, 3, 8)
    assert sample_skeletons(catalogue(), range(17, 18), 11, n_sessions=8, n_changes=3)[0] == row
    assert session_times(row)[0].date() == row.start_date
