"""Token counts of what was said: a real tokenizer where one installs offline, else an estimate.

The real one is Gemma 3's (the embedded model's vocabulary, read by llama.cpp without its weights) when the
`local` extra is installed; elsewhere 4 characters a token, which undercounts scripts without spaces
(Chinese runs about one token a character). `tokenizer()` names the one that counted; the manifest
records it. `PERSONALOOM_TOKENIZER=estimate` forces the estimate (counts comparable across installs).
"""

from __future__ import annotations

import os
import threading
from functools import cache, lru_cache
from typing import Any

ESTIMATE = "estimate (4 characters a token)"
GEMMA = "gemma-3 (llama.cpp, vocabulary only)"
_lock = threading.Lock()  # llama.cpp's tokenizer is called from one thread at a time


@cache
def _vocab() -> Any | None:
    if os.environ.get("PERSONALOOM_TOKENIZER", "").strip().lower() == "estimate":
        return None
    try:
        import llama_cpp as lc
        from llama_cpp._internals import LlamaModel

        from personaloom.llm.local import gguf_path

        params = lc.llama_model_default_params()
        params.vocab_only = True  # the vocabulary and its merges: no weights are read
        return LlamaModel(path_model=str(gguf_path()), params=params, verbose=False)
    except Exception:  # not installed, or a broken install: count by estimate rather than fail a build
        return None


def tokenizer() -> str:
    """The name of what `count` uses."""
    return GEMMA if _vocab() is not None else ESTIMATE


@lru_cache(maxsize=1 << 16)  # a history is counted again as it grows or is capped
def count(text: str) -> int:
    """Tokens of `text` (no begin-of-text marker)."""
    if not text:
        return 0
    model = _vocab()
    if model is None:
        return len(text) // 4
    import llama_cpp as lc

    data = text.encode("utf-8")
    # llama.cpp's own tokenizer, called as LlamaModel.tokenize calls it, with room for the text's tokens
    # (at most one a byte) rather than a zeroed buffer of the model's whole context on every call, and
    # only the count read back
    room = len(data) + 1
    with _lock:
        n = lc.llama_tokenize(model.vocab, data, len(data), (lc.llama_token * room)(), room, False, False)
        if n < 0:  # more tokens than bytes (never, for this vocabulary): the room it asks for
            n = lc.llama_tokenize(model.vocab, data, len(data), (lc.llama_token * -n)(), -n, False, False)
    if n < 0:
        raise RuntimeError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
    return n
