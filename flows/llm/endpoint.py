"""Which endpoint a run talks to: flag, then OPENAI_BASE_URL, then the embedded local model."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from personaloom.errors import UserError
from personaloom.llm.client import NO_KEY, endpoint_label
from personaloom.llm.local import EMBEDDED_SLOTS, LocalServer
from personaloom.schemas.config import CREDENTIALS_IN_URL, ROLE_MODELS, LLMConfig, has_credentials

OPENAI_URL = "https://api.openai.com/v1"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str
    config: LLMConfig  # the LLM settings actually used (the embedded model changes a few)
    embedded: bool = False

    def __repr__(self) -> str:  # never print the key
        return (
            f"Endpoint({endpoint_label(self.base_url)}, model={self.config.model!r}, "
            f"embedded={self.embedded})"
        )


def api_key_from_env(key_file: Path | None = None) -> str | None:
    """The key comes only from the environment or a file, never from a flag or a config file."""
    if key_file is not None:
        try:
            return key_file.read_text().strip() or None
        except OSError as e:
            raise UserError(f"cannot read the API key file {key_file}: {e.strerror}") from None
    return os.environ.get("OPENAI_API_KEY") or None


def preflight(base_url: str, api_key: str, *, model: str | None = None, where: str = "--base-url") -> None:
    """Find an unreachable endpoint or a rejected key in seconds, before any work starts. Asked once per
    command: a caller that checked passes `checked` (a build's plan, evaluate and replay) to what it runs."""
    label = endpoint_label(base_url)
    try:
        r = httpx.get(
            f"{base_url.rstrip('/')}/models",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=5,
            # a plain-http endpoint has no certificate to check: skip loading the CA bundle (~20 ms)
            verify=not base_url.startswith("http://"),
        )
    except httpx.HTTPError as e:
        raise UserError(
            f"cannot reach {label} ({type(e).__name__}): "
            "check --base-url / OPENAI_BASE_URL and that the server runs"
        ) from None
    if r.status_code == 401:
        raise UserError(
            f"{label} rejected the API key (401): set OPENAI_API_KEY to a valid key for this endpoint"
        )
    if model is not None:
        _serves(r, model, label, where)


def _serves(r: httpx.Response, model: str, label: str, where: str) -> None:
    """A custom endpoint given no model: refused unless its /models lists the default model (else the
    default, gpt-4o-mini, would be sent there, and recorded and priced as if it answered)."""
    try:
        served = [m["id"] for m in r.json()["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (ValueError, KeyError, TypeError):
        served = []
    if model in served:
        return
    lists = f"it serves {', '.join(served[:5])}{' …' if len(served) > 5 else ''}" if served else ""
    raise UserError(
        f"{where} {label} without --model: {lists or 'its /models lists none'}, not the default {model}: "
        "choose one with --model"
    )


def _base_url(config: LLMConfig) -> str | None:
    """The URL to call: the config's, else $OPENAI_BASE_URL (which holds no credentials either)."""
    url = config.base_url or os.environ.get("OPENAI_BASE_URL") or None
    if url and has_credentials(url):
        raise UserError(f"OPENAI_BASE_URL ({endpoint_label(url)}) {CREDENTIALS_IN_URL}")
    return url


def check_endpoint(config: LLMConfig, *, key_file: Path | None = None, model_given: bool = True) -> None:
    """Pre-flight for a configured endpoint (the embedded one is checked when it starts), in one request:
    reachable, the key accepted and, for a custom endpoint given no model, the default model served."""
    base = _base_url(config)
    key = api_key_from_env(key_file)
    if base or key:
        custom = bool(base) and base.rstrip("/") != OPENAI_URL
        model = None if model_given or not custom else config.model
        where = "--base-url" if config.base_url else "OPENAI_BASE_URL"
        preflight(base or OPENAI_URL, key or NO_KEY, model=model, where=where)


@contextmanager
def open_endpoint(
    config: LLMConfig, *, key_file: Path | None = None, check: bool = True
) -> Iterator[Endpoint]:
    base = _base_url(config)
    key = api_key_from_env(key_file)
    if base or key:
        base = base or OPENAI_URL
        if check:
            preflight(base, key or NO_KEY)
        yield Endpoint(base, key or NO_KEY, config.model_copy(update={"base_url": base}))
        return
    if ignored := [f"{f}={getattr(config, f)}" for f in ROLE_MODELS.values() if getattr(config, f)]:
        logger.warning(
            "the embedded endpoint serves one model: every role uses it (ignored %s)", ", ".join(ignored)
        )
    with LocalServer() as server:
        small = config.model_copy(
            update={
                "model": server.model,
                "user_model": None,  # one local model for every role (LLMConfig.model_for falls back)
                "judge_model": None,
                "base_url": None,  # recorded as embedded, the port is ephemeral
                "structured_output": "json_object",  # llama.cpp's form of schema-constrained output
                "prompt_set": "small",
                "max_field_chars": 160,  # ~35 tokens a field: short, yet room to finish a sentence
                "concurrency": EMBEDDED_SLOTS,  # one request per slot: more would only queue
                "timeout": max(config.timeout, 300.0),
            }
        )
        yield Endpoint(server.base_url, NO_KEY, small, embedded=True)
