"""Stage 5's code-owned text checks, asked as each answer arrives, so an answer it would drop is redrawn.

A declared call names its check (`LLMCall.check`); `LLM.run` asks it about every answer that validated
and draws again, with another sampling seed, while it fails (`LLMConfig.redraws` times at most). The
verdicts come from the very functions stage 5 applies to the finished rows — `ExampleIndex.copied`
(a prompt's worked example repeated), `langid.mismatch` (written in another language than the persona's)
and `grounding.drifted` (a neutralized query that left the task) — so a redraw is asked for exactly when
stage 5 would drop the row, and stage 5 still has the last word on what the answer finally was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from personaloom.stages.filter.grounding import ExampleIndex, drifted


@dataclass(frozen=True)
class AnswerChecks:
    """What a call's check may ask: `examples` are the run's prompts' worked examples; with
    `language_min_score` None (stage 5 does not match rows to their persona's language) no language check."""

    examples: ExampleIndex
    language_min_score: float | None = 0.5

    def copied(self, texts: Mapping[str, str]) -> str | None:
        """'<field> repeats a prompt example' for the first text that does (stage 5: `copied_example`)."""
        for field, text in texts.items():
            if self.examples.copied(text.strip()) is not None:
                return f"{field} repeats a prompt example"
        return None

    def wrong_language(self, field: str, text: str, intended: str) -> str | None:
        """'<field> is in <code>, not <intended>' when stage 5 would call it `wrong_language`."""
        if self.language_min_score is None or not text.strip():
            return None
        from personaloom.stages.filter.langid import (  # loads fastText once, on first use
            mismatch,
            top_languages,
        )

        (top,) = top_languages([text.strip()])
        if mismatch(top, intended, self.language_min_score, text):
            return f"{field} is in {top[0][0]}, not {intended}"
        return None

    def drifted(self, neutral: str, personalized: str, scene_text: str) -> str | None:
        """Stage 5's `neutralization_drift`: the neutralized query shares no task content."""
        if drifted(neutral.strip(), personalized.strip(), scene_text):
            return "the neutralized query shares no task content with the query or the scene"
        return None


def checks_of(llm: Any) -> AnswerChecks:
    """The checks `llm` was handed (a run's: `open_run`), else the default ones over its prompts' examples."""
    return llm.checks if llm.checks is not None else AnswerChecks(ExampleIndex(llm.prompts.examples()))
