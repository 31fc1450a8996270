"""The probes exported for training (TRL's SFT and DPO layouts) and for PersonaMem's own harness.

One mock build of 12 personas × 10 sessions with a scripted probe writer, shared by the module. The
PersonaMem test reads our files the way `inference_standalone_openai.py` (bowen-upenn/PersonaMem) does:
an index of the JSONL's line offsets by context id, the CSV read with `csv.DictReader`, each row's context
sliced with `context[:int(end_index_in_shared_context)]`.
"""

from __future__ import annotations

import ast
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datasets import load_dataset

from personaloom.dataset.export import PERSONA_MEM_COLUMNS, REJECTED
from personaloom.dataset.store import read_records
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.probes import ProbeItem
from personaloom.schemas.records import DatasetRow
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.probe_model import probe_writer

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "personaloom"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """output/ holding items@v0001: 12 personas × 10 sessions with probes, built once for the module."""
    out = tmp_path_factory.mktemp("items") / "output"
    with FakeOpenAI(latency=0.0, responder=probe_writer) as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(  # en_US: the fake writes English, so few rows fall to the language check
            dataset="items", personas=12, scenes_per_persona=10, shard_size=6, locales=["en_US"], llm=llm
        )
        asyncio.run(build_dataset(cfg, out=str(out)))
    return out


@pytest.fixture(scope="module")
def probes(built: Path) -> list[ProbeItem]:
    items = read_records(built / "items" / "v0001" / "probes", ProbeItem)
    assert items, "the scripted writer's items must pass validation"
    return items


