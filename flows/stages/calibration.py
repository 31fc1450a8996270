"""Whether stage 5's answerability judge is evidence: its verdicts on items whose answer code knows.

Before a run applies the judge's verdicts, the same declared call (`filter/answerability`, same model,
same prompt set) judges the items of `seeds/judge_calibration.csv` — clearly answerable requests and
ones only the user could answer, with the answer key in the file. The judge is trusted when its
balanced accuracy there (the mean of its hit rates on either kind; an invalid answer is a miss) reaches
`BuildConfig.judge_min_accuracy`. An untrusted judge is not asked about the rows: they are kept and
marked (`fallback_fields` "answerability"), as for any answer that is no verdict, and the manifest
records why. (Gemma 3 270M, the embedded model, answers "not answerable" to nearly everything.)
"""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from personaloom.errors import UserError
from personaloom.llm.client import LLM
from personaloom.paths import SEEDS_DIR
from personaloom.schemas.manifest import JudgeCalibration
from personaloom.schemas.records import Query, Rejection, Scene
from personaloom.stages.filter.judges import ANSWERABILITY, JudgeJob

ITEMS = SEEDS_DIR / "judge_calibration.csv"
COLUMNS = ("title", "description", "query", "answerable")
_runs: weakref.WeakKeyDictionary[LLM, asyncio.Task[JudgeCalibration]] = weakref.WeakKeyDictionary()


def calibration_jobs(path: Path = ITEMS) -> list[tuple[JudgeJob, bool]]:
    """(the judge's input, the right verdict) for every item of the file."""
    try:
        df = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise UserError(f"judge calibration items {path}: {e}: restore the shipped file") from None
    if missing := [c for c in COLUMNS if c not in df.columns]:
        raise UserError(f"judge calibration items {path}: missing column(s) {', '.join(missing)}")
    if bad := sorted(set(df["answerable"].to_list()) - {"true", "false"}):
        raise UserError(f"judge calibration items {path}: answerable must be true or false, not {bad[0]!r}")
    jobs = []
    for i, row in enumerate(df.iter_rows(named=True)):
        scene = Scene(
            scene_id=f"calibration-s{i:03d}",
            persona_id="calibration",
            session_index=0,
            timestamp=datetime(2025, 1, 1, tzinfo=UTC),
            kind="common",
            title=row["title"],
            description=row["description"],
            expected_response="",
            context="",
            apis=[],
        )
        query = Query(
            query_id=f"{scene.scene_id}-q0",
            scene_id=scene.scene_id,
            persona_id=scene.persona_id,
            session_index=0,
            personalized_query=row["query"],
            neutralized_query=row["query"],
            revealed_fields=[],
        )
        jobs.append((JudgeJob(query, scene, 0, "en"), row["answerable"] == "true"))
    return jobs


def verdict(outcome: Query | Rejection) -> bool | None:
    """What the judge said: a row kept is 'answerable', a rejection is not, a marked row is no verdict."""
    if isinstance(outcome, Rejection):
        return False
    return None if "answerability" in outcome.fallback_fields else True


async def calibrate(llm: LLM, min_accuracy: float, path: Path = ITEMS) -> JudgeCalibration:
    """Ask the judge about every calibration item (through the response cache, like any call)."""
    jobs = calibration_jobs(path)
    said = await asyncio.gather(*(llm.run(ANSWERABILITY, job, stage="filter") for job, _ in jobs))
    hits = {True: 0, False: 0}
    totals = {True: 0, False: 0}
    invalid = 0
    for (_, right), outcome in zip(jobs, said, strict=True):
        v = verdict(outcome)
        totals[right] += 1
        hits[right] += v is right
        invalid += v is None
    rates = [hits[k] / totals[k] for k in (True, False) if totals[k]]
    accuracy = sum(rates) / len(rates) if rates else 0.0
    return JudgeCalibration(
        call=ANSWERABILITY.name,
        items=len(jobs),
        right_on_answerable=hits[True],
        answerable=totals[True],
        right_on_unanswerable=hits[False],
        unanswerable=totals[False],
        invalid=invalid,
        balanced_accuracy=round(accuracy, 4),
        min_accuracy=min_accuracy,
        trusted=accuracy >= min_accuracy,
    )


async def judge_calibration(llm: LLM, min_accuracy: float) -> JudgeCalibration | None:
    """The run's calibration, asked once per LLM client however many shards want it; None when off (0)."""
    if min_accuracy <= 0:
        return None
    task = _runs.get(llm)
    if task is None:
        task = _runs[llm] = asyncio.ensure_future(calibrate(llm, min_accuracy))
    return await asyncio.shield(task)
