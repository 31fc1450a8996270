"""Scenarios: what a session is about, across the whole build (issue 28 item 5).

A scene is one persona's session; a scenario is the task it is about. The catalogue's scenes are scenarios
(`seeds/scenes.csv`), and each persona-specific scene the LLM writes is one too, with a category it picks
from a fixed list (the catalogue's categories plus `EXTRA_CATEGORIES`) and code checks: an answer that is no
category of the list becomes `OTHER` and the scene is marked (`fallback_fields` "category").

The same task written for many people ("Plan a birthday party" for 50 personas) is one scenario: written
titles are grouped by rapidfuzz similarity (`token_sort_ratio` of the normalized titles, at least
`DedupLevels.scenario_threshold`) against the catalogue's titles and one another, across personas. Only the
title is compared: the description personalizes the task (a date, a budget, a name) and would make every
scene distinct. Revisits follow up a scenario already counted and are left out. Nothing is dropped: this
only counts (`ScenarioStats` in the manifest, "Scenarios" on the card); `assign` gives each scene's
scenario for a notebook.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from pydantic import Field, create_model
from rapidfuzz import fuzz
from rapidfuzz.process import cdist

from personaloom.schemas.drafts import Draft
from personaloom.schemas.filtering import NearDupConfig
from personaloom.schemas.manifest import ScenarioStats
from personaloom.schemas.records import Scene
from personaloom.stages.catalogue import Catalogue
from personaloom.stages.filter import find_near_duplicates
from personaloom.stages.filter.normalize import normalize

# Sides of a life the catalogue's categories miss, which the list prompt asks for (hobbies and interests,
# family, emotions and wellbeing, creative work, devices and software, forms and official errands).
EXTRA_CATEGORIES: tuple[str, ...] = ("creative", "family", "hobbies", "paperwork", "technology", "wellbeing")
OTHER = "other"  # a written scene whose answer was no category of the list (never offered to the LLM)
CATEGORY_FALLBACK = "category"  # its mark in Scene.fallback_fields
BLOCK = 1024  # rows of the similarity matrix scored at once (memory: BLOCK x unique titles float32)
# unique written + catalogue titles scored pair by pair: 20k took 4.6 s here, 50k about 30 s; past it LSH
# blocking, which found 31 of the 42 near-duplicate pairs of 20k fake titles the exhaustive scoring found
EXACT_LIMIT = 50_000


def categories(cat: Catalogue) -> tuple[str, ...]:
    """The categories a written scene may have: the catalogue's, then the extra ones, sorted."""
    return tuple(sorted({s.category for s in cat.scenes} | set(EXTRA_CATEGORIES)))


def check_category(answer: str | None, allowed: Sequence[str]) -> str | None:
    """The category `answer` names (case and surrounding spaces or punctuation ignored), else None."""
    if not answer:
        return None
    name = answer.strip().strip(".,;:!\"'`()[]").strip().casefold()
    return name if name in allowed else None


@cache
def scenario_list_model(allowed: tuple[str, ...], n: int | None = None) -> type[Draft]:
    """The list call's answer: `n` scenes, each with a title, a description and a category.

    The schema lists the categories (`enum`) and asks for exactly `n` scenes (`minItems` = `maxItems`), so a
    constrained decoder (llama.cpp's grammar, strict structured output) picks a category of the list and
    writes every scene the plan needs; validation is looser (any string, 1 to 40 scenes), so a bad category
    or a short list does not cost the whole answer: code checks the category (`check_category`, else
    `OTHER`, counted) and spare catalogue scenes stand in for missing ones (stage 3's plan).
    """
    idea = create_model(
        "ScenarioIdea",
        __base__=Draft,
        title=(str, Field(min_length=3, max_length=120)),
        description=(str, Field(min_length=10, max_length=400)),
        category=(str, Field(max_length=40, json_schema_extra={"enum": list(allowed)})),
    )
    count = {"minItems": n, "maxItems": n} if n else None
    return create_model(
        "ScenarioList",
        __base__=Draft,
        scenes=(list[idea], Field(min_length=1, max_length=40, json_schema_extra=count)),
    )