@pytest.fixture(scope="module")
def sessions(built: Path) -> dict[tuple[str, int], DatasetRow]:
    rows = read_records(built / "items" / "v0001" / "dataset", DatasetRow)
    return {(r.persona_id, r.session_index): r for r in rows}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def export(built: Path, tmp_path: Path, fmt: str, *extra: str) -> Path:
    dest = tmp_path / fmt
    res = cli(
        "export", "items@v1", "--format", fmt, "--out", str(built), "--dest", str(dest), *extra, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert (dest / "manifest.json").is_file()  # provenance travels with the export
    return dest


def alternates(messages: list[dict[str, str]], last: str) -> bool:
    roles = [m["role"] for m in messages]
    want = ["user", "assistant"] * len(roles)
    return bool(roles) and roles == want[: len(roles)] and roles[-1] == last


# ---------------------------------------------------------------- TRL layouts


def _split_rows(dest: Path) -> dict[str, Any]:
    """The export folder as `datasets` loads it: its card's config, one split per file."""
    # a cache of its own: `datasets` keys its cache by the card's relative file names, not the folder
    return load_dataset(str(dest), cache_dir=str(dest.parent / f"{dest.name}-hf-cache"))


def test_sft_loads_with_datasets(
    built: Path, tmp_path: Path, probes: list[ProbeItem], sessions: dict
) -> None:
    dest = export(built, tmp_path, "sft")
    loaded = _split_rows(dest)
    assert set(loaded) <= {"train", "validation", "test"} and "train" in loaded
    rows = [row for split in loaded.values() for row in split]
    assert all(split.column_names == ["prompt", "completion"] for split in loaded.values())
    assert len(rows) == len(probes)  # one example per probe: its key is the reply code vouches for
    completions = []
    for row in rows:
        assert alternates(row["prompt"], "user"), [m["role"] for m in row["prompt"]]
        assert [m["role"] for m in row["completion"]] == ["assistant"]
        assert all(m["content"].strip() for m in row["prompt"] + row["completion"])
        completions.append(row["completion"][0]["content"])
    assert sorted(completions) == sorted(p.options[p.answer] for p in probes)  # each key trained once
    # no hidden reference reaches a prompt or a completion; the sessions' turns are in prompts only
    hidden = {r.expected_response for r in sessions.values()}
    assert not [m for row in rows for m in row["prompt"] + row["completion"] if m["content"] in hidden]
    said = {t.content for r in sessions.values() for t in r.turns if t.role == "assistant"}
    assert said and not said & set(completions)
    card = (built / "items" / "v0001" / "README.md").read_text()
    assert "--format sft|dpo|persona-mem" in card  # the card documents the three formats
    export_card = (dest / "README.md").read_text()
    assert all(f"split: {name}" in export_card for name in loaded)


def test_splits_are_disjoint_by_persona(built: Path, tmp_path: Path, probes: list[ProbeItem]) -> None:
    dest = export(built, tmp_path, "sft", "--splits", "0.5,0.25,0.25", "--split-seed", "7")
    seen: dict[str, str] = {}
    owners: dict[str, set[str]] = {}
    for p in probes:
        owners.setdefault(p.options[p.answer], set()).add(p.persona_id)
    # a reply two personas share (the same habit in the same frame) says nothing of whose example it is
    by_reply = {reply: next(iter(pids)) for reply, pids in owners.items() if len(pids) == 1}
    for name in ("train", "validation", "test"):
        path = dest / f"{name}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            reply = json.loads(line)["completion"][0]["content"]
            if (pid := by_reply.get(reply)) is not None:
                assert seen.setdefault(pid, name) == name, pid  # never in two splits
    assert len(set(seen.values())) >= 2  # 12 personas at 0.5/0.25/0.25: more than one split holds some
    (tmp_path / "again").mkdir()
    (tmp_path / "only").mkdir()
    again = export(built, tmp_path / "again", "sft", "--splits", "0.5,0.25,0.25", "--split-seed", "7")
    assert all(
        (again / f).read_bytes() == (dest / f).read_bytes() for f in os.listdir(dest) if f.endswith(".jsonl")
    )  # seeded: the same personas in the same splits
    only = export(built, tmp_path / "only", "sft", "--splits", "1")
    assert sorted(f for f in os.listdir(only) if f.endswith(".jsonl")) == ["train.jsonl"]


def test_dpo_loads_with_datasets(built: Path, tmp_path: Path, probes: list[ProbeItem]) -> None:
    dest = export(built, tmp_path, "dpo")
    loaded = _split_rows(dest)
    assert all(split.column_names == ["prompt", "chosen", "rejected"] for split in loaded.values())
    rows = [row for split in loaded.values() for row in split]
    assert len(rows) == len(probes)  # one pair per probe
    by_question = {}
    for p in probes:
        by_question.setdefault(p.question, []).append(p)
    outdated = 0
    for row in rows:
        assert alternates(row["prompt"], "user")
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert chosen != rejected
        item = next(
            p
            for p in by_question[row["prompt"][-1]["content"]]
            if p.options[p.answer] == chosen and rejected in p.options
        )
        assert item.option_kinds[item.options.index(chosen)] == "correct"
        kind = item.option_kinds[item.options.index(rejected)]
        assert kind == next(k for k in REJECTED if k in item.option_kinds)  # the outdated reply first
        outdated += kind == "outdated"
    assert outdated == sum("outdated" in p.option_kinds for p in probes)


# ---------------------------------------------------------------- PersonaMem's harness


def build_jsonl_index(jsonl_path: Path) -> dict[str, int]:
    """Their index: each line's offset, by the single key of its JSON object."""
    index = {}
    with open(jsonl_path, encoding="utf-8") as f:
        while True:
            offset = f.tell()
            line = f.readline()
            if not line:
                break
            index[next(iter(json.loads(line)))] = offset
    return index


def load_context_by_id(jsonl_path: Path, offset: int) -> list[dict[str, str]]:
    with open(jsonl_path, encoding="utf-8") as f:
        f.seek(offset)
        return next(iter(json.loads(f.readline()).values()))


def load_rows_with_context(csv_path: Path, jsonl_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """Their loader: CSV rows in order, the context reloaded only when `shared_context_id` changes."""
    index = build_jsonl_index(jsonl_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        prev_sid, prev_context = None, None
        for row in csv.DictReader(f):
            sid = row["shared_context_id"]
            if sid != prev_sid:
                prev_sid, prev_context = sid, load_context_by_id(jsonl_path, index[sid])
            yield dict(row), prev_context


@pytest.mark.parametrize("context_tokens", [None, 6000])
def test_persona_mem_loads_like_their_harness(
    built: Path, tmp_path: Path, probes: list[ProbeItem], sessions: dict, context_tokens: int | None
) -> None:
    extra = ("--context-tokens", str(context_tokens)) if context_tokens else ()
    dest = export(built, tmp_path, "persona-mem", *extra)
    with open(dest / "questions.csv", newline="", encoding="utf-8") as f:
        assert tuple(csv.DictReader(f).fieldnames or ()) == PERSONA_MEM_COLUMNS
    by_id = {p.probe_id: p for p in probes}
    everything = sum(len(t.content) for r in sessions.values() for t in r.turns) // 4
    seen, contexts = set(), set()
    longest: dict[str, int] = {}
    for row, context in load_rows_with_context(dest / "questions.csv", dest / "shared_contexts.jsonl"):
        item = by_id[row["question_id"]]
        seen.add(item.probe_id)
        contexts.add(row["shared_context_id"])
        assert row["persona_id"] == item.persona_id and row["question_type"] == item.type
        assert row["user_question_or_message"] == item.question
        context = context[: int(row["end_index_in_shared_context"])]  # as run_evaluation slices it
        # the context ends with the checkpoint session's reply, right before the question
        checkpoint = sessions[(item.persona_id, item.checkpoint_session)]
        assert alternates(context, "assistant")
        assert context[-len(checkpoint.turns) :] == [
            {"role": t.role, "content": t.content} for t in checkpoint.turns
        ]
        said = {m["content"] for m in context if m["role"] == "user"}
        assert all(sessions[(item.persona_id, s)].personalized_query in said for s in item.evidence_sessions)
        # their answer key points at the reply that embodies the value in force
        options = ast.literal_eval(row["all_options"])
        assert [o[:4] for o in options] == ["(a) ", "(b) ", "(c) ", "(d) "]
        letter = row["correct_answer"]
        assert letter in ("(a)", "(b)", "(c)", "(d)")
        picked = "abcd".index(letter.strip("()"))
        assert (
            item.option_kinds[picked] == "correct" and options[picked] == f"{letter} {item.options[picked]}"
        )
        tokens, irrelevant = int(row["context_length_in_tokens"]), int(row["num_irrelevant_tokens"])
        assert 0 <= int(row["distance_to_ref_in_tokens"]) <= tokens
        assert row["distance_to_ref_proportion_in_context"].endswith("%")
        longest[item.persona_id] = max(longest.get(item.persona_id, 0), tokens)
        if context_tokens:  # padded with other personas' sessions (before the user's own)
            assert irrelevant > 0, row
        else:
            assert irrelevant == 0 and int(row["distance_to_ref_in_tokens"]) == item.distance_tokens
    assert seen == set(by_id)
    assert len(contexts) == len({p.persona_id for p in probes})  # one shared context per persona
    if context_tokens:  # items sit at several checkpoints of one shared context, as PersonaMem's do: the
        # last of each persona sees it whole, up to the budget (or all there is)
        assert all(t >= min(context_tokens, everything) * 0.9 for t in longest.values()), longest


# ---------------------------------------------------------------- errors


def test_export_items_fail_in_one_line(built: Path, tmp_path: Path) -> None:
    bare = tmp_path / "output"
    shutil.copytree(
        built / "items" / "v0001", bare / "bare" / "v0001", ignore=shutil.ignore_patterns("probes")
    )
    for args, needle in [
        (["bare", "--format", "sft"], "has no probes: its probes table is missing"),
        (["bare", "--format", "csv", "--context-tokens", "100"], "--context-tokens: only for sft"),
        (["bare", "--format", "dpo", "--context-tokens", "0"], "--context-tokens: must be at least 1"),
        (["bare", "--format", "sf"], "unknown format 'sf': choose jsonl, csv, sft, dpo, persona-mem"),
    ]:
        res = cli("export", *args, "--out", str(bare), cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "exports").exists()
