"""Export a version for other tools.

Its Parquet tables as JSON Lines or CSV (for tools that read neither Parquet nor Arrow), or its probes as
training and evaluation files: `sft` (conversational prompt/completion JSONL for TRL's SFTTrainer, each
assistant turn the completion of exactly one example), `dpo` (prompt/chosen/rejected JSONL for TRL's
DPOTrainer), both split train/validation/test by persona, and `persona-mem` (`questions.csv` +
`shared_contexts.jsonl`, the layout PersonaMem's `inference_standalone_openai.py` reads).
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl

from personaloom.dataset.store import TABLES, read_records, replacing
from personaloom.dataset.version import Version, open_version
from personaloom.errors import UserError
from personaloom.schemas.probes import OptionKind, ProbeItem
from personaloom.schemas.records import DatasetRow

FORMATS = ("jsonl", "csv")
Format = Literal["jsonl", "csv"]
ITEM_FORMATS = ("sft", "dpo", "persona-mem", "longmemeval", "locomo")
ItemFormat = Literal["sft", "dpo", "persona-mem", "longmemeval", "locomo"]


def _json_strings(series: pl.Series) -> pl.Series:
    """Nested values (lists, structs) as one JSON string each.

    CSV has no nesting, and JSON keeps them loadable.
    """
    return pl.Series(
        series.name,
        [None if v is None else orjson.dumps(v).decode() for v in series.to_list()],
        dtype=pl.String,
    )


def _flatten_nested(lf: pl.LazyFrame) -> pl.LazyFrame:
    nested = [c for c, t in lf.collect_schema().items() if t.is_nested()]
    return lf.with_columns(pl.col(c).map_batches(_json_strings, return_dtype=pl.String) for c in nested)


def _write_table(parts: list[Path], fmt: Format, path: Path) -> None:
    """Stream the shards into one file.

    A temp name is renamed into place: a crash never leaves half an export.
    """
    lf = pl.scan_parquet(parts)
    with replacing(path) as tmp:
        if fmt == "csv":
            _flatten_nested(lf).sink_csv(tmp)
        else:
            lf.sink_ndjson(tmp)


def _tables(version: Version) -> dict[str, list[Path]]:
    """Every table of the version.

    The six build tables, then each replay run's tables as replay/<run>/<table>.
    """
    found = {t: version.parts(t) for t in TABLES}
    for run in version.runs("replay", complete=False):
        for table_dir in sorted(p for p in run.iterdir() if p.is_dir()):
            if parts := sorted(table_dir.glob("part-*.parquet")):
                found[f"replay/{run.name}/{table_dir.name}"] = parts
    return {name: parts for name, parts in found.items() if parts}


def export_version(
    out: Path | str, dataset: str, version: str | None, fmt: Format, dest: Path | str
) -> dict[str, Path]:
    """Write every table of `dataset@version` to `dest/<table>.<fmt>` (plus the manifest).

    Returns table → file.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}: choose jsonl or csv")
    v = open_version(out, dataset, version)
    dest = Path(dest)
    written = {}
    for name, parts in _tables(v).items():
        path = dest / f"{name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_table(parts, fmt, path)
        written[name] = path
    _copy_manifest(v.path, dest)  # provenance travels with the export
    return written


# ---------------------------------------------------------------- probes as training and evaluation files

Message = dict[str, str]
# The reply a DPO pair rejects: the pre-change preference first (the mistake memory must avoid), then this
# user's own other reasons or sequence out of order, then what they already mentioned, then another user's
# value (earlier versions: a generic reply, a contradiction); every item has at least one of them.
REJECTED: tuple[OptionKind, ...] = (
    "outdated",
    "other_change",
    "reordered",
    "mentioned",
    "someone_else",
    "other_persona",
    "alternative",
    "generic",
    "contradiction",
    "fabricated",
)
PERSONA_MEM_COLUMNS = (
    "persona_id",
    "question_id",
    "question_type",
    "topic",
    "stereotypical",
    "context_length_in_tokens",
    "context_length_in_letters",
    "distance_to_ref_in_blocks",
    "distance_to_ref_in_tokens",
    "num_irrelevant_tokens",
    "distance_to_ref_proportion_in_context",
    "user_question_or_message",
    "correct_answer",
    "all_options",
    "shared_context_id",
    "end_index_in_shared_context",
)
LETTERS = "abcd"


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