# ---------------------------------------------------------------- distinct scenarios


class SceneRef(NamedTuple):
    """The columns of a scene that say which scenario it is."""

    persona_id: str
    session_index: int
    kind: str
    title: str
    catalogue_id: str | None
    category: str | None
    fallback: bool  # its category was a fallback (`OTHER`)


COLUMNS = ["persona_id", "session_index", "kind", "title", "catalogue_id", "category", "fallback_fields"]


def refs_of(scenes: Iterable[Scene | dict[str, Any]]) -> list[SceneRef]:
    """SceneRefs of Scene records or scenes-table rows (dicts with `COLUMNS`)."""
    out = []
    for s in scenes:
        d = s.model_dump(include=set(COLUMNS)) if isinstance(s, Scene) else s
        out.append(
            SceneRef(
                d["persona_id"],
                d["session_index"],
                d["kind"],
                d["title"],
                d["catalogue_id"],
                d.get("category"),
                CATEGORY_FALLBACK in (d.get("fallback_fields") or ()),
            )
        )
    return out


def read_refs(root: Path) -> list[SceneRef]:
    """The scenes table of a version (or staging) folder, only the columns `assign` reads."""
    from personaloom.dataset.store import read_table

    return refs_of(read_table(root / "scenes", Scene, columns=COLUMNS).to_pylist())


def _title_key(titles: list[str]) -> list[str]:
    """Normalized titles (case, punctuation, Unicode folds as the dedup's `normalize`), words sorted:
    rapidfuzz's ratio of two keys is the token_sort_ratio of the titles, at a fifth of its cost."""
    norm = normalize(pl.Series(titles, dtype=pl.String)).to_list()
    return [" ".join(sorted((t or "").split())) for t in norm]


def _representatives(keys: list[str], fixed: int, threshold: float) -> list[int]:
    """For each key, the index of the key it is the same scenario as (itself when new).

    Greedy in order: a key joins the most similar earlier representative scoring >= threshold (no chains
    through members). The first `fixed` keys (the catalogue's titles) are representatives whatever they
    score against one another: two catalogue scenes stay two scenarios. Every pair is scored (blocks of
    `BLOCK` rows); past `EXACT_LIMIT` keys, the candidates come from the dataset filter's MinHash-LSH
    blocking instead (`_blocked`).
    """
    n = len(keys)
    if n > EXACT_LIMIT:
        return _blocked(keys, fixed, threshold)
    rep = list(range(n))
    is_rep = np.zeros(n, dtype=bool)
    is_rep[:fixed] = True
    for start in range(fixed, n, BLOCK):
        stop = min(start + BLOCK, n)
        scores = cdist(
            keys[start:stop], keys[:stop], scorer=fuzz.ratio, dtype=np.float32, score_cutoff=threshold,
            workers=-1,
        )  # fmt: skip
        rows, cols = np.nonzero(scores >= threshold)  # below the cutoff rapidfuzz scores 0
        hits: dict[int, list[int]] = {}
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if c < start + r:
                hits.setdefault(start + r, []).append(c)
        for i in range(start, stop):
            found = [c for c in hits.get(i, ()) if is_rep[c]]
            if found:
                rep[i] = max(found, key=lambda c: (scores[i - start, c], -c))
            else:
                is_rep[i] = True
    return rep


def _blocked(keys: list[str], fixed: int, threshold: float) -> list[int]:
    """`_representatives` at scale: the near-duplicate groups of the dataset filter (MinHash-LSH blocking
    of word and character shingles, rapidfuzz-verified pairs, connected components); a group's first key
    represents it, and every catalogue key represents itself."""
    res = find_near_duplicates(
        keys, NearDupConfig(threshold=threshold, min_df=1, verify_on="chars"), normalized=True
    )
    return [i if i < fixed or j < 0 else int(j) for i, j in enumerate(res.dup_of.tolist())]


