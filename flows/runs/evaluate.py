"""Prefect flow `evaluate_dataset`: a version's probes against any OpenAI-compatible model.

Each item is asked after the user's history up to its checkpoint (capped or padded with
`context_tokens`), or with no history at all (`context="none"`: a blind reader) or with the persona as it
was before any change (`context="base-persona"`: a stale memory, which should fail the items about the latest
values); in `mcq` mode the model picks one of the four replies, in `open` mode it answers freely and a
judge checks the answer against the key. Reference rows come with every run: `oracle` (picks the one option
that holds the value in force; below 1.0 the items are broken), each blind rule of `personaloom.stages.blind`
(`blind:longest`, ... which never read the history), and the summary's `chance` column.
Output: DATASET/runs/vNNNN/eval/<run>/results/part-*.parquet, summary.md (also a Prefect artifact),
manifest.json (personaloom.runs.derived: beside the version, which stays as published).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from personaloom.dataset.store import read_records, shard_infos
from personaloom.dataset.version import open_version
from personaloom.errors import UserError
from personaloom.llm.calls import LLMCall
from personaloom.llm.client import LLMResult
from personaloom.runs.derived import DerivedRun
from personaloom.runtime.run import LLM_NOT_IDENTITY, Run, flow_run_namer, open_run
from personaloom.schemas.drafts import Draft
from personaloom.schemas.probes import EvalConfig, EvalManifest, EvalResult, ProbeItem
from personaloom.schemas.records import DatasetRow
from personaloom.stages import blind
from personaloom.stages.probes import history, message_tokens, no_probes_message, sample_item
from personaloom.version import code_version

LETTERS = "abcd"
DISTANCE_BUCKETS = ((0, "0"), (2, "1-2"), (5, "3-5"), (10**9, "6+"))
CONTEXT_BUCKETS = ((1_000, "<1k"), (4_000, "1k-4k"), (16_000, "4k-16k"), (10**12, "16k+"))
NOT_IDENTITY = {"run": True, "shard_size": True, "llm": LLM_NOT_IDENTITY}


class Asked(NamedTuple):
    item: ProbeItem
    history: list[dict[str, str]]


def pick_letter(text: str) -> int | None:
    """The option named after <final_answer> (else anywhere), PersonaMem-style; None unless exactly one."""
    tail = text.split("<final_answer>")[-1].lower()
    for scope in (tail, text.lower()):
        found = set(re.findall(r"\(([a-d])\)", scope)) or set(re.findall(r"\b([a-d])\b", scope))
        if len(found) == 1:
            return LETTERS.index(found.pop())
    return None


def _mcq_result(asked: Asked, res: LLMResult[Any]) -> tuple[int | None, str]:
    return (pick_letter(res.raw) if res.raw else None), res.raw


ANSWER_MCQ: LLMCall[Asked, tuple[int | None, str]] = LLMCall(
    name="eval/mcq",
    variables=("history", "question", "options"),
    render=lambda a: {"history": a.history, "question": a.item.question, "options": a.item.options},
    build=_mcq_result,
    response=None,
    max_tokens=400,
    role="chatbot",
    sample=lambda s: Asked(sample_item(s), []),
)
ANSWER_OPEN: LLMCall[Asked, str] = LLMCall(
    name="eval/open",
    variables=("history", "question"),
    render=lambda a: {"history": a.history, "question": a.item.question},
    build=lambda a, res: res.raw,
    response=None,
    max_tokens=400,
    role="chatbot",
    sample=lambda s: Asked(sample_item(s), []),
)


class OpenVerdict(Draft):
    follows_key: bool
    reason: str = ""


class Graded(NamedTuple):
    item: ProbeItem
    answer: str


JUDGE_OPEN: LLMCall[Graded, bool | None] = LLMCall(
    name="eval/judge_open",
    variables=("question", "truth", "outdated", "answer", "language"),
    render=lambda g: {
        "question": g.item.question,
        "truth": g.item.truth,
        "outdated": g.item.outdated,
        "language": g.item.language,
        "answer": g.answer,
    },
    build=lambda g, res: res.value.follows_key if res.value is not None else None,
    response=OpenVerdict,
    max_tokens=150,
    role="judge",
    temperature=0.0,
    sample=lambda s: Graded(sample_item(s), "Here are three short bullet points."),
)
EVAL_CALLS: tuple[LLMCall[Any, Any], ...] = (ANSWER_MCQ, ANSWER_OPEN, JUDGE_OPEN)


# ---------------------------------------------------------------- asking


def base_persona_note(rows: Sequence[DatasetRow]) -> list[dict[str, str]]:
    """The persona as it was before any change, as the one thing a stale memory knows."""
    if not rows:
        return []
    base = rows[0].persona.model_dump(mode="json", exclude={"Changes"})
    return [{"role": "memory", "content": "What you know about this user: " + orjson.dumps(base).decode()}]


def asked_items(
    items: Sequence[ProbeItem],
    rows: Sequence[DatasetRow],
    context_tokens: int | None,
    context: str = "history",
) -> list[Asked]:
    """Each item with its history; padding comes from the other personas' sessions (unrelated to the user)."""
    by_persona: dict[str, list[DatasetRow]] = defaultdict(list)
    for r in rows:
        by_persona[r.persona_id].append(r)
    out = []
    for item in items:
        if context != "history":
            note = base_persona_note(by_persona[item.persona_id]) if context == "base-persona" else []
            out.append(Asked(item, note))
            continue
        filler = [r for pid, rs in sorted(by_persona.items()) if pid != item.persona_id for r in rs]
        messages = history(
            by_persona[item.persona_id],
            item.checkpoint_session,
            context_tokens=context_tokens,
            filler=filler,
            keep=item.evidence_sessions,
        )
        out.append(Asked(item, messages))
    return out


