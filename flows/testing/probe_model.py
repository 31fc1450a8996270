"""A scripted stand-in for a model that writes probe items well, for tests on the fake server.

It answers only `probes/write` requests, told apart by the call they name (others go to the fake's
schema-driven text): a question that names no value, and four reply frames that each hold their marker
([A]..[D]) once, as a competent model does.
The frames are drawn per request from a few of different lengths, in no relation to which value is true
(the writer is not told), so the items it yields test the blind rules honestly.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from personaloom.stages.probes import CONFIRM, WRITE
from personaloom.testing.fake_openai import Request, Responder, scripted

FRAMES = (
    "Since you like {m}, here is the plan laid out that way.",
    "Going by {m}, I have put the whole thing together for you, step by step, with the details.",
    "As you prefer {m}, here it is.",
    "Knowing {m} matters to you, I arranged the answer around it and kept the rest short and clear.",
    "With {m} in mind, here is what I suggest for this one.",
    "Because of {m}, I would go this way; tell me if you want the other options too.",
)
QUESTIONS = (
    "Could you help me with my next step on this?",
    "What would you suggest I do this week?",
    "Can you put something together for me for tomorrow?",
)


def _user(req: Request) -> str:
    return next((m["content"] for m in req.get("messages", []) if m["role"] == "user"), "")


def _write(req: Request) -> dict[str, Any]:
    rng = random.Random(hashlib.sha256(_user(req).encode()).digest())
    replies = {f"reply_{x.lower()}": rng.choice(FRAMES).format(m=f"[{x}]") for x in "ABCD"}
    return {"question": rng.choice(QUESTIONS), **replies}


probe_writer: Responder = scripted({WRITE.name: _write})


def probe_confirmer(lying: bool = False) -> Responder:
    """The probe writer, plus a judge for `probes/confirm` that names the options holding the value as a
    competent judge would (or, `lying`, every option: no key can then be confirmed). The value is the
    prompt's first quoted line ('…: "value"'), the options its lines 'A. …' to 'D. …'."""

    def confirm(req: Request) -> dict[str, Any]:
        user = _user(req)
        value = re.search(r'^[^"\n]*: "(.*)"$', user, flags=re.M)
        options = re.findall(r"^([A-D])\. (.*)$", user, flags=re.M)
        held = [x for x, text in options if value and f'"{value.group(1)}"' in text]
        return {"matching": [x for x, _ in options] if lying else held}

    return scripted({WRITE.name: _write, CONFIRM.name: confirm})
