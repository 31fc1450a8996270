"""Embeddings and the memories built on them: episodic retrieval and the VARS user vectors.

The embedding is a hashing vectorizer in numpy: deterministic, offline, no model to download, and
good enough to rank a user's own past sessions by shared words.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from personaloom.schemas.replay import VarsParams

WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Unigrams + bigrams hashed (crc32, stable across processes) into `dim` signed buckets, L2-normalized."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def embed(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float64)
        words = WORD.findall(text.lower())
        for tok in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
            h = zlib.crc32(tok.encode())
            vec[h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0  # a sign bit keeps collisions unbiased
        norm = np.linalg.norm(vec)
        return vec / norm if norm else vec


def top_k(query: np.ndarray, vectors: list[np.ndarray], k: int) -> list[int]:
    """Indices of the k vectors most similar to `query` (cosine; vectors are unit length), best first."""
    if not vectors or k <= 0:
        return []
    scores = np.stack(vectors) @ query
    order = np.argsort(
        -scores, kind="stable"
    )  # stable: ties keep the older item first, runs stay reproducible
    return [int(i) for i in order[:k]]


@dataclass
class EpisodicMemory:
    """Texts with their embeddings; retrieval by similarity to a query."""

    embedder: HashingEmbedder
    texts: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.vectors.append(self.embedder.embed(text))

    def search(self, query: str, k: int) -> list[str]:
        return [self.texts[i] for i in top_k(self.embedder.embed(query), self.vectors, k)]


@dataclass
class VarsState:
    """VARS user vectors over a preference memory.

    score(m) = base(m) + <z_eff, v_m>, z_eff = β_L·z_L + β_S·z_S, base = cosine(query, v_m).
    After a session with reward r (from the user's satisfaction) and selected items S:
    g = mean of v_m over S;  z_L ← z_L + η_L·r·g;  z_S ← decay·z_S + η_S·r·g.
    The long-term vector accumulates slowly; the short-term one reacts fast and fades.
    """

    params: VarsParams
    dim: int
    z_long: np.ndarray = field(init=False)
    z_short: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.z_long = np.zeros(self.dim)
        self.z_short = np.zeros(self.dim)

    @property
    def z_eff(self) -> np.ndarray:
        return self.params.beta_long * self.z_long + self.params.beta_short * self.z_short

    def scores(self, query: np.ndarray, items: list[np.ndarray]) -> np.ndarray:
        if not items:
            return np.zeros(0)
        v = np.stack(items)
        return v @ query + v @ self.z_eff

    def select(self, query: np.ndarray, items: list[np.ndarray]) -> list[int]:
        s = self.scores(query, items)
        return [int(i) for i in np.argsort(-s, kind="stable")[: self.params.top_m]]

    def update(self, selected: list[np.ndarray], reward: float) -> None:
        g = np.mean(np.stack(selected), axis=0) if selected else np.zeros(self.dim)
        self.z_long = self.z_long + self.params.eta_long * reward * g
        self.z_short = self.params.decay * self.z_short + self.params.eta_short * reward * g


def satisfaction_reward(satisfied: bool, user_turns: int, max_turns: int) -> float:
    """Scalar reward: +1 satisfied at once, −1 never satisfied.

    In between, falling linearly to 0 when satisfied at the last turn.
    """
    if not satisfied:
        return -1.0
    if max_turns <= 1:
        return 1.0
    return 1.0 - (user_turns - 1) / (max_turns - 1)
