"""A judge's verdicts apply only when it is right on items with a known answer (judge_calibration.csv)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from personaloom.errors import UserError
from personaloom.llm.client import LLM
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.stages.calibration import calibrate, calibration_jobs
from personaloom.stages.filter.judges import ANSWERABILITY
from personaloom.testing.fake_openai import FakeOpenAI, call_of
from personaloom.testing.judge_model import answer_key, calibration_item

KEY = answer_key()


def judge(on_rows: bool | None, *, on_items: str = "right") -> Any:
    """A judge: on calibration items `right` (the key), `wrong`, `no` (always false) or `junk` (no JSON);
    on the build's rows always `on_rows` (None: the fake's own answer)."""

    def reply(body: dict[str, Any]) -> str | None:
        if call_of(body) != ANSWERABILITY.name:
            return None
        item = calibration_item(body)
        if item is None:
            return None if on_rows is None else json.dumps({"answerable": on_rows, "reason": "as told"})
        if on_items == "junk":
            return "not a verdict"
        said = {"right": KEY[item], "wrong": not KEY[item], "no": False}[on_items]
        return json.dumps({"answerable": said, "reason": "from the key"})

    return reply


def _calibrate(fake: FakeOpenAI, minimum: float = 0.75):
    llm = LLM(LLMConfig(model="fake", max_retries=0), base_url=fake.base_url, api_key="sk-x", cache=None)

    async def go():
        try:
            return await calibrate(llm, minimum)
        finally:
            await llm.aclose()

    return asyncio.run(go())


def test_the_items_hold_both_kinds_and_parse() -> None:
    jobs = calibration_jobs()
    assert len(jobs) == len(KEY) >= 20
    assert sum(right for _, right in jobs) == len(jobs) // 2  # balanced: a judge that always says one thing
    assert {job.query.neutralized_query for job, _ in jobs} == set(KEY)  # scores 0.5


@pytest.mark.parametrize(
    ("on_items", "accuracy", "trusted"), [("right", 1.0, True), ("no", 0.5, False), ("wrong", 0.0, False)]
)
def test_balanced_accuracy_decides_trust(on_items: str, accuracy: float, trusted: bool) -> None:
    with FakeOpenAI(responder=judge(None, on_items=on_items)) as fake:
        cal = _calibrate(fake)
    assert cal.balanced_accuracy == accuracy and cal.trusted is trusted and cal.items == len(KEY)
    assert cal.right_on_answerable + cal.right_on_unanswerable == round(accuracy * len(KEY))


def test_answers_that_are_no_verdict_count_as_misses() -> None:
    with FakeOpenAI(responder=judge(None, on_items="junk")) as fake:
        cal = _calibrate(fake, minimum=0.1)
    assert cal.invalid == len(KEY) and cal.balanced_accuracy == 0.0 and not cal.trusted


def test_a_broken_items_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "judge_calibration.csv"
    bad.write_text("title,description,query,answerable\nT,D,Q,maybe\n")
    with pytest.raises(UserError, match="answerable must be true or false, not 'maybe'"):
        calibration_jobs(bad)
    bad.write_text("title,query\nT,Q\n")
    with pytest.raises(UserError, match=r"missing column\(s\) description, answerable"):
        calibration_jobs(bad)


def _build(fake: FakeOpenAI, out: Path, **kw: Any) -> dict[str, Any]:
    llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=8)
    cfg = BuildConfig(dataset="demo", personas=2, scenes_per_persona=3, expand_hints=False, llm=llm, **kw)
    version = asyncio.run(build_dataset(cfg, out=str(out)))
    return json.loads((out / "demo" / version / "manifest.json").read_text())


def _row_verdicts_asked(fake: FakeOpenAI) -> int:
    asked = [r["body"] for r in fake.requests if r["path"].endswith("/chat/completions")]
    judged = [b for b in asked if call_of(b) == ANSWERABILITY.name]
    return sum(calibration_item(b) is None for b in judged)


@pytest.mark.usefixtures("prefect_harness")
def test_a_trusted_judge_rejects_and_an_untrusted_one_is_not_asked(out: Path) -> None:
    with FakeOpenAI(responder=judge(False)) as fake:  # right on the items, "no" on every row
        m = _build(fake, out / "trusted")
        before_judge = sum(n for r, n in m["rejection_reasons"].items() if r != "unanswerable")
        assert _row_verdicts_asked(fake) == m["counts"]["filter"]["rows_in"] - before_judge > 0
    assert m["judges"]["filter/answerability"]["trusted"] is True
    assert m["counts"]["filter"]["rows_out"] == 0 and m["rejection_reasons"]["unanswerable"] > 0

    with FakeOpenAI(responder=judge(False, on_items="no")) as fake:  # "no" to everything: no evidence
        m = _build(fake, out / "untrusted")
        assert _row_verdicts_asked(fake) == 0
    assert m["judges"]["filter/answerability"]["trusted"] is False
    assert "unanswerable" not in m["rejection_reasons"] and m["counts"]["filter"]["rows_out"] > 0
    rows = pl.read_parquet(out / "untrusted" / "demo" / "latest" / "dataset" / "*.parquet")
    assert rows["fallback_fields"].list.contains("answerability").all()

    with FakeOpenAI(responder=judge(False, on_items="no")) as fake:  # 0: verdicts always apply
        m = _build(fake, out / "always", judge_min_accuracy=0.0)
    assert "filter/answerability" not in m["judges"] and m["counts"]["filter"]["rows_out"] == 0