class _Histories:
    """Each persona's kept sessions, and the history before a point, capped or padded like `evaluate`'s.

    Padding comes from the other personas' sessions (unrelated to the user), in persona then session order.
    """

    def __init__(self, rows: Iterable[DatasetRow], context_tokens: int | None) -> None:
        self.rows: dict[str, list[DatasetRow]] = defaultdict(list)
        for r in sorted(rows, key=lambda r: (r.persona_id, r.session_index)):
            self.rows[r.persona_id].append(r)
        self.context_tokens = context_tokens

    def filler(self, persona_id: str) -> list[DatasetRow]:
        if self.context_tokens is None:  # nothing to pad to
            return []
        return [r for pid, rs in self.rows.items() if pid != persona_id for r in rs]

    def before(self, persona_id: str, upto: int, keep: Sequence[int] = ()) -> list[Message]:
        """Sessions up to `upto` (inclusive) as chat messages."""
        from personaloom.stages.probes import (
            history,  # with the OpenAI SDK (1 s): only the item formats need it
        )

        return history(
            self.rows[persona_id],
            upto,
            context_tokens=self.context_tokens,
            filler=self.filler(persona_id),
            keep=keep,
        )


def _correct(item: ProbeItem) -> str:
    return item.options[item.answer]


def sft_examples(items: Sequence[ProbeItem], h: _Histories) -> Iterator[tuple[str, dict[str, Any]]]:
    """(persona id, example) per probe, in TRL's conversational prompt/completion form: the prompt is the
    history up to the checkpoint (what was said, the sessions' assistant turns included) and the probe's
    question, the completion its correct option — the reply that follows the preference in force. The
    sessions' own assistant turns are a plain assistant's that knew nothing of the user: they appear only
    in prompts (TRL trains on the completion alone), and no hidden reference (`expected_response`) is
    ever trained.
    """
    for item in items:
        past = h.before(item.persona_id, item.checkpoint_session, item.evidence_sessions)
        yield (
            item.persona_id,
            {"prompt": [*past, _user(item.question)], "completion": [_assistant(_correct(item))]},
        )


def dpo_pairs(items: Sequence[ProbeItem], h: _Histories) -> Iterator[tuple[str, dict[str, Any]]]:
    """(persona id, pair) per probe: chosen fits the preference in force, rejected is the first of REJECTED
    it has."""
    for item in items:
        kind = next(k for k in REJECTED if k in item.option_kinds)
        past = h.before(item.persona_id, item.checkpoint_session, item.evidence_sessions)
        yield (
            item.persona_id,
            {
                "prompt": [*past, _user(item.question)],
                "chosen": [_assistant(_correct(item))],
                "rejected": [_assistant(item.options[item.option_kinds.index(kind)])],
            },
        )


# ---------------------------------------------------------------- persona-level splits

SPLITS = ("train", "validation", "test")
DEFAULT_SPLITS = (0.8, 0.1, 0.1)


def parse_splits(text: str) -> tuple[float, ...]:
    """`0.8,0.1,0.1` → shares of train, validation, test (one or two values: the first splits only)."""
    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--splits {text!r}: give shares separated by commas, e.g. 0.8,0.1,0.1") from None
    if not 1 <= len(shares) <= 3 or any(x < 0 for x in shares) or abs(sum(shares) - 1) > 1e-6:
        raise UserError(f"--splits {text!r}: one to three shares (train,validation,test) that sum to 1")
    if shares[0] <= 0:
        raise UserError(f"--splits {text!r}: train needs a share above 0")
    return shares


def split_of(persona_id: str, shares: Sequence[float], seed: int = 0) -> str:
    """The split of a persona: a seeded hash of its id into [0, 1), cut at the cumulative shares. Every
    example of a persona lands in one split, whatever else the version holds."""
    digest = hashlib.sha256(f"{seed}:{persona_id}".encode()).digest()
    x = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, share in zip(SPLITS, shares, strict=False):
        edge += share
        if x < edge:
            return name
    return SPLITS[len(shares) - 1]


