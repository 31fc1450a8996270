"""A scripted user simulator for tests on the fake server: it does what stage 4 asks of it, in English.

On `queries/simulate` and `queries/follow` (the call a request names) it writes a message that mentions
every "someone close to you" value of its asks as a relative's, states the values it may say plainly, and
only hints at the rest (none of their words); every other request goes to `then` (default: the fake's own
schema-driven answer). The message is the one field of the call's response model.
"""

from __future__ import annotations

import re
from typing import Any

from personaloom.stages.queries import FOLLOW, SIMULATE
from personaloom.testing.fake_openai import Request, Responder, call_of, response_model, scripted

# the asks stage 4 writes (personaloom.stages.queries), and the scene's title
_OTHERS = re.compile(r"^- someone close to you .*?not you: (.+?)\. Mention it in passing", re.M)
_PLAIN = re.compile(r"^- [^:\n]+: (.+?)\. You may say it plainly", re.M)
_SCENE = re.compile(r"^Scene: (.+?) —", re.M)


def _message(req: Request) -> dict[str, Any]:
    prompt = "\n".join(str(m.get("content")) for m in req.get("messages") or [] if isinstance(m, dict))
    scene = _SCENE.search(prompt)
    parts = [f"My sister says she {v.lower()}." for v in _OTHERS.findall(prompt)]
    parts += [f"About me: {v}." for v in _PLAIN.findall(prompt)]
    parts.append(f"Could you help me with this: {scene.group(1) if scene else 'my plan'}?")
    model = response_model(call_of(req))
    assert model is not None and len(model.model_fields) == 1, "a user's message is its model's one field"
    return {next(iter(model.model_fields)): " ".join(parts)}


def obedient_user(then: Responder | None = None) -> Responder:
    return scripted({SIMULATE.name: _message, FOLLOW.name: _message}, then)
