"""Content-addressed on-disk cache of LLM responses: an identical re-run makes zero calls.

Responses are appended to log segments (`root/seg-*.jsonl`, one per writing process) and indexed in
memory by key at start-up. One small file per response cost ~1 ms of syscalls a call on this
machine; an append is one write. A kill can only tear the last line of a segment, which the
index skips, so every answer that was written before it survives.

Every line carries a digest of its value, checked on read: a damaged entry (a flipped bit, a torn or
foreign line) is a miss, never an answer, and is counted. An answer that cannot be written (disk full,
a read-only folder) is kept in memory for the rest of the run: the run loses nothing, and the first
such failure is reported once with the folder to free.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

logger = logging.getLogger(__name__)


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything that determines the answer."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


class ResponseCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._index: dict[str, tuple[Path, int, int]] = {}
        self._memory: dict[str, dict[str, Any]] = {}  # answers the disk would not take, for this run
        self._lock = threading.Lock()
        self._segment: IO[bytes] | None = None
        self._segment_path: Path | None = None
        self._offset = 0
        self.damaged = 0  # entries skipped as damaged (at start-up and on read)
        self.unwritten = 0  # answers kept only in memory
        self.write_error: str | None = None
        if self.root.is_dir():
            for seg in sorted(self.root.glob("seg-*.jsonl")):
                self._scan(seg)

    def __len__(self) -> int:
        return len(self._index) + len(self._memory)

    def _scan(self, seg: Path) -> None:
        offset = 0
        with seg.open("rb") as f:
            for line in f:
                end = offset + len(line)
                if line.endswith(b"\n"):
                    try:
                        entry = orjson.loads(line)
                        key = entry["k"] if "d" in entry else None  # no digest: written before there were
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        key = None  # a foreign or damaged line: skip it, keep the rest
                        self.damaged += 1
                    if isinstance(key, str):
                        self._index[key] = (seg, offset, len(line))
                offset = end

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        where = self._index.get(key)
        if where is None:
            return None
        seg, offset, length = where
        if self._segment is not None and seg == self._segment_path:
            self._segment.flush()
        try:
            with seg.open("rb") as f:
                f.seek(offset)
                entry = orjson.loads(f.read(length))
            value = entry["v"]
            ok = isinstance(value, dict) and entry.get("d") == _digest(orjson.dumps(value))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            ok, value = False, None
        if not ok:
            self._index.pop(key, None)  # asked again, it is an ordinary miss
            self.damaged += 1
            if self.damaged == 1:
                logger.warning("damaged LLM cache entry in %s skipped: the call is made again", seg)
            return None
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        body = orjson.dumps(value)
        line = b'{"k":' + orjson.dumps(key) + b',"d":"' + _digest(body).encode() + b'","v":' + body + b"}\n"
        with self._lock:
            if self.write_error is not None:
                self._keep(key, value)
                return
            try:
                self._append(key, line)
            except OSError as e:
                self.write_error = f"{e.strerror or e}"
                logger.warning(
                    "cannot write the LLM response cache under %s (%s): answers are kept for this run "
                    "only; free space there so a re-run does not pay for them again",
                    self.root,
                    self.write_error,
                )
                self._keep(key, value)

    def _keep(self, key: str, value: dict[str, Any]) -> None:
        self._memory[key] = value
        self.unwritten += 1

    def _append(self, key: str, line: bytes) -> None:
        if self._segment is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._segment_path = (
                self.root / f"seg-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{id(self):x}.jsonl"
            )
            self._segment = self._segment_path.open("ab", buffering=0)  # unbuffered: each put is on disk
            self._offset = self._segment_path.stat().st_size
        try:
            written = self._segment.write(line)
        except OSError:
            self._truncate()
            raise
        if written != len(line):  # a short write (a full disk): the torn line must not stay
            self._truncate()
            raise OSError(28, "No space left on device")
        assert self._segment_path is not None
        self._index[key] = (self._segment_path, self._offset, len(line))
        self._offset += len(line)

    def _truncate(self) -> None:
        """Cut a partly written line off the segment, so every later append starts on a line of its own."""
        try:
            assert self._segment is not None
            self._segment.truncate(self._offset)
            self._segment.seek(self._offset)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._segment is not None:
                self._segment.close()
                self._segment = None