async def answer(run: Run[EvalConfig], asked: Asked) -> EvalResult:
    cfg, item = run.config, asked.item
    common = {
        "run": "",
        "model": cfg.llm.model,
        "probe_id": item.probe_id,
        "persona_id": item.persona_id,
        "type": item.type,
        "mode": cfg.mode,
        "distance_sessions": item.distance_sessions,
        "context_tokens": message_tokens(asked.history),
        "answer": item.answer,
    }
    if cfg.mode == "mcq":
        predicted, raw = await run.llm.run(ANSWER_MCQ, asked)
        return EvalResult(**common, predicted=predicted, correct=predicted == item.answer, raw=raw)
    reply = await run.llm.run(ANSWER_OPEN, asked)
    follows = await run.llm.run(JUDGE_OPEN, Graded(item, reply))
    return EvalResult(**common, predicted=item.answer if follows else None, correct=bool(follows), raw=reply)


def oracle_pick(item: ProbeItem) -> int | None:
    """The one option holding the value in force (code put it there verbatim); None unless exactly one."""
    if item.option_values:
        holding = [i for i, o in enumerate(item.options) if f'"{item.truth}"' in o]
    else:  # an earlier version's item: its option kinds are the only record
        holding = [i for i, k in enumerate(item.option_kinds) if k == "correct"]
    return holding[0] if len(holding) == 1 else None


def references(asked: Sequence[Asked], mode: str) -> list[EvalResult]:
    """`oracle` (the option holding the key's value) and each blind rule (a tie broken by the item's seed)."""
    out = []
    for a in asked:
        item = a.item
        common = {
            "run": "",
            "probe_id": item.probe_id,
            "persona_id": item.persona_id,
            "type": item.type,
            "mode": mode,
            "distance_sessions": item.distance_sessions,
            "context_tokens": message_tokens(a.history),
            "answer": item.answer,
        }
        pick = oracle_pick(item)
        out.append(EvalResult(**common, model="oracle", predicted=pick, correct=pick == item.answer))
        for name, rule in blind.RULES.items():
            guess = random.Random(f"{item.seed}:{name}").choice(sorted(rule(item.question, item.options)))
            out.append(
                EvalResult(**common, model=f"blind:{name}", predicted=guess, correct=guess == item.answer)
            )
    return out


@task(name="eval-shard", cache_policy=NO_CACHE)
async def eval_shard(run: Run[EvalConfig], derived: DerivedRun, asked: list[Asked], shard: int) -> None:
    async def work() -> dict[str, list[EvalResult]]:
        results = list(await asyncio.gather(*(answer(run, a) for a in asked)))
        results += references(asked, run.config.mode)
        return {"results": [r.model_copy(update={"run": derived.name}) for r in results]}

    await derived.run_shard(shard, work)


# ---------------------------------------------------------------- summary


def _bucket(value: int, buckets: tuple[tuple[int, str], ...]) -> str:
    return next(label for top, label in buckets if value <= top)


def _accuracy(rows: Sequence[EvalResult]) -> float:
    return round(sum(r.correct for r in rows) / len(rows), 3) if rows else 0.0


