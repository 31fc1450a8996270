"""A scripted stand-in for a model that writes probe items well, for tests on the fake server.

It answers only `probes/write` requests (others go to the fake's schema-driven text): a question that names
no value, and four reply frames that each hold their marker ([A]..[D]) once, as a competent model does.
The frames are drawn per request from a few of different lengths, in no relation to which value is true
(the writer is not told), so the items it yields test the blind rules honestly.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from typing import Any

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


def probe_writer(body: dict[str, Any]) -> str | None:
    user = next((m["content"] for m in body.get("messages", []) if m["role"] == "user"), "")
    if "Four possible values, one per reply" not in user:
        return None
    rng = random.Random(hashlib.sha256(user.encode()).digest())
    replies = {f"reply_{x.lower()}": rng.choice(FRAMES).format(m=f"[{x}]") for x in "ABCD"}
    return json.dumps({"question": rng.choice(QUESTIONS), **replies})


def probe_confirmer(lying: bool = False) -> Callable[[dict[str, Any]], str | None]:
    """The probe writer, plus a judge for `probes/confirm` that names the options holding the value as a
    competent judge would (or, `lying`, every option: no key can then be confirmed)."""

    def reply(body: dict[str, Any]) -> str | None:
        user = next((m["content"] for m in body.get("messages", []) if m["role"] == "user"), "")
        if "Which of these replies follow it?" not in user:
            return probe_writer(body)
        value = re.search(r'What holds for this user now \([^)]*\): "(.*)"\n', user)
        options = re.findall(r"^([A-D])\. (.*)$", user, flags=re.M)
        held = [x for x, text in options if value and f'"{value.group(1)}"' in text]
        return json.dumps({"matching": [x for x, _ in options] if lying else held})

    return reply
