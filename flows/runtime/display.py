"""Progress of a build on stderr: live bars on a terminal, a plain line every few seconds elsewhere.

Per stage done/total and time left; for the LLM: calls made and their rate, calls in flight (and queued
for a slot), retries, cache hits, tokens and the cost in USD ("unknown" for an unpriced model).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from personaloom.runtime.progress import LLMMeter, clock, eta, progress_sink


@contextmanager
def live_progress(
    enabled: bool = True,
    interval: float = 0.25,
    *,
    priced: bool = True,
    stream: TextIO | None = None,
    every: float = 10.0,
) -> Iterator[None]:
    """Draw the sink's counters on `stream` (stderr) while the body runs; a no-op when disabled.

    A terminal gets live bars; anything else (a log file, CI) a plain line every `every` seconds and a
    last one at the end, never a `\\r`.
    """
    stream = stream or sys.stderr
    if not enabled:
        yield
        return
    if not stream.isatty():
        with _plain_lines(stream, every, priced):
            yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars = Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(file=stream),
        transient=False,
    )
    meter = LLMMeter()
    ids: dict[str, int] = {}

    def refresh(final: bool = False) -> None:
        for stage, done, total in progress_sink.snapshot():
            if final and total and done < total:  # an estimate (probes): the end says what came
                total = done
            if stage not in ids:
                ids[stage] = bars.add_task(stage, total=total or None, note="")
            bars.update(ids[stage], completed=done, total=total or None)
        line = meter.read().line(priced)
        if "llm" not in ids:
            ids["llm"] = bars.add_task("LLM", total=None, note=line, visible=False)
        bars.update(ids["llm"], note=line, visible=True)

    with bars:
        try:
            with _every(interval, refresh):
                yield
        finally:
            refresh(final=True)


@contextmanager
def _every(seconds: float, tick: Callable[[], None]) -> Iterator[None]:
    """Call `tick` every `seconds` on a background thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            tick()

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def progress_line(meter: LLMMeter, started: float, priced: bool) -> str:
    """`progress 01:02 eta 00:40 | seed 20/20 scene 31/60 ... | LLM 523 calls (12.1/s), ...`."""
    snap = progress_sink.snapshot()
    elapsed = time.monotonic() - started
    stages = " ".join(f"{s} {d}/{t}" for s, d, t in snap)
    llm = meter.read().line(priced)
    return f"progress {clock(elapsed)} eta {clock(eta(snap, elapsed))} | {stages} | LLM {llm}"


@contextmanager
def _plain_lines(stream: TextIO, every: float, priced: bool) -> Iterator[None]:
    meter = LLMMeter()
    started = time.monotonic()

    def tick() -> None:
        if progress_sink.snapshot():
            print(progress_line(meter, started, priced), file=stream, flush=True)

    with _every(every, tick):
        yield
