"""A scripted user simulator for tests on the fake server: it does what stage 4 asks of it, in English.

On `queries/simulate` and `queries/follow` it writes a message that mentions every "someone close to you"
value of its asks as a relative's, states the values it may say plainly, and only hints at the rest (none
of their words); every other request goes to `then` (default: the fake's own schema-driven answer).
"""

from __future__ import annotations

import json
import re
from typing import Any

from personaloom.testing.judge_model import Responder

_OTHERS = re.compile(r"^- someone close to you .*?not you: (.+?)\. Mention it in passing", re.M)
_PLAIN = re.compile(r"^- [^:\n]+: (.+?)\. You may say it plainly", re.M)
_SCENE = re.compile(r"^Scene: (.+?) —", re.M)


def _prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))


def obedient_user(then: Responder | None = None) -> Responder:
    def reply(body: dict[str, Any]) -> str | None:
        schema = json.dumps(body.get("response_format"))
        key = (
            "personalized_query"
            if "personalized_query" in schema
            else "message"
            if "FollowDraft" in schema
            else None
        )
        if key is None:
            return then(body) if then is not None else None
        prompt = _prompt(body)
        scene = _SCENE.search(prompt)
        parts = [f"My sister says she {v.lower()}." for v in _OTHERS.findall(prompt)]
        parts += [f"About me: {v}." for v in _PLAIN.findall(prompt)]
        parts.append(f"Could you help me with this: {scene.group(1) if scene else 'my plan'}?")
        return json.dumps({key: " ".join(parts)})

    return reply
