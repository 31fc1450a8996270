"""The dataset card (README.md) of a version: a Hugging Face card with configs for each Parquet table."""

from __future__ import annotations

from personaloom.audit import INVARIANTS
from personaloom.schemas.manifest import Manifest
from personaloom.stages.seed import SKELETON_INVARIANTS

TABLE_DOCS = {
    "dataset": "filtered sessions, persona + scene + query joined (what to load)",
    "personas": "full persona dictionaries (AI Persona format) with their dated preference changes",
    "scenes": "each persona's sessions in time order: common, persona-specific and revisit scenes",
    "queries": "personalized and neutralized opening queries with the persona fields they reveal",
    "seeds": "sampled persona skeletons with their per-row sampler seed",
    "rejections": "every row removed by any stage, with reason, score and raw output",
}


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


def dataset_card(m: Manifest) -> str:
    rows = m.rows
    configs = "\n".join(
        f"- config_name: {t}\n  data_files:\n  - split: train\n    path: {t}/part-*.parquet"
        + ("\n  default: true" if t == "dataset" else "")
        for t in TABLE_DOCS
    )
    stage_lines = "\n".join(
        f"| {r.stage} | {r.rows_in} | {r.rows_out} | {r.rejected} | {r.fallback_rows} | {r.llm_calls} | "
        f"{r.cache_hits} | {r.tokens} | {r.cost_usd:.4f} |"
        for r in m.stage_report()
    )
    invariant_lines = "\n".join(
        f"| `{name}` | {n} | {(INVARIANTS | SKELETON_INVARIANTS).get(name, '')} |"
        for name, n in m.invariants.items()
    )
    reasons = "\n".join(f"- `{r}`: {n}" for r, n in m.rejection_reasons.items()) or "- none"
    tables = "\n".join(f"- `{t}/` — {doc}" for t, doc in TABLE_DOCS.items())
    return f"""---
license: cc-by-4.0
language:
- en
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
- model `{m.model}` at {m.endpoint}; seed {m.seed}; parent version {m.parent or "none"}
- {m.config.personas} personas × {m.config.scenes_per_persona} sessions → {rows} dataset rows

## Tables

{tables}

Load with `polars.scan_parquet("dataset/*.parquet")`, DuckDB `read_parquet('dataset/*.parquet')`,
or `datasets.load_dataset("parquet", data_files="dataset/*.parquet")`.
Rows with a non-empty `fallback_fields` had fields filled from the seed tables because the model's
output was empty or invalid.

## How it was built

| stage | rows in | rows out | rejected | rows with fallbacks | LLM calls | cache hits | tokens | cost USD |
|---|---|---|---|---|---|---|---|---|
{stage_lines}

Rejection reasons:
{reasons}

## Ground truth checks

Every fact an evaluation reads (each change's before and after, the changes in force at each session,
revisit links) is computed by code and re-derived at publish; `personaloom verify` runs the same checks.

| invariant | violations | what it guarantees |
|---|---|---|
{invariant_lines}

Prompt template hashes and shard checksums are in `manifest.json`.
"""
