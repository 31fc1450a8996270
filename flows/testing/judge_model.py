"""A scripted stand-in for a judge that passes its calibration, for tests on the fake server.

On the calibration items (`seeds/judge_calibration.csv`) it answers from the file's key, as a competent
judge does; every other request goes to `then` (default: the fake's own schema-driven answer, a coin
toss for `answerable`), so a build's rows are judged as before calibration existed. Its requests are
told apart by the call they name (`personaloom.testing.fake_openai.scripted`), not by their wording.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import polars as pl

from personaloom.stages.calibration import ITEMS
from personaloom.stages.filter.judges import ANSWERABILITY
from personaloom.stages.reveals import REVEAL
from personaloom.testing.fake_openai import Request, Responder, call_of, extract_schema, scripted


@cache
def answer_key() -> dict[str, bool]:
    """Calibration query → whether it is answerable."""
    rows = pl.read_csv(ITEMS, infer_schema=False).to_dicts()
    return {r["query"]: r["answerable"] == "true" for r in rows}


def _quoted(body: dict[str, Any], texts: dict[str, bool]) -> str | None:
    """The one of `texts` the request's messages hold (a repair turn carries the prompt too), else None."""
    prompt = json.dumps(body.get("messages"), ensure_ascii=False)
    return next((t for t in texts if json.dumps(t, ensure_ascii=False)[1:-1] in prompt), None)


def calibration_item(body: dict[str, Any]) -> str | None:
    """The calibration query an answerability request asks about, else None."""
    return _quoted(body, answer_key()) if call_of(body) == ANSWERABILITY.name else None


def calibrated(then: Responder | None = None) -> Responder:
    """`then`, except that calibration items get the right verdict."""

    def judge(req: Request) -> dict[str, Any] | None:
        item = calibration_item(req)
        return None if item is None else {"answerable": answer_key()[item], "reason": "from the answer key"}

    return scripted({ANSWERABILITY.name: judge}, then)


@cache
def reveal_key() -> dict[str, bool]:
    """Reveal calibration message → whether its preference can be inferred (implicit or explicit)."""
    from personaloom.stages.reveals import CALIBRATION

    rows = pl.read_csv(CALIBRATION, infer_schema=False).to_dicts()
    return {r["message"]: r["revealed"] != "absent" for r in rows}


def reveal_judge(verdict: bool | None = True, then: Responder | None = None) -> Responder:
    """A reveal judge (`queries/reveal`) that passes its calibration and then says `verdict` about every
    planned preference of a build's turns (None: the fake's own coin tosses); other requests go to `then`.
    The preferences are the fields of the response model the request's schema sends (P1, P2, …)."""

    def judge(req: Request) -> dict[str, Any] | None:
        if (item := _quoted(req, reveal_key())) is not None:
            return {"P1": reveal_key()[item]}
        if verdict is None:
            return None
        return {label: verdict for label in (extract_schema(req)[1] or {}).get("properties", {})}

    return scripted({REVEAL.name: judge}, then)
