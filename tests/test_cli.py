"""The `personaloom` command as a user runs it: a real process, real exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from personaloom.testing.cli import TEST_KEY, assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI


def test_help_lists_every_subcommand_and_stays_light() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("build", "versions", "show", "filter", "local-llm"):
        assert cmd in res.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import personaloom.cli, sys; print('prefect' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "False"  # `--help`, `show`, `versions` never pay Prefect's import


@pytest.mark.parametrize(
    "args,needles",
    [
        (["build", "--dataset", "../etc"], ["--dataset", "path characters"]),
        (["build", "--personas", "0"], ["--personas"]),
        (["build", "--base-url", "http://127.0.0.1:9/v1"], ["cannot reach http://127.0.0.1:9/v1"]),
        (["build", "--base-url", "ftp://x"], ["--base-url", "http"]),
        (["show", "nothing-here"], ["no versions"]),
        (["versions", "nothing-here"], ["no versions"]),
    ],
)
def test_bad_input_gets_one_line(args: list[str], needles: list[str], tmp_path: Path) -> None:
    assert_one_line_error(run(*args, "--out", str(tmp_path)), *needles)


def test_bad_config_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{personas: 3")
    assert_one_line_error(run("build", "--config", str(broken)), "broken.json", "not valid JSON")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('personas = 3\n[llm]\nrpm = "fast"\n')
    assert_one_line_error(run("build", "--config", str(wrong)), "wrong.toml", "llm.rpm")
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"persons": 3}')
    assert_one_line_error(run("build", "--config", str(unknown)), "persons", "not permitted")


def test_wrong_key_found_before_work_starts(tmp_path: Path) -> None:
    with FakeOpenAI(api_key="sk-right") as fake:
        res = run(
            "build", "--base-url", fake.base_url, "--out", str(tmp_path), env={"OPENAI_API_KEY": TEST_KEY}
        )
        assert fake.stats.by_path.get("/v1/chat/completions", 0) == 0
    assert_one_line_error(res, "401", "OPENAI_API_KEY")
    assert TEST_KEY not in res.stderr and not (tmp_path / "personas").exists()


def test_build_twice_then_read(tmp_path: Path) -> None:
    """The issue's done-when: 20 personas build a complete version; the re-run makes no LLM call."""
    out = tmp_path / "out"
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "OPENAI_API_KEY": TEST_KEY}
    args = ["build", "--personas", "20", "--sessions", "3", "--dataset", "cli", "--out", str(out)]
    with FakeOpenAI(latency=0.05, api_key=TEST_KEY) as fake:
        t0 = time.perf_counter()
        first = run(*args, "--base-url", fake.base_url, env=env)
        t1 = time.perf_counter()
        assert first.returncode == 0, first.stderr[-2000:]
        calls = fake.stats.by_path["/v1/chat/completions"]
        second = run(*args, "--base-url", fake.base_url, "--force", env=env)  # else: up to date
        t2 = time.perf_counter()
        assert second.returncode == 0, second.stderr[-2000:]
        assert fake.stats.by_path["/v1/chat/completions"] == calls > 20 * 3 * 3
    assert "cli@v0001" in first.stdout and "cli@v0002" in second.stdout and "0 LLM calls" in second.stdout
    assert "cost $" in first.stdout and "0.0000" not in first.stdout  # gpt-4o-mini has a price
    assert "\r" not in first.stderr  # not a terminal: plain lines only
    print(f"first build {t1 - t0:.1f} s, cached re-run {t2 - t1:.1f} s")
    for stream in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert TEST_KEY not in stream and "Traceback" not in stream

    shown = run("show", "cli@v1", "--out", str(out))
    assert shown.returncode == 0 and "personas" in shown.stdout and "filter" in shown.stdout
    assert "LLM cost $" in shown.stdout and "USD" in shown.stdout
    listed = run("versions", "cli", "--out", str(out))
    assert listed.returncode == 0 and "v0002 (latest)" in listed.stdout and "parent=v0001" in listed.stdout
    assert_one_line_error(run("show", "cli@v7", "--out", str(out)), "no version v7")
    ds = pl.read_parquet(out / "cli" / "latest" / "dataset" / "*.parquet")
    m = json.loads((out / "cli" / "latest" / "manifest.json").read_text())
    assert len(ds) == m["counts"]["filter"]["rows_out"] > 0


# ---------------------------------------------------------------- filter on any Parquet


def test_filter_any_parquet(tmp_path: Path) -> None:
    src = tmp_path / "texts.parquet"
    base = "please help me plan a quiet weekend trip to the lakes with my two kids and a dog"
    pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "body": [base, base.upper() + "!", "As an AI language model, I can't.", "hi"],
        }
    ).write_parquet(src)
    res = run("filter", str(src), "--column", "body", "--id-column", "id", "--dest", str(tmp_path / "f"))
    assert res.returncode == 0, res.stderr
    kept = pl.read_parquet(tmp_path / "f" / "kept.parquet")
    rej = pl.read_parquet(tmp_path / "f" / "rejections.parquet")
    assert kept["id"].to_list() == ["a"]
    assert dict(zip(rej["id"], rej["drop_reason"], strict=False)) == {
        "b": "exact_duplicate",
        "c": "refusal",
        "d": "too_short",
    }
    assert rej.filter(pl.col("id") == "b")["dup_of"].item() == "a"


def test_filter_bad_inputs(tmp_path: Path) -> None:
    good = tmp_path / "ok.parquet"
    pl.DataFrame({"text": ["one two three four"]}).write_parquet(good)
    assert_one_line_error(run("filter", str(good), "--column", "body"), "no column 'body'", "text")
    notpq = tmp_path / "x.parquet"
    notpq.write_text("a,b\n1,2\n")
    assert_one_line_error(run("filter", str(notpq)), "not a Parquet file")
    empty = tmp_path / "empty.parquet"
    pl.DataFrame({"text": []}, schema={"text": pl.String}).write_parquet(empty)
    assert_one_line_error(run("filter", str(empty)), "no rows")
    assert_one_line_error(run("filter", str(tmp_path / "missing.parquet")), "does not exist")
    assert_one_line_error(run("filter", str(good), "--threshold", "300"), "--threshold")


def test_usage_errors_have_no_traceback() -> None:
    res = run("versions")
    assert_one_line_error(res, "missing argument 'DATASET'", "personaloom versions --help")
    assert_one_line_error(run("build", "--personas", "many"), "--personas")