class Assignment(NamedTuple):
    """Each counted scene's scenario: a catalogue scene_id, or `w:<persona_id>-s<index>` of the first
    written scene of its group (in persona, session order)."""

    refs: list[SceneRef]  # the counted scenes (no revisits), in persona, session order
    scenario: list[str]  # per ref
    category: dict[str, str]  # scenario → its category


def assign(refs: Iterable[SceneRef], cat: Catalogue, threshold: float) -> Assignment:
    """Group the scenes into scenarios (see the module doc). Deterministic: independent of shard order."""
    counted = sorted((r for r in refs if r.kind != "revisit"), key=lambda r: (r.persona_id, r.session_index))
    catalogue = {s.scene_id: s for s in cat.scenes}
    category = {sid: s.category for sid, s in catalogue.items()}
    written = [r for r in counted if r.catalogue_id is None]
    unique: dict[str, int] = {}  # normalized title → its first written ref (exact repeats: one row)
    wkeys = _title_key([r.title for r in written])
    for i, k in enumerate(wkeys):
        unique.setdefault(k, i)
    cids = list(catalogue)
    keys = _title_key([catalogue[c].title for c in cids]) + list(unique)
    rep = _representatives(keys, len(cids), threshold)
    first_of = list(unique.values())
    label = cids + [f"w:{written[i].persona_id}-s{written[i].session_index:03d}" for i in first_of]
    of_key = {k: label[rep[len(cids) + j]] for j, k in enumerate(unique)}
    scenario, w = [], 0
    votes: dict[str, Counter[str]] = {}
    for r in counted:
        if r.catalogue_id is not None:
            scenario.append(r.catalogue_id)
            continue
        sid = of_key[wkeys[w]]
        w += 1
        scenario.append(sid)
        if sid not in category:
            votes.setdefault(sid, Counter())[r.category if r.category and not r.fallback else OTHER] += 1
    for sid, tally in votes.items():
        # the category most of its scenes were given; a fallback only when none had one; ties: alphabetical
        real = [(-n, c) for c, n in tally.items() if c != OTHER]
        category[sid] = min(real)[1] if real else OTHER
    return Assignment(counted, scenario, category)


def scenario_stats(refs: Iterable[SceneRef], cat: Catalogue, threshold: float) -> ScenarioStats:
    """The build's distinct scenarios, from its scenes (the manifest's `scenarios`)."""
    a = assign(refs, cat, threshold)
    catalogue = {s.scene_id for s in cat.scenes}
    used = set(a.scenario)
    from_catalogue = used & catalogue
    new = used - catalogue
    names = [*categories(cat), OTHER]
    by_category = Counter(a.category[s] for s in used)
    sessions = Counter(a.category[s] for s in a.scenario)
    written_refs = [(r, s) for r, s in zip(a.refs, a.scenario, strict=True) if r.catalogue_id is None]
    return ScenarioStats(
        distinct=len(used),
        from_catalogue=len(from_catalogue),
        written=len(new),
        catalogue_size=len(catalogue),
        sessions=len(a.refs),
        written_sessions=len(written_refs),
        matched_catalogue=sum(1 for _, s in written_refs if s in catalogue),
        category_fallbacks=sum(1 for r, _ in written_refs if r.fallback),
        threshold=threshold,
        by_category={c: by_category[c] for c in names if c != OTHER or by_category[c]},
        catalogue_by_category={
            c: sum(1 for s in from_catalogue if a.category[s] == c) for c in names if c != OTHER
        },
        sessions_by_category={c: sessions[c] for c in names if c != OTHER or sessions[c]},
    )


def version_scenarios(root: Path, cat: Catalogue, threshold: float) -> ScenarioStats:
    """`scenario_stats` of the scenes table under `root` (a version or its staging folder)."""
    return scenario_stats(read_refs(root), cat, threshold)