def _write_splits(
    dest: Path, fmt: str, examples: Iterable[tuple[str, dict[str, Any]]], shares: Sequence[float], seed: int
) -> dict[str, int]:
    """`dest/<split>.jsonl` for each split with examples, and a card listing them; returns file → rows."""
    by_split: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS[: len(shares)]}
    for pid, example in examples:
        by_split[split_of(pid, shares, seed)].append(example)
    written = {}
    for name, rows in by_split.items():
        stale = dest / f"{name}.jsonl"
        if rows:
            written[f"{name}.jsonl"] = _write_jsonl(stale, rows)
        elif stale.exists():  # an earlier export's split with other shares
            stale.unlink()
    with replacing(dest / "README.md") as tmp:
        tmp.write_text(export_card(fmt, written, shares, seed))
    return written


def export_card(fmt: str, written: dict[str, int], shares: Sequence[float], seed: int) -> str:
    """A Hugging Face card for an export folder: one config, a split per non-empty file."""
    files = "\n".join(f"  - split: {f.removesuffix('.jsonl')}\n    path: {f}" for f in written)
    layout = (
        "prompt/completion (TRL SFTTrainer; the loss is on the completion, one assistant turn)"
        if fmt == "sft"
        else "prompt/chosen/rejected (TRL DPOTrainer)"
    )
    counts = ", ".join(f"{f.removesuffix('.jsonl')} {n}" for f, n in written.items())
    share_text = ",".join(f"{x:g}" for x in shares)
    return f"""---
configs:
- config_name: {fmt}
  data_files:
{files}
  default: true
tags:
- synthetic
- personaloom
---

# {fmt} export

Conversational {layout}. Splits by persona (a persona's examples are all in one split): shares
{share_text} of a hash of the persona id with seed {seed}. Examples per split: {counts}.

`datasets.load_dataset("<this folder>")` loads the splits; `manifest.json` is the version's provenance.
"""


def persona_mem(items: Sequence[ProbeItem], h: _Histories) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """PersonaMem's question rows and shared contexts (id → messages).

    The items of one persona share one context: its history up to the persona's last checkpoint, keeping
    every item's evidence and checkpoint sessions when `context_tokens` caps it. An item's
    `end_index_in_shared_context` counts the messages up to its checkpoint session's reply (their loader
    slices `context[:end_index]`); distances count the sessions and tokens after the item's last evidence
    session that the model reads, and `num_irrelevant_tokens` the other personas' padding.
    """
    from personaloom.stages.probes import history_blocks, message_tokens

    by_persona: dict[str, list[ProbeItem]] = defaultdict(list)
    for item in items:
        by_persona[item.persona_id].append(item)
    questions: list[dict[str, Any]] = []
    contexts: dict[str, list[Message]] = {}
    for pid, its in by_persona.items():
        rows = h.rows[pid]
        last = max(i.checkpoint_session for i in its)
        keep = sorted({s for i in its for s in (*i.evidence_sessions, i.checkpoint_session)})
        blocks = history_blocks(rows, last, context_tokens=h.context_tokens, filler=h.filler(pid), keep=keep)
        shared = [m for _, ms in blocks for m in ms]
        pad = sum(len(ms) for s, ms in blocks if s is None)
        end_of, n = {}, 0
        for s, ms in blocks:  # a session's end: the messages up to its last turn
            n += len(ms)
            if s is not None:
                end_of[s] = n
        sid = hashlib.sha256(orjson.dumps(shared)).hexdigest()
        contexts[sid] = shared
        irrelevant = message_tokens(shared[:pad])
        for item in its:
            end = end_of[item.checkpoint_session]
            ref = end_of[max(item.evidence_sessions)]
            context = shared[:end]
            tokens = message_tokens(context)
            distance = message_tokens(shared[ref:end])
            questions.append(
                {
                    "persona_id": pid,
                    "question_id": item.probe_id,
                    "question_type": item.type,
                    "topic": item.path,
                    "stereotypical": "",  # not labelled: our preferences are sampled, not stereotyped
                    "context_length_in_tokens": tokens,
                    "context_length_in_letters": sum(len(m["content"]) for m in context),
                    "distance_to_ref_in_blocks": sum(1 for s in end_of if ref < end_of[s] <= end),
                    "distance_to_ref_in_tokens": distance,
                    "num_irrelevant_tokens": irrelevant,
                    "distance_to_ref_proportion_in_context": f"{100 * distance / max(tokens, 1):.2f}%",
                    "user_question_or_message": item.question,
                    "correct_answer": f"({LETTERS[item.answer]})",
                    "all_options": str([f"({LETTERS[k]}) {o}" for k, o in enumerate(item.options)]),
                    "shared_context_id": sid,
                    "end_index_in_shared_context": end,
                }
            )
    return questions, contexts


