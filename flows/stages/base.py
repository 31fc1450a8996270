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

    def extend(self, other: StageOutcome[R]) -> None:
        self.records.extend(other.records)
        self.rejections.extend(other.rejections)


async def map_async(items: Iterable[I], fn: Callable[[I], Awaitable[R]], progress: Progress | None = None) -> list[R]:
    """Run fn over items concurrently (the LLM's semaphore bounds calls), results in input order."""

    async def one(item: I) -> R:
        result = await fn(item)
        if progress is not None:
            progress(1)
        return result

    return list(await asyncio.gather(*(one(i) for i in items)))