def summarize(results: Sequence[EvalResult]) -> tuple[dict[str, float], str]:
    """Accuracy per row and group; `chance` is the expected score of a uniform guess (1 in 4)."""
    models = list(dict.fromkeys(r.model for r in results))
    overall = {m: _accuracy([r for r in results if r.model == m]) for m in models} | {"chance": blind.CHANCE}
    lines = [
        "| by | group | " + " | ".join(models) + " | chance | items |",
        "|---|---|" + "---|" * (len(models) + 2),
    ]
    groups: list[tuple[str, Any]] = [
        ("all", lambda r: "all"),
        ("type", lambda r: r.type),
        ("distance (sessions)", lambda r: _bucket(r.distance_sessions, DISTANCE_BUCKETS)),
        ("context (tokens)", lambda r: _bucket(r.context_tokens, CONTEXT_BUCKETS)),
    ]
    for label, key in groups:
        values = sorted({key(r) for r in results})
        for v in values:
            cells = [_accuracy([r for r in results if r.model == m and key(r) == v]) for m in models]
            n = sum(1 for r in results if r.model == models[0] and key(r) == v)
            lines.append(
                f"| {label} | {v} | "
                + " | ".join(f"{c:.3f}" for c in cells)
                + f" | {blind.CHANCE:.3f} | {n} |"
            )
    return overall, "\n".join(lines)


def unparsed(results: Sequence[EvalResult], model: str) -> int:
    """The model's replies that named no single option (mcq), or that the judge gave no verdict on (open)."""
    return sum(1 for r in results if r.model == model and r.predicted is None)


def unparsed_line(results: Sequence[EvalResult], config: EvalConfig) -> str:
    n = unparsed(results, config.llm.model)
    total = sum(1 for r in results if r.model == config.llm.model)
    what = "named no single option letter" if config.mode == "mcq" else "got no verdict from the judge"
    return (
        f"Unparsed: {n} of {total} replies {what}; they count as wrong (the `raw` column of results/ "
        "holds each reply).\n\n"
    )


def run_name(config: EvalConfig, key: str) -> str:
    """`e-<model>-<mode>-<context>-<hash>`: a figure or a folder listing says which run is which."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", config.llm.model.rsplit("/", 1)[-1]).strip("-._")[:24]
    return f"e-{model or 'model'}-{config.mode}-{config.context}-{key[:8]}"


# ---------------------------------------------------------------- the flow


@flow(name="evaluate_dataset", flow_run_name=flow_run_namer("evaluate"), validate_parameters=True)
async def evaluate_dataset(
    config: EvalConfig, out: str = "output", cache_dir: str | None = None, checked: bool = False
) -> str:
    """Evaluate `config.llm.model` on the probes of a dataset version; returns the run folder.
    `checked`: the caller ran the endpoint's pre-flight (`check_endpoint`), it is not asked again."""
    logger = get_run_logger()
    version = open_version(out, config.dataset, config.version)
    version_dir = version.path
    items = version.records("probes", ProbeItem)
    if not items:
        raise UserError(no_probes_message(config.dataset, version_dir))
    if config.personas:
        keep = sorted({i.persona_id for i in items})[: config.personas]
        items = [i for i in items if i.persona_id in keep]
    rows = version.records("dataset", DatasetRow)
    cache = Path(cache_dir) if cache_dir else Path(out) / ".cache"
    ident = {"version": str(version_dir.resolve())}
    async with open_run(
        config, calls=EVAL_CALLS, cache=cache, exclude=NOT_IDENTITY, identity=ident, preflight=not checked
    ) as run:
        name = config.run or run_name(config, run.key)
        derived = DerivedRun.claim(version, "eval", name, run.key, {"results": EvalResult})
        if derived.complete:  # its manifest is written last, and a complete run is never rewritten
            logger.info("evaluation %s is already complete", derived.folder)
            return str(derived.folder)
        asked = asked_items(items, rows, config.context_tokens, config.context)
        size = config.shard_size
        started = time.perf_counter()
        await asyncio.gather(
            *(
                eval_shard(quote(run), quote(derived), quote(asked[i : i + size]), i // size)
                for i in range(0, len(asked), size)
            )
        )
        results = read_records(derived.folder / "results", EvalResult)
        overall, table = summarize(results)
        title = (
            f"Evaluation of {config.llm.model} on {config.dataset}@{version_dir.name} ({config.mode}, "
            f"context: {config.context})"
        )
        markdown = (
            f"# {title}\n\n{len(items)} items at temperature {config.llm.temperature:g}; accuracy per row. "
            "`oracle` must be 1.0; the `blind:` rows never read the history and should be near `chance`.\n\n"
            f"{unparsed_line(results, config)}{table}\n"
        )
        manifest = EvalManifest(
            dataset=config.dataset,
            version=version_dir.name,
            run=derived.name,
            created_at=datetime.now(UTC),
            code_version=code_version(),
            model=run.config.llm.model,
            endpoint=run.endpoint_label,
            config=run.config,
            items=len(items),
            accuracy=overall,
            usage=dict(run.llm.usage),
            shards=shard_infos(derived.folder),
        )
        derived.finish(manifest, markdown)
        logger.info(
            "evaluated %d items in %.1f s → %s", len(items), time.perf_counter() - started, derived.folder
        )
    await derived.artifact(markdown, "evaluation summary")
    return str(derived.folder)