def _copy_manifest(version_dir: Path, dest: Path) -> None:
    with replacing(dest / "manifest.json") as tmp:
        shutil.copyfile(version_dir / "manifest.json", tmp)


def _write_jsonl(path: Path, lines: Iterable[Any]) -> int:
    n = 0
    with replacing(path) as tmp, tmp.open("wb") as f:
        for line in lines:
            f.write(orjson.dumps(line) + b"\n")
            n += 1
    return n


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> int:
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def export_items(
    out: Path | str,
    dataset: str,
    version: str | None,
    fmt: ItemFormat,
    dest: Path | str,
    context_tokens: int | None = None,
    splits: Sequence[float] = DEFAULT_SPLITS,
    split_seed: int = 0,
) -> dict[str, int]:
    """Write the version's probes as `fmt` files in `dest` (plus the manifest); returns file → rows.

    `sft` and `dpo` write `train.jsonl`, `validation.jsonl` and `test.jsonl` by persona (`splits`: the
    shares, `split_seed`: the hash's seed) and a card (README.md) listing them as Hugging Face splits.

    Each item's history is the user's kept sessions up to its checkpoint (capped, or padded with other
    personas' sessions, to about `context_tokens`), as `personaloom evaluate` asks it.

    `longmemeval` writes `longmemeval.json` (one entry per item, its haystack the history up to the
    checkpoint), `locomo` writes `locomo.json` (one sample per persona: its whole conversation and its
    items); both keep every item together (no splits) and a README.md counting the items left out.
    """
    if fmt not in ITEM_FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}: choose one of {', '.join(ITEM_FORMATS)}")
    if context_tokens is not None and context_tokens < 1:
        raise UserError(f"--context-tokens: must be at least 1, got {context_tokens}")
    if context_tokens is not None and fmt == "locomo":
        raise UserError("--context-tokens: not for locomo (a LoCoMo sample is the whole conversation)")
    v = open_version(out, dataset, version)
    version_dir = v.path
    items = sorted(
        v.records("probes", ProbeItem),
        key=lambda i: (i.persona_id, i.checkpoint_session, i.probe_id),
    )
    if not items:
        from personaloom.stages.probes import no_probes_message

        raise UserError(no_probes_message(dataset, version_dir) + f" (nothing to export as {fmt})")
    h = _Histories(read_records(version_dir / "dataset", DatasetRow), context_tokens)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "sft":
        written = _write_splits(dest, fmt, sft_examples(items, h), splits, split_seed)
    elif fmt == "dpo":
        written = _write_splits(dest, fmt, dpo_pairs(items, h), splits, split_seed)
    elif fmt == "longmemeval":
        entries, skipped = longmemeval(items, h)
        _write_json(dest / "longmemeval.json", entries)
        written = {"longmemeval.json": len(entries)}
        _write_note(dest, fmt, len(entries), {"open_answer_less": skipped})
    elif fmt == "locomo":
        samples, left = locomo(items, h)
        _write_json(dest / "locomo.json", samples)
        written = {"locomo.json": len(samples)}
        _write_note(dest, fmt, sum(len(s["qa"]) for s in samples), left)
    else:
        questions, contexts = persona_mem(items, h)
        written = {
            "questions.csv": _write_csv(dest / "questions.csv", questions, PERSONA_MEM_COLUMNS),
            "shared_contexts.jsonl": _write_jsonl(
                dest / "shared_contexts.jsonl", ({sid: ctx} for sid, ctx in contexts.items())
            ),
        }
    _copy_manifest(version_dir, dest)
    return written


# ---------------------------------------------------------------- memory benchmarks: LongMemEval, LoCoMo

