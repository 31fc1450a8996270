"""A scripted stand-in for a judge that passes its calibration, for tests on the fake server.

On the calibration items (`seeds/judge_calibration.csv`) it answers from the file's key, as a competent
judge does; every other request goes to `then` (default: the fake's own schema-driven answer, a coin
toss for `answerable`), so a build's rows are judged as before calibration existed.
"""

from __future__ import annotations

import json
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
