"""What a newcomer meets first: defaults in --help, one naming, one error style, cost and progress."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import polars as pl
import pytest

from personaloom.dataset.card import CardSettings, cost_text, dataset_card, table_rows
from personaloom.runtime.display import live_progress
from personaloom.runtime.progress import ProgressSink, progress_sink, stage_reporter
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.manifest import Manifest, ShardInfo, StageCount, StageUsage
from personaloom.testing.cli import assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI

WIDE = {"COLUMNS": "220", "TERM": "dumb"}


def _help(*cmd: str) -> str:
    res = run(*cmd, "--help", env=WIDE)
    assert res.returncode == 0, res.stderr
    return " ".join(res.stdout.split())  # wrapped cells joined


@pytest.mark.parametrize(
    "option,default",
    [
        ("--personas", "200"),
        ("--sessions", "20"),
        ("--model", "gpt-4o-mini"),
        ("--concurrency", "32"),
        ("--seed", "0"),
        ("--shard-size", "50"),
        ("--out", "output"),
        ("--runner", "local"),
    ],
)
def test_build_help_shows_each_default(option: str, default: str) -> None:
    text = _help("build")
    assert re.search(re.escape(option) + r"\b.*?\[default: \(?" + re.escape(default), text), option


def test_help_defaults_are_the_settings_own() -> None:
    text = _help("build")
    assert f"[default: {BuildConfig.model_fields['personas'].default}]" in text
    assert f"[default: {LLMConfig.model_fields['concurrency'].default}]" in text
    for flag in ("--probes --no-probes", "--force --no-force", "--rebuild --no-rebuild", "--progress"):
        assert flag in text
    assert "--scenes-per-persona" not in text  # the old spelling works, hidden
    assert "[default: 0.0]" in _help("evaluate")  # evaluate scores at temperature 0
    assert "--dest" in _help("sample") and "--dest" in _help("filter")


def test_usage_errors_are_one_line() -> None:
    assert_one_line_error(run("show"), "missing argument 'DATASET[@vN]'", "personaloom show --help")
    assert_one_line_error(run("build", "--nope"), "no such option: --nope")


def test_base_url_without_model_is_one_line(tmp_path: Path) -> None:
    with FakeOpenAI(known_models={"llama-3-8b"}) as fake:
        res = run("build", "--base-url", fake.base_url, "--out", str(tmp_path))
        assert fake.stats.by_path.get("/v1/chat/completions", 0) == 0
    assert_one_line_error(res, "--base-url", "without --model", "llama-3-8b", "gpt-4o-mini")
    assert not (tmp_path / "personas").exists()


def test_old_spellings_still_work_with_one_note(tmp_path: Path) -> None:
    dest = tmp_path / "s.parquet"
    res = run("sample", "--personas", "3", "--sessions", "2", "--out", str(dest))
    assert res.returncode == 0, res.stderr
    assert pl.read_parquet(dest).height == 3
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "use --dest FILE" in notes[0], res.stderr
    res = run("sample", "--personas", "2", "--sessions", "2", "--dest", str(dest))
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    # an error with the old spelling is still one line, naming the spelling given
    assert_one_line_error(run("build", "--scenes-per-persona", "0"), "--scenes-per-persona")
    assert_one_line_error(run("build", "--sessions", "0"), "--sessions")


def test_filter_writes_no_carriage_return_off_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "t.parquet"
    pl.DataFrame(
        {"text": [f"row number {i} says something different {i * 7}" for i in range(50)]}
    ).write_parquet(src)
    res = run("filter", str(src), "--dest", str(tmp_path / "f"))
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and (tmp_path / "f" / "kept.parquet").is_file()


def test_plain_progress_lines_carry_rate_cost_and_eta() -> None:
    usage = StageUsage(
        calls=40, cache_hits=2, retries=3, prompt_tokens=1000, completion_tokens=500, cost_usd=0.5
    )
    progress_sink.plan({"scene": 10, "query": 10})
    progress_sink.usage = lambda: {"scene": usage}
    progress_sink.advance("scene", 5)
    stream = io.StringIO()
    try:
        with live_progress(stream=stream, every=0.05, priced=True):
            time.sleep(0.3)
        with live_progress(stream=io.StringIO(), every=0.05, priced=False) as _:
            pass
    finally:
        progress_sink.usage = None
        progress_sink.plan({})
    text = stream.getvalue()
    assert "\r" not in text and text.count("\n") >= 2
    line = text.splitlines()[-1]
    for needle in ("scene 5/10", "eta ", "40 calls", "/s)", "in flight", "3 retries", "$0.5000"):
        assert needle in line, line


def test_stage_reporter_plain_lines() -> None:
    stream = io.StringIO()
    report = stage_reporter(stream, every=60)
    for done in range(0, 101, 10):
        report("rules", done, 100)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [ln.split() for ln in lines] == [["rules", "0/100"], ["rules", "100/100"]]


def _manifest(model: str, *, prices: dict | None = None, probes_rows: int = 0) -> Manifest:
    cfg = BuildConfig(
        llm=LLMConfig(model=model, base_url="http://inference.corp.internal:8000/v1", prices=prices or {})
    )
    return Manifest(
        dataset="d",
        version="v0001",
        parent=None,
        created_at="2026-01-01T00:00:00Z",
        code_version="x",
        model=model,
        endpoint="http://inference.corp.internal:8000/v1",
        seed=0,
        config=cfg,
        prompt_hashes={},
        calls={},
        counts={"filter": StageCount(rows_in=3, rows_out=3)},
        usage={"filter": StageUsage(calls=3, prompt_tokens=100, cost_usd=0.0)},
        rejection_reasons={},
        shards=[
            ShardInfo(path="dataset/part-00000.parquet", rows=3, bytes=1, sha256="0"),
            ShardInfo(path="probes/part-00000.parquet", rows=probes_rows, bytes=1, sha256="0"),
        ],
        stage_seconds={},
        identity="k",
    )


def test_card_unpriced_empty_tables_endpoint_and_licence() -> None:
    m = _manifest("my-local-llama")
    card = dataset_card(m, CardSettings())
    assert cost_text(m) == "unknown" and "0.0000" not in card and "unknown" in card
    assert "config_name: dataset" in card and "config_name: probes" not in card  # 0 rows: no config
    assert table_rows(m)["probes"] == 0
    assert "corp.internal" not in card  # the host stays out unless asked
    assert "license:" not in card.split("---")[1] and "licence: not chosen" in card
    shown = dataset_card(m, CardSettings(license="cc-by-4.0", endpoint=True))
    assert "license: cc-by-4.0" in shown and "corp.internal" in shown
    priced = _manifest("my-local-llama", prices={"my-local-llama": (1.0, 1.0)})
    assert cost_text(priced) == "$0.0000"


def test_sink_without_llm_reads_zero() -> None:
    from personaloom.runtime.progress import LLMMeter

    stats = LLMMeter(ProgressSink()).read()
    assert stats.calls == 0 and "cost unknown" in stats.line(priced=False)