# Our probe types → LongMemEval's six question types; a `single-session-user` item whose evidence spans
# several sessions is `multi-session`. We have no abstention type, so no question id ends in `_abs`.
LONGMEMEVAL_TYPES = {
    "recalling_facts_mentioned_by_the_user": "single-session-user",
    "recalling_the_latest_user_preferences": "knowledge-update",
    "tracking_the_full_sequence_of_preference_updates": "temporal-reasoning",
    "recalling_the_reasons_behind_previous_updates": "single-session-user",
    "recommendation_aligned_with_users_latest_preferences": "single-session-preference",
    "generalizing_past_reasons_in_memory_to_new_scenarios": "single-session-preference",
}
# Our probe types → LoCoMo's categories (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial);
# a single-hop item whose evidence spans several sessions is multi-hop. None is 2 (LoCoMo asks category 2 for
# a date) or 5 (we have no unanswerable questions).
LOCOMO_CATEGORIES = {
    "recalling_facts_mentioned_by_the_user": 4,
    "recalling_the_latest_user_preferences": 4,
    "tracking_the_full_sequence_of_preference_updates": 1,
    "recalling_the_reasons_behind_previous_updates": 4,
    "recommendation_aligned_with_users_latest_preferences": 3,
    "generalizing_past_reasons_in_memory_to_new_scenarios": 3,
}
# "Which of these have I not mentioned?" has no single open answer without its options: left out of both.
OPEN_ANSWER_LESS = ("identifying_new_things_not_mentioned_by_the_user",)
LONGMEMEVAL_DATE = "%Y/%m/%d (%a) %H:%M"  # zero-padded: LongMemEval sorts sessions by this text


def _locomo_date(ts: Any) -> str:
    """LoCoMo's `1:56 pm on 8 May, 2023` (hour and day not padded, English month)."""
    months = "January February March April May June July August September October November December".split()
    hour = ts.hour % 12 or 12
    half = "am" if ts.hour < 12 else "pm"
    return f"{hour}:{ts.minute:02d} {half} on {ts.day} {months[ts.month - 1]}, {ts.year}"


def evidence_turn_ids(item: ProbeItem, rows: Sequence[DatasetRow]) -> dict[int, list[str]]:
    """Evidence session → the user turns in it that reveal the item: its `evidence_turns` there, or (none
    named in that session, or an earlier version's item) every user turn of the session."""
    from personaloom.stages.probes import user_turns

    named = set(item.evidence_turns)
    out: dict[int, list[str]] = {}
    for r in rows:
        if r.session_index in item.evidence_sessions:
            ids = [t.turn_id for t in user_turns(r)]
            out[r.session_index] = [t for t in ids if t in named] or ids
    return out


def _safe_id(persona_id: str) -> str:
    """LongMemEval finds evidence by the substring `answer` (and maps `noans_` back to `answer_`)."""
    return persona_id.replace("answer", "ans-wer").replace("noans", "no-ans")


def longmemeval(items: Sequence[ProbeItem], h: _Histories) -> tuple[list[dict[str, Any]], int]:
    """LongMemEval entries (one per item, its haystack the user's sessions up to the checkpoint in time
    order) and how many items were left out (OPEN_ANSWER_LESS)."""
    from personaloom.stages.probes import history_blocks, said_turns

    entries: list[dict[str, Any]] = []
    skipped = 0
    for item in items:
        if item.type in OPEN_ANSWER_LESS:
            skipped += 1
            continue
        rows = h.rows[item.persona_id]
        asked = next(r for r in rows if r.session_index == item.checkpoint_session).timestamp
        evidence = evidence_turn_ids(item, rows)
        keep = sorted({*item.evidence_sessions, item.checkpoint_session})
        filler = [r for r in h.filler(item.persona_id) if r.timestamp <= asked]
        blocks = history_blocks(
            rows, item.checkpoint_session, context_tokens=h.context_tokens, filler=filler, keep=keep
        )
        kept = {s for s, _ in blocks if s is not None}
        pad = filler[: sum(1 for s, _ in blocks if s is None)]
        haystack = [(r, False) for r in pad] + [(r, True) for r in rows if r.session_index in kept]
        haystack.sort(key=lambda x: (x[0].timestamp, not x[1], x[0].persona_id, x[0].session_index))
        ids, dates, sessions = [], [], []
        for r, own in haystack:
            marked = set(evidence.get(r.session_index, ())) if own else set()
            sid = f"{_safe_id(r.persona_id)}_s{r.session_index}"
            ids.append(f"answer_{sid}" if marked else sid)
            dates.append(r.timestamp.strftime(LONGMEMEVAL_DATE))
            sessions.append(
                [
                    {"role": t.role, "content": t.content}
                    | ({"has_answer": t.turn_id in marked} if t.role == "user" else {})
                    for t in said_turns(r)
                ]
            )
        qtype = LONGMEMEVAL_TYPES[item.type]
        if qtype == "single-session-user" and len(evidence) > 1:
            qtype = "multi-session"
        entries.append(
            {
                "question_id": item.probe_id,
                "question_type": qtype,
                "question": item.question,
                "answer": item.truth,
                "question_date": asked.strftime(LONGMEMEVAL_DATE),
                "haystack_session_ids": ids,
                "haystack_dates": dates,
                "haystack_sessions": sessions,
                "answer_session_ids": [i for i in ids if "answer" in i],
            }
        )
    return entries, skipped


