"""Drift by construction: code plans, resolves and checks every change; the LLM only writes text."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta
from functools import cache

import pytest

from personaloom.schemas.drafts import ChangeDraft
from personaloom.schemas.records import PlannedChange, SeedRow
from personaloom.stages.catalogue import Catalogue, fact_closure, load_catalogue, settle_facts
from personaloom.stages.drift import (
    active_changes,
    apply_change,
    change_violations,
    eligible_events,
    get_value,
    history_conflict,
    persona_at,
    plan_changes,
    plan_violations,
    resolve_changes,
    scales_of,
)
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


# ---------------------------------------------------------------- life events against status and history


def names(events: list[dict]) -> set[str]:
    return {e["event"] for e in events}


def test_events_fit_the_work_status_in_force() -> None:
    cat = catalogue()
    rows = thousand()
    retiree = next(r for r in rows if r.employment == "retired" and 55 <= r.age <= 75)
    assert "retired from work" not in names(eligible_events(cat, retiree))  # no retiring retiree
    worker = next(r for r in rows if r.employment == "employed" and 56 <= r.age <= 64)
    assert {"retired from work", "lost their job"} <= names(eligible_events(cat, worker))
    after = names(eligible_events(cat, worker, ["retired from work"]))  # retired now
    assert not after & {
        "retired from work",
        "lost their job",
        "got a pay rise",
        "was promoted to lead a team",
    }
    jobless = next(r for r in rows if r.employment == "unemployed" and 25 <= r.age <= 60)
    assert "lost their job" not in names(eligible_events(cat, jobless))  # no job loss for the unemployed
    assert "started a new full-time job" in names(eligible_events(cat, jobless))
    employee = next(r for r in rows if r.employment == "employed" and 25 <= r.age <= 54)
    laid_off = names(eligible_events(cat, employee, ["lost their job"]))
    assert "got a pay rise" not in laid_off and "started a new full-time job" in laid_off
    young = next(r for r in rows if r.age < 45)
    assert "became a grandparent" not in names(
        eligible_events(cat, young)
    )  # grandchildren at 45 at the earliest


def test_history_rules_out_repeats_and_contradictions() -> None:
    cat = catalogue()
    events = {e["event"]: e for e in cat.life_events}
    married = settle_facts(cat, frozenset(), events["got married"]["sets"])
    assert "married" in married and history_conflict(events["went through a divorce"], married, set())
    divorced = settle_facts(cat, married, events["went through a divorce"]["sets"])
    assert "married" not in divorced and history_conflict(events["got married"], divorced, set())
    parent = fact_closure(cat, {"young_children"})
    assert history_conflict(
        events["their first child was born"], parent, set()
    )  # no first child for a parent
    assert history_conflict(events["became a grandparent"], parent, set())  # with young children
    expecting = fact_closure(cat, {"childless", "expecting"})
    assert history_conflict(events["their first child was born"], expecting, set()) is None
    assert "childless" not in settle_facts(cat, expecting, events["their first child was born"]["sets"])
    assert history_conflict(events["had a health scare"], frozenset(), {"had a health scare"})  # once
    assert history_conflict(events["started a new full-time job"], fact_closure(cat, {"new_job"}), set())


def test_planned_events_replay_clean_and_work_status_events_change_the_routine() -> None:
    cat = catalogue()
    kinds = {k["kind"]: k for k in cat.change_kinds}
    events = {e["event"]: e for e in cat.life_events}
    moved = 0
    for row in thousand():
        assert plan_violations(cat, row) == [], row.persona_id
        assert len({c.event for c in row.planned_changes}) == len(row.planned_changes)
        status = row.employment
        for c in row.planned_changes:
            e = events[c.event]
            if e["work_status"] and e["work_status"] != status:  # a retirement, a job loss, a new job...
                assert c.field == "Pattern.Usage_Pattern" and kinds[c.kind]["status"] == e["work_status"]
                status, moved = e["work_status"], moved + 1
            else:
                assert not kinds[c.kind].get("status")
        assert not (
            row.employment == "retired" and "retired from work" in {c.event for c in row.planned_changes}
        )
    assert moved >= 50


def test_a_work_status_change_reaches_the_persona_but_not_its_demographics() -> None:
    cat = catalogue()
    row = next(r for r in thousand() if any(c.event == "lost their job" for c in r.planned_changes))
    persona = merge_persona(row, None, cat).persona
    (change,) = [c for c in persona.Changes if c.event == "lost their job"]
    assert change.field == "Pattern.Usage_Pattern" and "job hunting" in change.after
    later = persona_at(persona, change.effective_session)
    assert later.Pattern.Usage_Pattern == change.after
    assert later.Demographics == persona.Demographics  # Career_Information never changes (invariant)
    assert change_violations(persona, 8, scales_of(cat)) == []
