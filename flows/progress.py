"""Progress of a build, per stage: counters the flow advances and any display may read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProgressSink:
    """Thread-safe done/total counters per stage (the CLI draws them; tests and logs read them)."""

    done: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    usage: Callable[[], dict] | None = None  # the running LLM's per-stage usage, for displays
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
