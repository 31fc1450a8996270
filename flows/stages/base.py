"""What every stage returns, and the one way stages fan calls out (asyncio, bounded by the LLM)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.records import Rejection

R = TypeVar("R")
I = TypeVar("I")  # noqa: E741

Progress = Callable[[int], None]


@dataclass
class StageOutcome(Generic[R]):
    """Rows that go on, and rows that stop here with a reason: nothing is dropped silently."""

    records: list[R] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @classmethod
    def split(cls, items: Iterable[R | Rejection]) -> StageOutcome[R]:
        """Partition a stage's per-row results into the rows that go on and the rejections."""
        out: StageOutcome[R] = cls()
        for item in items:
            if isinstance(item, Rejection):
                out.rejections.append(item)
            else:
                out.records.append(item)
        return out


async def map_async(items: Iterable[I], fn: Callable[[I], Awaitable[R]], progress: Progress | None = None) -> list[R]:
    """Run fn over items concurrently (the LLM's semaphore bounds calls), results in input order."""

    async def one(item: I) -> R:
        result = await fn(item)
        if progress is not None:
            progress(1)
        return result

    return list(await asyncio.gather(*(one(i) for i in items)))
