"""Two row rules that need the prompt and the scene, not just the text: echoes and drifted neutralizations.

- `copied_example`: a generated text that repeats a worked example of a prompt (small models copy
  few-shot examples verbatim: "Suggests five quick recipes that fit her shift times…").
- `neutralization_drift`: a neutralized query that shares no task content with its personalized query
  or its scene (the neutralizer answered another request, e.g. a train question for a savings scene).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from rapidfuzz import fuzz

from personaloom.text.languages import WORD

MIN_CHARS = 25  # shorter strings are instructions or keys, not examples worth matching
COPY_SCORE = 90.0  # rapidfuzz partial ratio: the example, nearly verbatim, inside the text (or vice versa)
SHINGLE = 4  # words per shingle for the cheap pre-check before the fuzzy score
_WORD = WORD  # a word in any script, combining marks included
# scripts written without spaces between words: content is compared by character pairs there
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")
STOPWORDS = frozenset(
    "about above after again also because been before being below between both could does doing down during "
    "each from further have having here into just more most other over same should some such than that their "
    "them then there these they this those through under until very what when where which while will with "
    "would your yours please help need want like know could tell give find show make best good great thanks "
    "thank hello dear".split()
)


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + SHINGLE]) for i in range(max(len(words) - SHINGLE + 1, 1))}


class ExampleIndex:
    """Worked examples of the prompts, with a shingle index so most texts skip the fuzzy score."""

    def __init__(self, examples: Iterable[str]) -> None:
        self.examples = sorted({e for e in examples if len(e) >= MIN_CHARS})
        self._by_shingle: dict[tuple[str, ...], list[int]] = {}
        for i, e in enumerate(self.examples):
            for sh in _shingles(e):
                self._by_shingle.setdefault(sh, []).append(i)

    def copied(self, text: str) -> tuple[str, float] | None:
        """(the example, score) when `text` repeats one; None otherwise."""
        if len(text) < MIN_CHARS:
            return None
        candidates = {i for sh in _shingles(text) for i in self._by_shingle.get(sh, ())}
        best: tuple[str, float] | None = None
        for i in candidates:
            score = fuzz.partial_ratio(text.lower(), self.examples[i].lower())
            if score >= COPY_SCORE and (best is None or score > best[1]):
                best = (self.examples[i], score)
        return best


@lru_cache(maxsize=1 << 17)
def content_tokens(text: str) -> frozenset[str]:
    """What a request is about: content words (4+ letters, no stopwords), or character pairs in scripts
    written without spaces, plus every number.

    Cached (frozen, so no caller can change a shared answer): the probes' planner and the blind rules
    ask about the same values and turns again and again.
    """
    low = text.lower()
    tokens = {w for w in _WORD.findall(low) if (len(w) >= 4 and w not in STOPWORDS) or w.isdigit()}
    if _UNSPACED.search(low):
        chars = [c for c in low if c.isalnum()]
        tokens |= {a + b for a, b in zip(chars, chars[1:], strict=False)}
    return frozenset(tokens)


MENTIONED = 0.5  # share of an item's content words a text must carry to count as mentioning it


def mentions(text: str, item: str) -> bool:
    """The text carries most of the item's content words (code's check of what a session said)."""
    want = content_tokens(item)
    return bool(want) and len(want & content_tokens(text)) / len(want) >= MENTIONED


def drifted(neutral: str, personalized: str, scene_text: str) -> bool:
    """True when the neutralized query shares no task content with the query or the scene it came from."""
    mine = content_tokens(neutral)
    return not mine or not (mine & (content_tokens(personalized) | content_tokens(scene_text)))
