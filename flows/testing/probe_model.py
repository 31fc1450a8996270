"""A scripted stand-in for a model that writes probe items well, for tests on the fake server.

It answers only `probes/write` requests (others go to the fake's schema-driven text): each reply names the
value it was asked to follow, as a competent model does, so the items pass code validation.
"""

from __future__ import annotations

import json
import re
from typing import Any


def _quoted(text: str, label: str) -> str:
    m = re.search(re.escape(label) + r'[^"\n]*"([^"\n]*)"', text)
    return m.group(1) if m else ""


def probe_writer(body: dict[str, Any]) -> str | None:
    user = next((m["content"] for m in body.get("messages", []) if m["role"] == "user"), "")
    if "Ground truth (what holds for this user now)" not in user:
        return None
    truth = _quoted(user, "Ground truth")
    wanted = re.findall(
        r'"(outdated|other_persona|contradiction|generic|fabricated)": "\.\.\."', user.split("Return")[-1]
    )
    replies = {
        "question": "Could you help me with my next step on this?",
        "correct": f"Going by what you told me, {truth}, here is how I would do it.",
        "outdated": f"As you used to like it, {_quoted(user, 'What held before it changed')}, here it is.",
        "other_persona": f"Here it is as you want it: {_quoted(user, 'What holds for a different user')}.",
        "contradiction": "I will do the very opposite of your usual habits this time, to shake things up.",
        "generic": "Here is a standard answer that would suit anybody asking this.",
        "fabricated": "Since you love loud surprises and bright neon colours, here is a bold new plan.",
    }
    return json.dumps({k: v for k, v in replies.items() if k in ("question", "correct", *wanted)})
