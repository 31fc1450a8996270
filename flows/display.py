"""Live terminal display of a build: done/total per stage, LLM calls, cache hits and tokens."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from personaloom.progress import progress_sink


@contextmanager
def live_progress(enabled: bool = True, interval: float = 0.25) -> Iterator[None]:
    """Draw the sink's counters on stderr while the body runs (a no-op when disabled)."""
    if not enabled:
        yield
        return
    bars = Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[llm]}"),
        console=Console(stderr=True),
        transient=False,
    )
    ids: dict[str, int] = {}
    stop = threading.Event()

    def refresh() -> None:
        usage = progress_sink.usage() if progress_sink.usage else {}
        for stage, done, total in progress_sink.snapshot():
            u = usage.get(stage)
            llm = (
                f"calls {u.calls}  cached {u.cache_hits}  tokens {u.prompt_tokens + u.completion_tokens}"
                if u
                else ""
            )
            if stage not in ids:
                ids[stage] = bars.add_task(stage, total=total or None, llm=llm)
            bars.update(ids[stage], completed=done, total=total or None, llm=llm)

    def loop() -> None:
        while not stop.wait(interval):
            refresh()

    with bars:
        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()
            refresh()
