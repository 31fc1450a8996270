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
