"""Content-addressed on-disk cache of LLM responses: an identical re-run makes zero calls.

Responses are appended to log segments (`root/seg-*.jsonl`, one per writing process) and indexed in
memory by key at start-up. One small file per response cost ~1 ms of syscalls a call on this
machine; an append is one write. A kill can only tear the last line of a segment, which the
index skips, so every answer that was written before it survives.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything that determines the answer."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._index: dict[str, tuple[Path, int, int]] = {}
        self._lock = threading.Lock()
        self._segment: IO[bytes] | None = None
        self._segment_path: Path | None = None
        self._offset = 0
        if self.root.is_dir():
            for seg in sorted(self.root.glob("seg-*.jsonl")):
                self._scan(seg)

    def __len__(self) -> int:
        return len(self._index)

    def _scan(self, seg: Path) -> None:
        offset = 0
        with seg.open("rb") as f:
            for line in f:
                end = offset + len(line)
                if line.endswith(b"\n"):
                    try:
                        key = orjson.loads(line)["k"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        key = None  # a foreign or damaged line: skip it, keep the rest
                    if key:
                        self._index[key] = (seg, offset, len(line))
                offset = end

    def get(self, key: str) -> dict[str, Any] | None:
        where = self._index.get(key)
        if where is None:
            return None
        seg, offset, length = where
        if self._segment is not None and seg == self._segment_path:
            self._segment.flush()
        with seg.open("rb") as f:
            f.seek(offset)
            return orjson.loads(f.read(length))["v"]

    def put(self, key: str, value: dict[str, Any]) -> None:
        line = orjson.dumps({"k": key, "v": value}) + b"\n"
        with self._lock:
            if self._segment is None:
                self.root.mkdir(parents=True, exist_ok=True)
                self._segment_path = (
                    self.root / f"seg-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{id(self):x}.jsonl"
                )
                self._segment = self._segment_path.open("ab", buffering=0)  # unbuffered: each put is on disk
                self._offset = self._segment_path.stat().st_size
            self._segment.write(line)
            assert self._segment_path is not None
            self._index[key] = (self._segment_path, self._offset, len(line))
            self._offset += len(line)

    def close(self) -> None:
        with self._lock:
            if self._segment is not None:
                self._segment.close()
                self._segment = None
