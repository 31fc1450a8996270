"""Progress of a build, per stage: counters the flow advances and any display may read."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class ProgressSink:
    """Thread-safe done/total counters per stage (the CLI draws them; tests and logs read them)."""

    done: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    usage: Callable[[], dict] | None = None  # the running LLM's per-stage usage, for displays
    llm: Any = None  # the running LLM client (calls in flight), when the flow sets it
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, totals: dict[str, int]) -> None:
        """The stages in display order, each with the rows it is expected to handle."""
        with self._lock:
            self.total = dict(totals)
            self.done = dict.fromkeys(totals, 0)

    def advance(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self.done[stage] = self.done.get(stage, 0) + n

    def advancer(self, stage: str) -> Callable[[int], None]:
        return lambda n: self.advance(stage, n)

    def snapshot(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [(s, self.done.get(s, 0), t) for s, t in self.total.items()]


progress_sink = ProgressSink()


def _client(sink: ProgressSink) -> Any:
    """The LLM client: set by the flow, else the one `sink.usage` reads (a closure over it)."""
    if sink.llm is not None:
        return sink.llm
    for cell in getattr(sink.usage, "__closure__", None) or ():
        value = cell.cell_contents
        if hasattr(value, "usage") and hasattr(value, "config"):
            return value
    return None


@dataclass
class LLMStats:
    """One reading of the LLM's counters, for a display line."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    in_flight: int = 0
    waiting: int = 0  # calls waiting for a free slot (--concurrency)
    rate: float = 0.0  # calls a second, over the last RATE_WINDOW seconds

    def line(self, priced: bool) -> str:
        cost = f"${self.cost_usd:.4f}" if priced else "cost unknown"
        waits = f", {self.waiting} queued" if self.waiting else ""
        failed = f", {self.errors} failed" if self.errors else ""
        return (
            f"{self.calls:,} calls ({self.rate:.1f}/s), {self.in_flight} in flight{waits}, "
            f"{self.retries} retries{failed}, {self.cache_hits:,} cached, {self.tokens:,} tokens, {cost}"
        )


RATE_WINDOW = 30.0


class LLMMeter:
    """Reads the sink's LLM usage and client; keeps a window of readings for the call rate."""

    def __init__(self, sink: ProgressSink = progress_sink) -> None:
        self.sink = sink
        self.readings: deque[tuple[float, int]] = deque()

    def read(self) -> LLMStats:
        usage = self.sink.usage() if self.sink.usage else {}
        s = LLMStats()
        for u in usage.values():
            s.calls += u.calls
            s.cache_hits += u.cache_hits
            s.retries += u.retries
            s.errors += u.errors
            s.tokens += u.prompt_tokens + u.completion_tokens
            s.cost_usd += u.cost_usd
        client = _client(self.sink)
        sem = getattr(client, "_sem", None)
        if sem is not None:
            s.in_flight = max(0, client.config.concurrency - sem._value)
            s.waiting = len(getattr(sem, "_waiters", None) or ())
        now = time.monotonic()
        self.readings.append((now, s.calls))
        while len(self.readings) > 2 and now - self.readings[0][0] > RATE_WINDOW:
            self.readings.popleft()
        t0, c0 = self.readings[0]
        s.rate = (s.calls - c0) / (now - t0) if now > t0 else 0.0
        return s


def eta(snapshot: list[tuple[str, int, int]], elapsed: float) -> float | None:
    """Seconds left at the pace so far, over every stage's rows (None before any row is done)."""
    done = sum(min(d, t) for _, d, t in snapshot)
    total = sum(t for _, _, t in snapshot)
    if not done or not total or elapsed <= 0:
        return None
    return elapsed * (total - done) / done


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def stage_reporter(stream: TextIO = sys.stderr, every: float = 10.0) -> Callable[[str, int, int], None]:
    """A `(stage, done, total)` callback: a `\\r` line redrawn on a terminal; else a plain line per stage
    every `every` seconds and when the stage completes (a log file gets no `\\r`)."""
    if stream.isatty():

        def redraw(stage: str, done: int, total: int) -> None:
            print(f"\r{stage:<12} {done:>10,}/{total:,}", end="", file=stream, flush=True)

        return redraw
    last: dict[str, float] = {}

    def plain(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last.get(stage, 0.0) < every:
            return
        if done >= total and last.get(stage) == -1.0:
            return
        last[stage] = -1.0 if done >= total else now
        print(f"{stage:<12} {done:>10,}/{total:,}", file=stream, flush=True)

    return plain
