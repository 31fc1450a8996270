"""A scripted stand-in for a judge that passes its calibration, for tests on the fake server.

On the calibration items (`seeds/judge_calibration.csv`) it answers from the file's key, as a competent
judge does; every other request goes to `then` (default: the fake's own schema-driven answer, a coin
toss for `answerable`), so a build's rows are judged as before calibration existed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import polars as pl

from personaloom.stages.calibration import ITEMS

Responder = Callable[[dict[str, Any]], str | None]


@cache
def answer_key() -> dict[str, bool]:
    """Calibration query → whether it is answerable."""
    rows = pl.read_csv(ITEMS, infer_schema=False).to_dicts()
    return {r["query"]: r["answerable"] == "true" for r in rows}


def calibration_item(body: dict[str, Any]) -> str | None:
    """The calibration query a judge request asks about (a repair turn carries the prompt too), else None."""
    if "answerable" not in json.dumps(body.get("response_format")):
        return None
    prompt = json.dumps(body.get("messages"), ensure_ascii=False)
    return next((q for q in answer_key() if json.dumps(q, ensure_ascii=False)[1:-1] in prompt), None)


def calibrated(then: Responder | None = None) -> Responder:
    """`then`, except that calibration items get the right verdict."""

    def reply(body: dict[str, Any]) -> str | None:
        item = calibration_item(body)
        if item is not None:
            return json.dumps({"answerable": answer_key()[item], "reason": "from the answer key"})
        return then(body) if then is not None else None

    return reply


@cache
def reveal_key() -> dict[str, bool]:
    """Reveal calibration message → whether its preference can be inferred (implicit or explicit)."""
    from personaloom.stages.reveals import CALIBRATION

    rows = pl.read_csv(CALIBRATION, infer_schema=False).to_dicts()
    return {r["message"]: r["revealed"] != "absent" for r in rows}


def reveal_judge(verdict: bool | None = True, then: Responder | None = None) -> Responder:
    """A reveal judge (`queries/reveal`) that passes its calibration and then says `verdict` about every
    planned preference of a build's turns (None: the fake's own coin tosses); other requests go to `then`."""

    def reply(body: dict[str, Any]) -> str | None:
        if "RevealJudgement" not in json.dumps(body.get("response_format")):
            return then(body) if then is not None else None
        prompt = json.dumps(body.get("messages"), ensure_ascii=False)
        said = "\n".join(str(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
        labels = sorted(set(re.findall(r"^P(\d+):", said, re.M)), key=int)
        item = next((m for m in reveal_key() if json.dumps(m, ensure_ascii=False)[1:-1] in prompt), None)
        if item is not None:
            return json.dumps({"P1": reveal_key()[item]})
        if verdict is None:
            return None
        return json.dumps({f"P{n}": verdict for n in labels})

    return reply
