"""Invariants of a dataset version, re-derived from its tables: the ground truth checks itself.

Every fact a metric or an evaluation item reads is computed by code; this module computes each again
from what was written and counts the rows where they disagree. Run at publish (a violation stops the
build: it is a bug, not a warning) and by `personaloom verify`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from personaloom.catalogue import Catalogue
from personaloom.drift import active_changes, change_violations, eligible_events, scales_of
from personaloom.schemas.records import PersonaRecord, Scene, SeedRow
from personaloom.store import read_records, read_table

# name → what it guarantees (the manifest lists every name, with its count of violations)
INVARIANTS: dict[str, str] = {
    "change_learnable_field": "changes touch only sections a learning agent may update (never Demographics)",
    "change_session_order": "changes happen at sessions 1..n-1, in time order",
    "change_before_in_force": "a change's `before` is exactly the value in force before it",
    "change_after_differs": "a change's `after` differs from its `before`",
    "change_list_by_items": "a list field changes by adding or removing one named item",
    "change_one_step": "a communication-style change moves one step on its scale",
    "change_event_eligible": "the life event behind a planned change can happen to this person",
    "persona_matches_skeleton": "the persona keeps its skeleton's name (in the locale's script), age, "
    "languages and interaction language",
    "active_changes_per_session": "each dataset row carries exactly the changes in force at its session",
    "revisit_links_earlier_session": "a revisit links an earlier session of the same persona",
    "session_times_increase": "a persona's sessions are in time order",
}


def _skeleton_checks(seeds: list[SeedRow], cat: Catalogue) -> Counter[str]:
    from personaloom.stages.seed import skeleton_violations  # the sampler's rules (age, status, languages)

    found: Counter[str] = Counter()
    for row in seeds:
        events = {e["event"] for e in eligible_events(cat, row)}
        if any(p.event not in events for p in row.planned_changes):
            found["change_event_eligible"] += 1
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
        kept = (d.Name, d.Age, d.Language, d.Interaction_Language)
        skeleton = (seed.name, seed.age, seed.languages, seed.interaction_language or "en") if seed else None
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


def audit(root: Path, cat: Catalogue) -> dict[str, int]:
    """Violations per invariant over the tables under `root` (a version or a staging folder)."""
    seeds = read_records(root / "seeds", SeedRow)
    personas = read_records(root / "personas", PersonaRecord)
    found = _skeleton_checks(seeds, cat)
    found += _persona_checks({s.persona_id: s for s in seeds}, personas, cat)
    found += _session_checks(root, {p.persona_id: p for p in personas})
    from personaloom.stages.seed import SKELETON_INVARIANTS

    names = dict.fromkeys(INVARIANTS, 0) | dict.fromkeys(SKELETON_INVARIANTS, 0) | {k: 0 for k in found}
    return {name: int(found[name]) for name in names}


def broken(counts: dict[str, Any]) -> list[str]:
    return [f"{name}: {n} row(s)" for name, n in counts.items() if n]
