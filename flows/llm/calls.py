"""An LLM call, declared once: template, response model, limits, role, and how its answer becomes a record.

Like Curator's `prompt`/`parse` pair or distilabel's `format_input`/`format_output`: `variables(input)`
gives the template its variables (their names are declared, and checked against the template when the
prompts load), `build(input, result)` turns the validated answer (or its failure, with the raw text)
into what the stage keeps — a record, a rejection, or the input of the next call. `check(input, value,
checks)` asks stage 5's code-owned checks about a validated answer (stages/filter/checks): a reason
means stage 5 would drop it, and the answer is drawn again. Stage code runs a call with
`LLM.run(CALL, input)`; nothing else about the call lives at the call site.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from personaloom.llm.client import LLMResult

In = TypeVar("In")
Out = TypeVar("Out")

# The header every request of the client carries, naming its call (`LLMCall.name`, the template; an
# embeddings request: EMBEDDINGS_CALL). No secret and nothing of the input: a test fake picks its scripted
# role by it (personaloom.testing.fake_openai.scripted), so a prompt's wording can change freely.
CALL_HEADER = "X-Personaloom-Call"
EMBEDDINGS_CALL = "embeddings"

# Who speaks in the call: the manifest records it, and it is what a run may one day route to another
# model (a judge should not grade its own writing).
Role = Literal["writer", "simulator", "judge", "chatbot", "tool", "memory"]


@dataclass(frozen=True)
class LLMCall(Generic[In, Out]):
    """One kind of LLM request. `response=None` asks for plain text; else JSON for that pydantic model."""

    name: str  # the template, prompts/<set>/<name>.j2
    variables: tuple[str, ...]  # the names `render` returns: the template may use these and no others
    render: Callable[[In], dict[str, Any]]
    build: Callable[[In, LLMResult[Any]], Out]
    response: type[BaseModel] | Callable[[In], type[BaseModel]] | None
    max_tokens: int | Callable[[In], int]
    role: Role = "writer"
    temperature: float | None = None  # None: the run's `llm.temperature`
    stage: str | None = None  # usage is accounted under this key; default: the template's folder
    # an input built from sample rows (stages/samples.Samples: llm/ imports no stage), for `prompts --show`
    sample: Callable[[Any], In] | None = None
    # stage 5's verdict on a validated answer (None: keep it); a failing answer is drawn again
    check: Callable[[In, Any, Any], str | None] | None = None  # (input, value, AnswerChecks)

    @property
    def usage_key(self) -> str:
        return self.stage or self.name.split("/")[0]

    def tokens_for(self, item: In) -> int:
        return self.max_tokens(item) if callable(self.max_tokens) else self.max_tokens

    def response_for(self, item: In) -> type[BaseModel] | None:
        r = self.response
        return r if r is None or isinstance(r, type) else r(item)

    def variables_for(self, item: In) -> dict[str, Any]:
        values = self.render(item)
        if set(values) != set(self.variables):
            # a programming error, not a user one: the declaration and the render function disagree
            raise TypeError(
                f"call {self.name}: render gave {sorted(values)}, declared {list(self.variables)}"
            )
        return values

    def describe(self, hashes: dict[str, str]) -> dict[str, Any]:
        """What the manifest records of this call."""
        r = self.response
        return {
            "template_hash": hashes.get(self.name, ""),
            "response": "text" if r is None else r.__name__ if isinstance(r, type) else "computed per input",
            "max_tokens": self.max_tokens if isinstance(self.max_tokens, int) else None,
            "role": self.role,
            "temperature": self.temperature,
            "usage_key": self.usage_key,
            "variables": list(self.variables),
            "check": self.check.__name__ if self.check is not None else None,
        }


def by_name(calls: Iterable[LLMCall[Any, Any]]) -> dict[str, LLMCall[Any, Any]]:
    out: dict[str, LLMCall[Any, Any]] = {}
    for c in calls:
        if out.setdefault(c.name, c) is not c:
            raise ValueError(f"two LLM calls declare the template {c.name}")
    return out
