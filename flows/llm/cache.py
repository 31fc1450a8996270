"""Content-addressed on-disk cache of LLM responses: an identical re-run makes zero calls."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything that determines the answer."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    """One small JSON file per response under root/<2 hex>/<key>.json, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return orjson.loads(self._path(key).read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None  # a torn file from a crash before rename cannot happen, but a foreign one can

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(value))
        os.replace(tmp, path)  # readers see the whole file or none: a kill mid-write loses only this call
