"""Embeddings and the episodic memory built on them (VARS' user vectors are in vars.py).

The default embedding is a hashing vectorizer in numpy: deterministic, offline, no model to download,
and good enough to rank a user's own past sessions by shared words, in any script: words are Unicode
word characters, and text in a script written without spaces (Chinese, Japanese, Thai) is cut into
character bigrams instead. With `replay --embedding-model M` the endpoint's `/embeddings` API embeds
instead (`EndpointEmbedder`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from personaloom.text.languages import WORD

if TYPE_CHECKING:
    from personaloom.llm.client import LLM

# scripts written without spaces between words: Han, kana, Thai, Lao, Khmer, Burmese
UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")


def tokens(text: str) -> list[str]:
    """Lowercase Unicode words; a run of an unspaced script becomes its character bigrams."""
    out: list[str] = []
    for word in WORD.findall(text.lower()):
        if len(word) > 1 and UNSPACED.search(word):
            out += [a + b for a, b in zip(word, word[1:], strict=False)]
        else:
            out.append(word)
    return out


class Embedder(Protocol):
    dim: int

    async def aembed(self, text: str) -> np.ndarray: ...


class HashingEmbedder:
    """Unigrams + bigrams hashed (crc32, stable across processes) into `dim` signed buckets, L2-normalized."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def embed(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float64)
        words = tokens(text)
        for tok in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
            h = zlib.crc32(tok.encode())
            vec[h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0  # a sign bit keeps collisions unbiased
        norm = np.linalg.norm(vec)
        return vec / norm if norm else vec

    async def aembed(self, text: str) -> np.ndarray:
        return self.embed(text)


class EndpointEmbedder:
    """The endpoint's `/embeddings` API (`replay --embedding-model M`), L2-normalized, cached per text.

    `dim` is known once `prepare` has embedded a probe text; the response cache of the run keeps the
    vectors across re-runs.
    """

    def __init__(self, llm: LLM, model: str, stage: str = "embedding") -> None:
        self.llm, self.model, self.stage = llm, model, stage
        self.dim = 0
        self._seen: dict[str, np.ndarray] = {}

    async def prepare(self) -> None:
        self.dim = int((await self.aembed("dimension probe")).shape[0])

    async def aembed(self, text: str) -> np.ndarray:
        hit = self._seen.get(text)
        if hit is None:
            vec = np.asarray(
                (await self.llm.embed([text], self.model, stage=self.stage))[0], dtype=np.float64
            )
            norm = np.linalg.norm(vec)
            hit = self._seen[text] = vec / norm if norm else vec
        return hit


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

    embedder: Embedder
    texts: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    async def add(self, text: str) -> None:
        self.texts.append(text)
        self.vectors.append(await self.embedder.aembed(text))

    async def search(self, query: str, k: int) -> list[str]:
        if not self.vectors or k <= 0:
            return []
        return [self.texts[i] for i in top_k(await self.embedder.aembed(query), self.vectors, k)]
