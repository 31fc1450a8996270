"""Blind baselines of the probes: rules that answer an item from its question and options alone.

An item must need the history. Each rule here reads only what a reader without the history sees (option
lengths, the words options share with the question and with each other) and names the option(s) it
would pick; a tie splits the credit, as a random tie-break would. `select` keeps the kept items' score of
every rule (and of the judge model asked without history) at chance: the items it leaves out are
rejected as `probe_blind_answerable`, naming the rules they leaned on — the adversarial filtering SWAG
and HellaSwag built their items with, held to a band so that no rule is pushed below chance either
(rejecting every item a rule gets right would make the rule's pick an option to eliminate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from personaloom.stages.filter.grounding import content_tokens

CHANCE = 0.25
SPREAD = (CHANCE * (1 - CHANCE)) ** 0.5  # of one guess's credit
MARGIN = 0.04  # how far above chance a rule may drift over the kept items
# ... and below: eliminating the pick of a rule that scores p leaves (1 - p) / 3 for a guess among the
# rest, 0.27 at p = 0.19; a tighter floor starves the gate (the longest and the shortest option cannot
# both be the key, so holding both near chance from below rejects nearly every item)
FLOOR = 0.055

Rule = Callable[[str, Sequence[str]], set[int]]


def _argmax(scores: Sequence[float]) -> set[int]:
    top = max(scores)
    return {i for i, s in enumerate(scores) if s == top}


def _overlap(a: str, b: str) -> float:
    x, y = content_tokens(a), content_tokens(b)
    return len(x & y) / len(x | y) if x | y else 0.0


def longest(question: str, options: Sequence[str]) -> set[int]:
    return _argmax([len(o) for o in options])


def shortest(question: str, options: Sequence[str]) -> set[int]:
    return _argmax([-len(o) for o in options])


def question_overlap(question: str, options: Sequence[str]) -> set[int]:
    """The option sharing most words with the question."""
    return _argmax([_overlap(question, o) for o in options])


def option_centroid(question: str, options: Sequence[str]) -> set[int]:
    """The option sharing most words with the other options (the 'typical' reply)."""
    return _argmax(
        [sum(_overlap(o, p) for j, p in enumerate(options) if j != i) for i, o in enumerate(options)]
    )


def odd_one_out(question: str, options: Sequence[str]) -> set[int]:
    """The option sharing fewest words with the others (the one that stands out)."""
    return _argmax(
        [-sum(_overlap(o, p) for j, p in enumerate(options) if j != i) for i, o in enumerate(options)]
    )


RULES: dict[str, Rule] = {
    "longest": longest,
    "shortest": shortest,
    "question_overlap": question_overlap,
    "option_centroid": option_centroid,
    "odd_one_out": odd_one_out,
}
JUDGE = "blind_judge"  # the build's judge model, asked with the question and options only


def credit(picked: set[int], answer: int) -> float:
    return 1 / len(picked) if answer in picked else 0.0


def rule_credits(question: str, options: Sequence[str], answer: int) -> dict[str, float]:
    return {name: credit(rule(question, options), answer) for name, rule in RULES.items()}


def select(credits: Sequence[dict[str, float]]) -> list[bool]:
    """Which items to keep so that every rule's mean credit over the kept ones lies within
    [chance - FLOOR, chance + MARGIN] (the judge: below chance + MARGIN), each widened by half a standard
    error of n guesses (0.022 at 100 items, 0.068 at 10), removing as few as a greedy
    search finds: while a rule is out of its band, drop the item whose removal brings the rules back the
    most (ties: the earliest, in the caller's seeded order). A running quota in item order starved on the
    rules that pull against each other (the longest and the shortest option cannot both be the key)."""
    if not credits:
        return []
    rules = sorted({r for c in credits for r in c})
    # an item the judge gave no verdict on weighs as chance for it: neither for nor against
    table = np.array([[c.get(r, CHANCE) for r in rules] for c in credits], dtype=float)
    below = np.array([FLOOR if r in RULES else 1.0 for r in rules])
    keep = np.ones(len(table), dtype=bool)
    sums, n = table.sum(axis=0), len(table)

    def excess(means: np.ndarray, n: int) -> np.ndarray:
        # half a standard error of a mean of n guesses on top: a handful of items cannot sit at chance
        # exactly, and demanding it would reject nearly all of a small build's items
        slack = 0.5 * SPREAD / np.sqrt(n)
        over = np.clip(means - (CHANCE + MARGIN + slack), 0, None)
        under = np.clip((CHANCE - below - slack) - means, 0, None)
        return (over + under).sum(axis=-1)

    while n > 1 and excess(sums / n, n) > 0:
        after = excess((sums - table) / (n - 1), n - 1)  # every item's removal at once
        after[~keep] = np.inf
        drop = int(np.argmin(after))
        keep[drop] = False
        sums, n = sums - table[drop], n - 1
    return keep.tolist()


def position_majority(answers: Sequence[int]) -> float:
    """The score of always picking the position that is most often right (the items' own key)."""
    if not answers:
        return 0.0
    return Counter(answers).most_common(1)[0][1] / len(answers)
