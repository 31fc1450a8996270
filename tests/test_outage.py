"""A failing endpoint stops the build and publishes nothing; a flaky one costs no row; a re-run against the
recovered endpoint builds the real version (a failed build is never "up to date")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest

from personaloom.llm.client import endpoint_label
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.testing.cli import TEST_KEY, assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.testing.hostile import HostileEndpoint

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def upstream() -> FakeOpenAI:
    with FakeOpenAI() as fake:
        yield fake


def _settings(tmp_path: Path, **llm: object) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"llm": {"max_retries": 1, "concurrency": 4, **llm}}))
    return path


def _build_args(url: str, out: Path, settings: Path) -> list[str]:
    return [
        "build", "--dataset", "h", "--personas", "2", "--scenes-per-persona", "2", "--no-progress",
        "--model", "fake-model", "--base-url", url, "--out", str(out), "--config", str(settings),
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["500", "bad_utf8"])
def test_an_outage_publishes_nothing_and_the_recovered_endpoint_builds(
    upstream: FakeOpenAI, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "out"
    with HostileEndpoint(upstream, then=mode) as hostile:
        args = _build_args(hostile.base_url, out, _settings(tmp_path))
        res = run(*args, env={"OPENAI_API_KEY": TEST_KEY}, timeout=240)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode != 0 and "Traceback" not in res.stderr + res.stdout, res.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert endpoint_label(hostile.base_url) in lines[0] and "nothing was published" in lines[0]
        assert ("HTTP 500" if mode == "500" else "malformed reply") in lines[0]
        assert TEST_KEY not in res.stderr
        assert not list((out / "h").glob("v0*")) and not (out / "h" / "latest").exists()
        hostile.then = "ok"  # the endpoint recovers: the same command builds the real version
        again = run(*args, env={"OPENAI_API_KEY": TEST_KEY}, timeout=240)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("h@v0001: ") and "up to date" not in again.stdout
    assert pl.read_parquet(out / "h" / "v0001" / "dataset").height > 0


def _cfg(url: str) -> BuildConfig:
    llm = LLMConfig(model="fake-model", base_url=url, concurrency=8, max_retries=6)
    return BuildConfig(dataset="f", personas=3, scenes_per_persona=3, shard_size=2, llm=llm)


def test_flaky_first_answers_cost_no_row(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """Torn bodies, 500s and malformed envelopes on the first calls: the dataset is the clean build's."""
    clean = asyncio.run(build_dataset(_cfg(upstream.base_url), out=str(tmp_path / "clean")))
    faults = ["torn", "500", "array", "bad_utf8", "choices_obj", "broken_json", "500", "content_int"] * 3
    # each fault on a request's first attempt: a call hit by three in a row (possible under load) would
    # reach its repair turn, whose answer is another one — a different row, not a lost one
    with HostileEndpoint(upstream, faults, once_per_request=True) as flaky:
        version = asyncio.run(build_dataset(_cfg(flaky.base_url), out=str(tmp_path / "flaky")))
        assert flaky.chat_requests > len(faults)

    def rows(root: Path, v: str) -> pl.DataFrame:
        cols = ["query_id", "neutralized_query", "personalized_query"]
        return pl.read_parquet(root / "f" / v / "dataset").select(cols).sort("query_id")

    a, b = rows(tmp_path / "clean", clean), rows(tmp_path / "flaky", version)
    assert a.height > 0 and a.equals(b)
    manifest = json.loads((tmp_path / "flaky" / "f" / version / "manifest.json").read_text())
    assert sum(u["retries"] for u in manifest["usage"].values()) >= len(faults)
    assert sum(u["errors"] for u in manifest["usage"].values()) == 0


@pytest.mark.parametrize("where", ["--base-url", "OPENAI_BASE_URL"])
def test_a_key_in_the_url_is_refused_in_one_line(tmp_path: Path, where: str) -> None:
    url = f"http://user:{TEST_KEY}@127.0.0.1:9/v1"
    flag = ["--base-url", url] if where == "--base-url" else []
    env = {"OPENAI_BASE_URL": url} if where == "OPENAI_BASE_URL" else {}
    res = run("build", "--personas", "1", "--out", str(tmp_path / "o"), *flag, env=env, timeout=60)
    assert_one_line_error(res, where, "credentials", "OPENAI_API_KEY")
    assert TEST_KEY not in res.stderr + res.stdout and not list((tmp_path / "o").glob("*/v0*"))


def test_a_resumed_build_counts_what_the_interrupted_run_spent(upstream: FakeOpenAI, tmp_path: Path) -> None:
    from personaloom.llm.client import LLMError

    with HostileEndpoint(upstream, ["ok"] * 40, then="500") as flaky:
        cfg = _cfg(flaky.base_url).model_copy(
            # one call in flight: at the failure no other reply is on the wire, half-read, uncounted
            update={"llm": _cfg(flaky.base_url).llm.model_copy(update={"max_retries": 0, "concurrency": 1})}
        )
        with pytest.raises(LLMError):
            asyncio.run(build_dataset(cfg, out=str(tmp_path)))
        first = flaky.chat_requests
        flaky.then = "ok"
        version = asyncio.run(build_dataset(cfg, out=str(tmp_path)))
        total = flaky.chat_requests
    manifest = json.loads((tmp_path / "f" / version / "manifest.json").read_text())
    calls = sum(u["calls"] for u in manifest["usage"].values())
    # every request that got a reply is counted once: the interrupted run's 40 and the resumed run's
    assert calls == 40 + (total - first)
    assert not (tmp_path / "f" / version / ".usage.json").exists()
