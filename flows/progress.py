"""Progress of a build, per stage: counters the flow advances and any display may read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

STAGE_ORDER = ("seed", "personas", "scenes", "queries", "filter")


@dataclass
class ProgressSink:
    """Thread-safe done/total counters per stage (the CLI draws them; tests and logs read them)."""

    done: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    usage: Callable[[], dict] | None = None  # the running LLM's per-stage usage, for displays
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, personas: int, scenes_per_persona: int) -> None:
        sessions = personas * scenes_per_persona
        with self._lock:
            self.total = {"seed": personas, "personas": personas, "scenes": sessions, "queries": sessions, "filter": sessions}
            self.done = dict.fromkeys(STAGE_ORDER, 0)

    def advance(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self.done[stage] = self.done.get(stage, 0) + n

    def advancer(self, stage: str) -> Callable[[int], None]:
        return lambda n: self.advance(stage, n)

    def snapshot(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [(s, self.done.get(s, 0), self.total.get(s, 0)) for s in STAGE_ORDER]


progress_sink = ProgressSink()
