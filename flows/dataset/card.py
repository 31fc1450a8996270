"""The dataset card (README.md) of a version: a Hugging Face card with configs for each Parquet table."""

from __future__ import annotations

import re
from dataclasses import dataclass

from personaloom.dataset.audit import INVARIANTS
from personaloom.errors import UserError
from personaloom.schemas.manifest import Manifest
from personaloom.stages.seed import SKELETON_INVARIANTS
from personaloom.text.languages import language_name

TABLE_DOCS = {
    "dataset": "filtered sessions, persona + scene + query joined (what to load)",
    "personas": "full persona dictionaries (AI Persona format) with their dated preference changes",
    "scenes": "each persona's sessions in time order: common, persona-specific and revisit scenes",
    "queries": "personalized and neutralized opening queries with the persona fields they reveal",
    "seeds": "sampled persona skeletons with their per-row sampler seed",
    "rejections": "every row removed by any stage, with reason, score and raw output",
    "probes": "multiple-choice evaluation items (PersonaMem types) with answer key and evidence sessions",
}


@dataclass
class CardSettings:
    """What the card says beyond the manifest: chosen by `build --license / --card-endpoint`."""

    license: str | None = None  # None: not chosen (the card says so; no licence tag in its metadata)
    endpoint: bool = False  # name the endpoint's host (an internal host name would go public with the data)


CARD = CardSettings()  # the build command sets it before the flow writes the card
LICENSE_TAG = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
NOT_CHOSEN = (
    "not chosen. The rows are model outputs: the terms of the model that wrote them (`{model}`) and of the "
    "seed tables' sources apply, and only the builder can choose a licence (`personaloom build --license "
    "cc-by-4.0`, or `personaloom push --license`)."
)


def card_settings(license: str | None = None, endpoint: bool = False) -> CardSettings:
    if license is not None and not LICENSE_TAG.match(license.lower()):
        raise UserError(f"--license {license!r}: give a licence id such as cc-by-4.0, apache-2.0 or mit")
    CARD.license = license.lower() if license else None
    CARD.endpoint = endpoint
    return CARD


def table_rows(m: Manifest) -> dict[str, int]:
    """Rows per published table, from the shard list (a table of 0 rows is no loadable config)."""
    rows: dict[str, int] = {}
    for s in m.shards:
        table = s.path.split("/", 1)[0]
        rows[table] = rows.get(table, 0) + s.rows
    return rows


def priced(m: Manifest) -> bool:
    """Whether every model of the build has a price: else its cost is unknown (never $0)."""
    from personaloom.llm.budget import DEFAULT_PRICES

    table = {**DEFAULT_PRICES, **m.config.llm.prices}
    return all(model in table for model in m.config.llm.models())


def cost_text(m: Manifest, usd: float | None = None) -> str:
    """`$1.2345`, or `unknown` for an unpriced model."""
    if not priced(m):
        return "unknown"
    return f"${sum(u.cost_usd for u in m.usage.values()) if usd is None else usd:.4f}"


