"""Invariants of a dataset version, re-derived from its tables: the ground truth checks itself.

Every fact a metric or an evaluation item reads is computed by code; this module computes each again
from what was written and counts the rows where they disagree. Run at publish (a violation stops the
build: it is a bug, not a warning) and by `personaloom verify`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from personaloom.dataset.store import read_records, read_table
from personaloom.schemas.records import DatasetRow, PersonaRecord, Scene, SeedRow, evidence_keys
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.drift import (
    active_changes,
    change_violations,
    eligible_events,
    fine_violations,
    scales_of,
)

# name → what it guarantees (the manifest lists every name, with its count of violations)
INVARIANTS: dict[str, str] = {
    "change_learnable_field": "changes touch only sections a learning agent may update (never Demographics)",
    "change_session_order": "changes happen at sessions 1..n-1, in time order",
    "change_before_in_force": "a change's `before` is exactly the value in force before it",
    "change_after_differs": "a change's `after` differs from its `before`",
    "change_list_by_items": "a list field changes by adding or removing one named item",
    "change_one_step": "a communication-style change moves one step on its scale",
    "change_event_eligible": "the life event behind a planned change can happen to this person: age, and the "
    "work status and life stage in force (no retiring retiree, no job loss for the unemployed)",
    "persona_matches_skeleton": "the persona keeps its skeleton's name (in the locale's script), age, "
    "languages, interaction language and fine-grained preferences",
    "fine_from_table": "a fine-grained preference is an alternative of its dimension (seeds/"
    "fine_preferences.csv) that fits the person's age, work status and facts, and a change of one switches "
    "a planted preference to another alternative",
    "active_changes_per_session": "each dataset row carries exactly the changes in force at its session",
    "revisit_links_earlier_session": "a revisit links an earlier session of the same persona",
    "session_times_increase": "a persona's sessions are in time order",
    "scene_category_checked": "a scene's category is its catalogue scene's, its origin's for a revisit, and "
    "for a written scene one of the list, or 'other' exactly when marked a category fallback",
    "session_is_what_was_said": "a session's turns are numbered in order from its opening (the user's "
    "personalized query), and none is its hidden reference answer (expected_response)",
    "reveal_marks_planned": "every reveal mark sits on a user turn, was planned for that session by code, "
    "and its `stated` is code's check of that turn",
    "revealed_fields_from_marks": "a session's revealed fields hold every field a turn is evidence for",
    "probe_evidence_turns": "a probe's evidence turns are user turns of its evidence sessions",
    "probe_trap_never_key": "a value the user said was someone else's is never a probe's key",
    "probe_one_correct": "a probe has exactly one correct option, at its answer index",
    "probe_key_in_force": "a probe's key is the value in force at its checkpoint (the sequence, the reason, "
    "or for 'new things' an interest the user does not hold), and each option holds its own value verbatim",
    "probe_evidence_backs_key": "a probe's evidence is kept sessions of its persona up to its checkpoint "
    "(not the checkpoint alone), after the change it depends on, revealing the field",
    "probe_distance": "a probe's distance is its checkpoint minus its last evidence session",
    "probe_options_distinct": "a probe's four options are distinct replies",
    "probe_baselines_recorded": "the blind baselines in the manifest are those of the published probes",
}


def _skeleton_checks(seeds: list[SeedRow], cat: Catalogue) -> Counter[str]:
    from personaloom.stages.seed import skeleton_violations  # the sampler's rules (age, status, languages)

    found: Counter[str] = Counter()
    for row in seeds:
        # each event against the status in force after the earlier ones (a job loss makes them unemployed)
        history = [p.event for p in row.planned_changes]
        if any(
            p.event not in {e["event"] for e in eligible_events(cat, row, history[:i])}
            for i, p in enumerate(row.planned_changes)
        ):
            found["change_event_eligible"] += 1
        if fine_violations(cat, row):
            found["fine_from_table"] += 1
        found.update({name for name, _ in skeleton_violations(row, cat)})
    return found


def _persona_checks(seeds: dict[str, SeedRow], personas: list[PersonaRecord], cat: Catalogue) -> Counter[str]:
    found: Counter[str] = Counter()
    scales = scales_of(cat)
    for p in personas:
        seed = seeds.get(p.persona_id)
        n_sessions = len(seed.session_gaps_days) if seed else 10**6
        found.update({name for name, _ in change_violations(p.persona, n_sessions, scales)})
        d = p.persona.Demographics
        kept = (d.Name, d.Age, d.Language, d.Interaction_Language, p.persona.Fine)
        skeleton = None
        if seed is not None:
            skeleton = (seed.name, seed.age, seed.languages, seed.interaction_language or "en", seed.fine)
        if skeleton is not None and kept != skeleton:
            found["persona_matches_skeleton"] += 1
    return found


def _session_checks(root: Path, personas: dict[str, PersonaRecord]) -> Counter[str]:
    found: Counter[str] = Counter()
    rows = read_table(root / "dataset", columns=["persona_id", "session_index", "active_changes"]).to_pylist()
    for r in rows:
        p = personas.get(r["persona_id"])
        want = [c.model_dump() for c in active_changes(p.persona, r["session_index"])] if p else None
        if want != r["active_changes"]:
            found["active_changes_per_session"] += 1
    scenes = read_records(root / "scenes", Scene)
    by_persona: dict[str, list[Scene]] = defaultdict(list)
    for s in scenes:
        by_persona[s.persona_id].append(s)
    index = {s.scene_id: s for s in scenes}
    for mine in by_persona.values():
        mine.sort(key=lambda s: s.session_index)
        times = [s.timestamp for s in mine]
        if times != sorted(times):
            found["session_times_increase"] += 1
        for s in mine:
            if s.kind != "revisit":
                continue
            origin = index.get(s.revisits or "")
            if origin is None or origin.persona_id != s.persona_id or origin.session_index >= s.session_index:
                found["revisit_links_earlier_session"] += 1
    return found


def _category_checks(root: Path, cat: Catalogue) -> Counter[str]:
    """Scene categories (personaloom.stages.scenarios); a version built before they were recorded has none."""
    from personaloom.stages.scenarios import CATEGORY_FALLBACK, OTHER, categories

    found: Counter[str] = Counter()
    cols = ["scene_id", "kind", "catalogue_id", "category", "revisits", "fallback_fields"]
    rows = read_table(root / "scenes", Scene, columns=cols).to_pylist()
    if all(r["category"] is None for r in rows):
        return found
    of_catalogue = {s.scene_id: s.category for s in cat.scenes}
    allowed = set(categories(cat))
    by_id = {r["scene_id"]: r for r in rows}
    for r in rows:
        marked = CATEGORY_FALLBACK in (r["fallback_fields"] or ())
        if r["kind"] == "revisit":
            ok = r["category"] == by_id.get(r["revisits"] or "", {}).get("category")
        elif r["catalogue_id"] is not None:
            ok = r["category"] == of_catalogue.get(r["catalogue_id"]) and not marked
        else:
            ok = r["category"] in allowed and not marked or r["category"] == OTHER and marked
        found["scene_category_checked"] += not ok
    return found


def _conversation_checks(root: Path) -> Counter[str]:
    from personaloom.schemas.probes import ProbeItem
    from personaloom.stages.reveals import REASON, stated

    found: Counter[str] = Counter()
    rows = read_records(root / "dataset", DatasetRow)
    user_turns: dict[str, tuple[str, int]] = {}  # turn id → (persona, session)
    traps: set[tuple[str, str, str]] = set()
    for r in rows:
        ids = [t.turn_id for t in r.turns]
        if r.turns and (
            ids != [f"{r.query_id}-t{i}" for i in range(len(ids))]
            or r.turns[0].role != "user"
            or r.turns[0].content != r.personalized_query
            or any(t.content == r.expected_response for t in r.turns)
        ):
            found["session_is_what_was_said"] += 1
        planned = {(p.key, p.who): p.value for p in r.planned_reveals}
        if any(
            t.role != "user"
            or (m.key, m.who) not in planned
            or m.stated != stated(planned[(m.key, m.who)], t.content)
            for t in r.turns
            for m in t.reveals
        ):
            found["reveal_marks_planned"] += 1
        evidence = {field for t in r.turns for field in evidence_keys(t) if not field.endswith(REASON)}
        if not evidence <= set(r.revealed_fields):
            found["revealed_fields_from_marks"] += 1
        for t in r.turns:
            if t.role == "user":
                user_turns[t.turn_id] = (r.persona_id, r.session_index)
            traps |= {
                (r.persona_id, m.key, planned[(m.key, m.who)])
                for m in t.reveals
                if m.who == "others" and m.stated and (m.key, m.who) in planned
            }
    if not list((root / "probes").glob("part-*.parquet")):
        return found
    for item in read_records(root / "probes", ProbeItem):
        if any(
            user_turns.get(t) not in {(item.persona_id, s) for s in item.evidence_sessions}
            for t in item.evidence_turns
        ):
            found["probe_evidence_turns"] += 1
        if (item.persona_id, item.path, item.truth) in traps:
            found["probe_trap_never_key"] += 1
    return found


def _probe_checks(root: Path, personas: dict[str, PersonaRecord]) -> Counter[str]:
    from rapidfuzz import fuzz

    from personaloom.schemas.probes import ProbeItem
    from personaloom.stages import probes

    found: Counter[str] = Counter()
    if not list((root / "probes").glob("part-*.parquet")):
        return found
    items = read_records(root / "probes", ProbeItem)
    rows = read_table(
        root / "dataset", columns=["persona_id", "session_index", "revealed_fields"]
    ).to_pylist()
    shown: dict[tuple[str, int], set[str]] = {
        (r["persona_id"], r["session_index"]): set(r["revealed_fields"]) for r in rows
    }
    for item in items:
        kinds = item.option_kinds
        if kinds.count("correct") != 1 or kinds[item.answer] != "correct":
            found["probe_one_correct"] += 1
        p = personas.get(item.persona_id)
        if p is None or not _key_in_force(item, p.persona):
            found["probe_key_in_force"] += 1
        sessions = [(item.persona_id, s) for s in item.evidence_sessions]
        kept = all(k in shown for k in sessions)
        reveal = item.type == probes.TYPES["new"] or any(item.path in shown.get(k, set()) for k in sessions)
        if (
            not item.evidence_sessions
            or not kept
            or max(item.evidence_sessions) > item.checkpoint_session
            or min(item.evidence_sessions) >= item.checkpoint_session
            or (item.type in _FIELD_TYPES and not reveal)
            or (p is not None and not _after_change(item, p.persona))
        ):
            found["probe_evidence_backs_key"] += 1
        if item.evidence_sessions and item.distance_sessions != item.checkpoint_session - max(
            item.evidence_sessions
        ):
            found["probe_distance"] += 1
        o = item.options
        if any(fuzz.ratio(a, b) >= probes.DISTINCT for i, a in enumerate(o) for b in o[i + 1 :]):
            found["probe_options_distinct"] += 1
    manifest = root / "manifest.json"
    if manifest.exists():
        import orjson

        recorded = orjson.loads(manifest.read_bytes()).get("probe_baselines") or {}
        judged = {i.probe_id: i.blind_judge for i in items if i.blind_judge is not None}
        if recorded != probes.baselines(items, judged):
            found["probe_baselines_recorded"] += 1
    return found


_FIELD_TYPES = {
    "recalling_facts_mentioned_by_the_user",
    "recalling_the_latest_user_preferences",
    "tracking_the_full_sequence_of_preference_updates",
    "recommendation_aligned_with_users_latest_preferences",
}


def _key_in_force(item: Any, base: Any) -> bool:
    from personaloom.stages import probes
    from personaloom.stages.drift import as_text, get_value, persona_at

    values = item.option_values
    if values and (
        values[item.answer] != item.truth
        or any(f'"{v}"' not in o for v, o in zip(values, item.options, strict=False))
    ):
        return False
    now = persona_at(base, item.checkpoint_session)
    kind = probes.KIND_OF.get(item.type)
    chain = probes._newest_per_field(base.Changes, item.checkpoint_session).get(item.path, [])
    if kind in ("latest", "recall", "recommend", "generalize"):
        return item.truth == as_text(get_value(now, item.path))
    if kind == "evolution":
        return bool(chain) and item.truth == " → ".join([chain[0].before, *(c.after for c in chain)])
    if kind == "reason":
        return bool(chain) and item.truth == chain[-1].reason
    if kind == "new":
        return item.truth not in [str(v) for v in get_value(now, item.path)]
    return False


def _after_change(item: Any, base: Any) -> bool:
    """Items about the value in force cite a session at or after the latest change of the field."""
    from personaloom.stages import probes

    if probes.KIND_OF.get(item.type) not in ("latest", "recommend", "reason", "generalize"):
        return True
    chain = probes._newest_per_field(base.Changes, item.checkpoint_session).get(item.path, [])
    return not chain or max(item.evidence_sessions) >= chain[-1].effective_session


def audit(root: Path, cat: Catalogue) -> dict[str, int]:
    """Violations per invariant over the tables under `root` (a version or a staging folder)."""
    seeds = read_records(root / "seeds", SeedRow)
    personas = read_records(root / "personas", PersonaRecord)
    found = _skeleton_checks(seeds, cat)
    found += _persona_checks({s.persona_id: s for s in seeds}, personas, cat)
    found += _session_checks(root, {p.persona_id: p for p in personas})
    found += _category_checks(root, cat)
    found += _probe_checks(root, {p.persona_id: p for p in personas})
    found += _conversation_checks(root)
    from personaloom.stages.seed import SKELETON_INVARIANTS

    names = dict.fromkeys(INVARIANTS, 0) | dict.fromkeys(SKELETON_INVARIANTS, 0) | {k: 0 for k in found}
    return {name: int(found[name]) for name in names}


def broken(counts: dict[str, Any]) -> list[str]:
    return [f"{name}: {n} row(s)" for name, n in counts.items() if n]