def changed_later(item: ProbeItem, rows: Sequence[DatasetRow]) -> bool:
    """The item's field changes after its checkpoint within the user's kept sessions: over the whole
    conversation its answer would be ambiguous."""
    last = rows[-1].session_index
    return any(
        ch.field == item.path and item.checkpoint_session < ch.effective_session <= last
        for ch in rows[-1].persona.Changes
    )


def locomo(items: Sequence[ProbeItem], h: _Histories) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """LoCoMo samples (one per persona with items: its whole conversation, sessions in time order) and
    the items left out by reason."""
    from personaloom.stages.probes import said_turns

    by_persona: dict[str, list[ProbeItem]] = defaultdict(list)
    for item in items:
        by_persona[item.persona_id].append(item)
    samples: list[dict[str, Any]] = []
    left = {"open_answer_less": 0, "changed_after_checkpoint": 0}
    for pid, its in by_persona.items():
        rows = sorted(h.rows[pid], key=lambda r: (r.timestamp, r.session_index))
        name = rows[-1].persona.Demographics.Name
        conversation: dict[str, Any] = {"speaker_a": name, "speaker_b": "Assistant"}
        dia: dict[str, str] = {}  # turn id → dia_id
        for n, r in enumerate(rows, 1):
            conversation[f"session_{n}_date_time"] = _locomo_date(r.timestamp)
            turns = []
            for i, t in enumerate(said_turns(r), 1):
                dia[t.turn_id] = f"D{n}:{i}"
                turns.append(
                    {
                        "speaker": name if t.role == "user" else "Assistant",
                        "dia_id": f"D{n}:{i}",
                        "text": t.content,
                    }
                )
            conversation[f"session_{n}"] = turns
        qa = []
        for item in its:
            if item.type in OPEN_ANSWER_LESS:
                left["open_answer_less"] += 1
                continue
            if changed_later(item, rows):
                left["changed_after_checkpoint"] += 1
                continue
            evidence = evidence_turn_ids(item, rows)
            category = LOCOMO_CATEGORIES[item.type]
            if category == 4 and len(evidence) > 1:
                category = 1
            qa.append(
                {
                    "question": item.question,
                    "answer": item.truth,
                    "evidence": [dia[t] for s in sorted(evidence) for t in evidence[s]],
                    "category": category,
                    "probe_id": item.probe_id,  # ours, beside LoCoMo's keys: joins back to the probes table
                }
            )
        if qa:
            samples.append({"sample_id": pid, "conversation": conversation, "qa": qa})
    return samples, left


def _write_note(dest: Path, fmt: str, kept: int, left: dict[str, int]) -> None:
    reasons = {
        "open_answer_less": "identifying_new_things_not_mentioned_by_the_user: no single open answer",
        "changed_after_checkpoint": "the field changes after the checkpoint: ambiguous over the whole "
        "conversation",
    }
    lines = "\n".join(f"- {reasons[k]}: {n}" for k, n in left.items())
    with replacing(dest / "README.md") as tmp:
        tmp.write_text(
            f"# {fmt} export\n\nItems kept: {kept}. Left out:\n\n{lines}\n\n"
            "`manifest.json` is the version's provenance; personaloom's README maps the types.\n"
        )


def _write_json(path: Path, value: Any) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2))
