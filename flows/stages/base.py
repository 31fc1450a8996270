"""What a stage is: a declared, pure function over records; and the one way stages fan calls out.

A stage names the tables it reads and the table it writes, and `run(inputs, ctx)` maps the input
records to an outcome (records that go on, rejections with a reason). It never opens a file or a
client: one generic task (personaloom.pipeline) reads its inputs for a shard, times it, and writes
rejections then records — the NeMo Curator `ProcessingStage` shape, with datatrove's bookkeeping
done once for every stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from personaloom.schemas.records import Rejection

if TYPE_CHECKING:
    from personaloom.llm.calls import LLMCall
    from personaloom.llm.client import LLM
    from personaloom.schemas.config import BuildConfig
    from personaloom.stages.catalogue import Catalogue

R = TypeVar("R")
I = TypeVar("I")  # noqa: E741

Advance = Callable[[int], None]


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

    def then(self, later: StageOutcome[R]) -> StageOutcome[R]:
        """`later` ran on this outcome's records: its records go on, both sets of rejections stay."""
        return StageOutcome(records=later.records, rejections=self.rejections + later.rejections)


@dataclass
class StageContext:
    """What a stage may use besides its inputs: settings, the LLM, the seed tables, its persona rows."""

    config: BuildConfig
    llm: LLM
    catalogue: Catalogue
    rows: range  # persona indices this shard owns (every persona for a stage over the whole dataset)
    advance: Advance = lambda n: None  # progress: rows of this stage done
    # A published table's rows of the version a grown build continues ([] for a fresh build): a dataset
    # stage deduplicates its new rows against them as already kept, and never judges them again.
    earlier: Callable[[str], Sequence[Any]] = lambda table: []


Inputs = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline, declared: what it reads, what it writes, what it runs, which calls."""

    name: str  # the task's name
    inputs: tuple[str, ...]  # tables it reads: this shard's part, or every part for scope "dataset"
    output: str  # the table it writes
    record: type[BaseModel]  # the output table's row model
    run: Callable[[Inputs, StageContext], Awaitable[StageOutcome[Any]]]
    report: str = ""  # the pipeline stage it counts under (default: its name)
    scope: Literal["shard", "dataset"] = "shard"
    calls: tuple[LLMCall[Any, Any], ...] = ()
    # rows this stage is asked to handle, from the rows written before it: the manifest's `rows_in`
    rows_in: Callable[[BuildConfig, Mapping[str, int]], int] | None = None

    @property
    def reports_as(self) -> str:
        return self.report or self.name


async def map_async(
    items: Iterable[I], fn: Callable[[I], Awaitable[R]], advance: Advance | None = None
) -> list[R]:
    """Run fn over items concurrently (the LLM's semaphore bounds calls), results in input order."""

    async def one(item: I) -> R:
        result = await fn(item)
        if advance is not None:
            advance(1)
        return result

    return list(await asyncio.gather(*(one(i) for i in items)))