def _size_category(rows: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return label
    return "1M<n<10M"


EXPORTS = """
## Training, PersonaMem, LongMemEval and LoCoMo exports

`personaloom export DATASET@vN --format sft|dpo|persona-mem|longmemeval|locomo [--context-tokens N]`
writes the probes for other tools. Each history is the user's kept sessions up to the item's checkpoint as
chat messages (capped, or padded with other personas' sessions, to about N tokens).

- `sft`: `sft.jsonl`, one `{"messages": [...]}` per example (TRL `SFTTrainer`): per persona, one per kept
  session (the history before it, its personalized query, its expected response), then one per probe
  (the history, the question, the correct reply).
- `dpo`: `dpo.jsonl`, conversational `prompt`/`chosen`/`rejected` (TRL `DPOTrainer`), one pair per probe:
  chosen fits the preference in force; rejected is the outdated pre-change reply when the item has one,
  else the generic or another persona's reply.
- `persona-mem`: `questions.csv` and `shared_contexts.jsonl` as PersonaMem's
  `inference_standalone_openai.py` reads them: one shared context per persona, each question cut at its
  checkpoint by `end_index_in_shared_context`.
- `longmemeval`: `longmemeval.json`, one LongMemEval entry per item (the haystack: the user's sessions up to
  the checkpoint; evidence session ids hold `answer_`, `has_answer` marks the evidence turns; the answer is
  the value in force).
- `locomo`: `locomo.json`, one LoCoMo sample per persona (its whole conversation as `session_N`, each item
  a `qa` citing `D<N>:<i>` dia_ids; items whose field changes after their checkpoint are left out).

Training and evaluating on the same version's probes measures memorisation: hold out personas or
versions.
"""


def _lineage(m: Manifest) -> str:
    """How this version relates to its parent, as a card bullet ("" for a fresh build)."""
    if m.mode == "grow" and m.built is not None:
        shared = sum(1 for s in m.shards if s.inherited_from)
        return (
            f"\n- grown from {m.parent}: personas {m.built.first}–{m.built.end - 1} added; {shared} of "
            f"{len(m.shards)} shards inherited unchanged (hard links)"
        )
    if m.mode == "rebuild":
        return f"\n- the personas of {m.parent}, regenerated with this version's settings"
    return ""


BLIND_RULES = (
    "chance",
    "longest",
    "shortest",
    "question_overlap",
    "option_centroid",
    "odd_one_out",
    "median_length",
    "position_majority",
    "blind_judge",
)


def baseline_lines(m: Manifest) -> list[str]:
    """The blind baselines as a markdown table: one row per item type, one column per rule."""
    table = m.probe_baselines
    if not table:
        return []
    rules = [r for r in BLIND_RULES if any(r in row for row in table.values())]
    lines = ["| type | items | " + " | ".join(rules) + " |", "|---|---|" + "---|" * len(rules)]
    for group, row in sorted(table.items(), key=lambda kv: kv[0] != "all"):
        cells = " | ".join(f"{row[r]:.3f}" if r in row else "-" for r in rules)
        lines.append(f"| {group} | {int(row['items'])} | {cells} |")
    return lines


def yield_lines(m: Manifest) -> list[str]:
    lines = []
    for t, counts in m.probe_yield.items():
        why = ", ".join(
            f"{k.removeprefix('rejected:')} {n}" for k, n in counts.items() if k.startswith("rejected:")
        )
        lines.append(
            f"- {t}: {counts.get('kept', 0)} kept of {counts.get('planned', 0)} planned"
            + (f" ({why})" if why else "")
        )
    return lines


def probe_section(m: Manifest) -> str:
    if not m.probe_yield and not m.probe_baselines:
        return ""
    return (
        "\n## Probes: blind baselines and yield\n\n"
        "An item must need the history. Each rule below answers the probes from the question and\n"
        "options alone (option length, the words an option shares with the question or the other options,\n"
        "the most common key position, and the build's judge model asked without the history, over two\n"
        "option orders); each should score chance. The build keeps every rule within chance + 0.04 (items\n"
        "over the quota are rejected as `probe_blind_answerable`); `personaloom evaluate --context none`\n"
        "measures any model the\n"
        "same way.\n\n"
        + "\n".join(baseline_lines(m))
        + "\n\nItems per type:\n"
        + "\n".join(yield_lines(m))
        + "\n"
    )


def scenario_lines(m: Manifest) -> list[str]:
    """Coverage per category as a markdown table: distinct scenarios (of which catalogue scenes), sessions."""
    sc = m.scenarios
    if sc is None:
        return []
    lines = ["| category | scenarios | from the catalogue | written | sessions |", "|---|---|---|---|---|"]
    for c, n in sc.by_category.items():
        from_cat = sc.catalogue_by_category.get(c, 0)
        lines.append(f"| {c} | {n} | {from_cat} | {n - from_cat} | {sc.sessions_by_category.get(c, 0)} |")
    sessions = sum(sc.sessions_by_category.values())
    lines.append(f"| all | {sc.distinct} | {sc.from_catalogue} | {sc.written} | {sessions} |")
    return lines


def scenario_summary(m: Manifest) -> list[str]:
    """`personaloom show`'s lines: distinct scenarios, then coverage per category (scenarios/sessions)."""
    sc = m.scenarios
    if sc is None:
        return []
    per = ", ".join(f"{c} {n}/{sc.sessions_by_category.get(c, 0)}" for c, n in sc.by_category.items())
    return [
        f"scenarios: {sc.distinct} distinct ({sc.from_catalogue} of {sc.catalogue_size} catalogue scenes, "
        f"{sc.written} written; {sc.matched_catalogue} written sessions repeat a catalogue scene, "
        f"{sc.category_fallbacks} category fallbacks)",
        f"  per category (scenarios/sessions): {per}",
    ]


def scenario_section(m: Manifest) -> str:
    sc = m.scenarios
    if sc is None:
        return ""
    return (
        "\n## Scenarios\n\n"
        f"{sc.distinct} distinct scenarios over {sc.sessions} sessions (revisits not counted): "
        f"{sc.from_catalogue} of the catalogue's {sc.catalogue_size} scenes and {sc.written} written by the "
        f"model for {sc.written_sessions} persona-specific sessions. A written scene is the same scenario "
        "as a catalogue scene or another written one (any persona's) when their normalized titles are at "
        f"least {sc.threshold:g} alike (rapidfuzz token_sort_ratio); {sc.matched_catalogue} written "
        "sessions repeat a catalogue scene. The model picks each written scene's category from a fixed list; "
        f"{sc.category_fallbacks} answers named none and count as `other` (their scenes are marked "
        "`category` in `fallback_fields`). Scenes table column `category`; "
        "`personaloom.stages.scenarios.assign` gives each session's scenario.\n\n"
        + "\n".join(scenario_lines(m))
        + "\n"
    )


def conversation_lines(m: Manifest) -> list[str]:
    """`personaloom show`'s lines on the sessions: turns, own-history size, reveals."""
    c = m.conversations
    if c is None:
        return []
    share = c.implicit_share()
    judged = (
        f"{share:.3f} of {c.implicit_judged} judged" if share is not None else "not judged (no trusted judge)"
    )
    return [
        f"conversations: {c.turns_per_session} turns per session ({c.user_turns_per_session} from the user); "
        f"own history per persona {c.history_tokens_min}-{c.history_tokens_max} tokens "
        f"(median {c.history_tokens_median}, by {c.tokenizer}); "
        f"{c.preferences_per_persona} preferences per persona",
        f"  reveals: {c.planned_reveals} planned, {c.implicit_asked} implicit of which "
        f"{c.implicit_stated} came out stated and the rest inferable: {judged}; {c.evidence_marks} evidence "
        f"marks; {c.planned_traps} others' preferences planned as traps, "
        f"{c.traps_taken_as_user} read as the user's",
    ]


def conversation_section(m: Manifest) -> str:
    if m.conversations is None:
        return ""
    cal = m.judges.get("queries/reveal")
    judge = f"The reveal judge: {cal.summary()}." if cal is not None else "The reveal judge was not asked."
    return (
        "\n## Conversations and what they reveal\n\n"
        "Each session is a conversation (`dataset` column `turns`): the user simulator plays the persona as "
        "it is at that session and a plain assistant that knows nothing of the user answers. Histories, "
        "`evaluate` and every export hold only these turns; `expected_response` is a hidden reference for "
        "the judges. Code plans what each session may reveal (`planned_reveals`: a change's new value and "
        "its reason where it takes effect, a seeded rotation over the preferences, sometimes someone "
        "else's preference as a trap), checks each user turn for values stated outright (`stated`), and "
        "the calibrated reveal judge (temperature 0, `seeds/reveal_calibration.csv`) confirms what can be "
        f"inferred (`confirmed`); a mark the judge rejects is no evidence. {judge} Fine-grained "
        "preferences (`Persona.Fine`, `seeds/fine_preferences.csv`) are drawn uniformly among the "
        "dimensions that fit the person's age, work status and family, independently of each other and of "
        "the rest of the skeleton (no survey conditions them).\n\n"
        + "\n".join(f"- {line.strip()}" for line in conversation_lines(m))
        + "\n"
    )


def dataset_card(m: Manifest, settings: CardSettings | None = None) -> str:
    settings = settings or CARD
    rows = m.rows
    in_table = table_rows(m)
    if not m.shards:  # an old manifest without a shard list: every table, as before
        in_table = dict.fromkeys(TABLE_DOCS, 1)
    configs = "\n".join(
        f"- config_name: {t}\n  data_files:\n  - split: train\n    path: {t}/part-*.parquet"
        + ("\n  default: true" if t == "dataset" else "")
        for t in TABLE_DOCS
        if in_table.get(t, 0)
    )
    unknown = not priced(m)
    stage_lines = "\n".join(
        f"| {r.stage} | {r.rows_in} | {r.rows_out} | {r.rejected} | {r.fallback_rows} | {r.llm_calls} | "
        f"{r.cache_hits} | {r.tokens} | {'unknown' if unknown else f'{r.cost_usd:.4f}'} |"
        for r in m.stage_report()
    )
    license_meta = f"license: {settings.license}\n" if settings.license else ""
    license_line = settings.license or NOT_CHOSEN.format(model=m.model)
    where = f" at {m.endpoint}" if settings.endpoint else ""
    invariant_lines = "\n".join(
        f"| `{name}` | {n} | {(INVARIANTS | SKELETON_INVARIANTS).get(name, '')} |"
        for name, n in m.invariants.items()
    )
    reasons = "\n".join(f"- `{r}`: {n}" for r, n in m.rejection_reasons.items()) or "- none"
    judges = "".join(
        f"\nJudge calibration (items with a known answer, `seeds/judge_calibration.csv`): {j.summary()}.\n"
        for j in m.judges.values()
    )
    found = m.languages or {"en": rows}  # versions built before language ID counted nothing: English
    language_tags = "\n".join(f"- {code}" for code in found)
    language_lines = "\n".join(f"| {code} | {language_name(code)} | {n} |" for code, n in found.items())
    tables = "\n".join(
        f"- `{t}/` — {doc}" + ("" if in_table.get(t, 0) else " (0 rows in this version: no config)")
        for t, doc in TABLE_DOCS.items()
    )
    exports = EXPORTS if "probes" in m.counts and m.counts["probes"].rows_out else ""
    probes = probe_section(m)
    scenarios = scenario_section(m) + conversation_section(m)
    return f"""---
{license_meta}language:
{language_tags}
pretty_name: {m.dataset} {m.version}
size_categories:
- {_size_category(rows)}
task_categories:
- text-generation
tags:
- synthetic
- personas
- personalization
- personaloom
configs:
{configs}
---

# {m.dataset} {m.version}

Synthetic, life-long persona dataset built by personaloom (five-stage pipeline after
*AI Persona: Towards Life-long Personalization of LLMs*, arXiv 2412.13103).

- built {m.created_at:%Y-%m-%d %H:%M} UTC by code {m.code_version}
- model `{m.model}`{where}; seed {m.seed}; parent version {m.parent or "none"}
- {m.config.personas} personas × {m.config.scenes_per_persona} sessions → {rows} dataset rows{_lineage(m)}
- LLM cost: {cost_text(m)}{" (no price for the model: add it as [llm.prices])" if unknown else ""}
- licence: {license_line}

## Tables

{tables}

Load with `polars.scan_parquet("dataset/*.parquet")`, DuckDB `read_parquet('dataset/*.parquet')`,
or `datasets.load_dataset("parquet", data_files="dataset/*.parquet")`.
Rows with a non-empty `fallback_fields` had fields filled from the seed tables because the model's
output was empty or invalid; `answerability` there means no judge verdict was applied to the row.
{scenarios}{exports}{probes}
## How it was built

| stage | rows in | rows out | rejected | rows with fallbacks | LLM calls | cache hits | tokens | cost USD |
|---|---|---|---|---|---|---|---|---|
{stage_lines}

Rejection reasons:
{reasons}
{judges}
## What the skeletons are and are not

Persona skeletons are drawn from the seed tables, whose sources `seeds/README.md` names (names and surname
forms by gender, religious composition, migration corridors, qualification ages, life events checked
against each person's status and history). MBTI types follow the US national-sample shares published by the
Myers-Briggs organisation in every locale, age and gender, and formality, verbosity, proactivity and
emotional tone are drawn uniformly and independently of locale, age, gender, MBTI and one another: no
public survey measures them for people writing to an assistant, so differences in these fields between
groups of this dataset are not findings.

## Languages

Each persona writes to the assistant in one language (`persona.Demographics.Interaction_Language`, drawn
from the persona's languages); every prompt asks for it, and stage 5 drops a query that language ID finds
in another language (`wrong_language`). Dataset rows per language found by language ID (fastText lid.176)
in the personalized query:

| language | name | rows |
|---|---|---|
{language_lines}

## Ground truth checks

Every fact an evaluation reads (each change's before and after, the changes in force at each session,
revisit links) is computed by code and re-derived at publish; `personaloom verify` runs the same checks.

| invariant | violations | what it guarantees |
|---|---|---|
{invariant_lines}

Prompt template hashes and shard checksums are in `manifest.json`.
"""
