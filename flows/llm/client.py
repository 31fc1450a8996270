"""One async LLM client for every OpenAI-compatible backend: structured output, cache, limits, retries."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import openai
import orjson
from pydantic import BaseModel, ValidationError

from personaloom.llm.budget import Budget
from personaloom.llm.cache import ResponseCache, cache_key
from personaloom.llm.calls import In, LLMCall, Out
from personaloom.llm.checks import AnswerChecks
from personaloom.llm.limits import RateLimiter
from personaloom.llm.prompts import PromptLibrary, RenderedPrompt
from personaloom.schemas.config import LLMConfig
from personaloom.schemas.manifest import StageUsage

T = TypeVar("T", bound=BaseModel)

REPAIR_MESSAGE = (
    "Your previous answer was not valid: {error}. "
    "Answer again with only the JSON object that matches the schema."
)
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# The SDK's platform telemetry headers, left out: every header is copied and re-encoded by several
# layers (SDK, httpx, aiohttp) on each call; these seven were ~40% of a request's headers.
_QUIET_HEADERS: dict[str, Any] = {
    h: openai.Omit()
    for h in (
        "X-Stainless-Lang",
        "X-Stainless-Package-Version",
        "X-Stainless-OS",
        "X-Stainless-Arch",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Async",
    )
}
# SDKs with `post(content=...)` send ready-made bytes; older ones take the body as a dict to encode.
_RAW_CONTENT = "content" in inspect.signature(openai.AsyncOpenAI.post).parameters


class LLMError(Exception):
    """A fatal endpoint problem (bad key, unknown model, bad request): one line, no secret."""


@dataclass
class LLMResult(Generic[T]):
    value: T | None
    raw: str
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class _Format:
    """A schema's `response_format`, serialized: as sent (the schema's own field order, which a
    grammar-constrained server writes the answer in) and key-sorted (embedded in the sorted cache key,
    the same bytes as sorting the dict each call gave, so earlier caches still answer)."""

    body: orjson.Fragment
    key: orjson.Fragment


@dataclass
class _Reply:
    content: str
    finish_reason: str | None
    cached: bool


def endpoint_label(base_url: str) -> str:
    """scheme://host[:port]/path with any user:password@ or query string removed."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _retry_after(response: Any) -> float | None:
    """Seconds the server asked us to wait (Retry-After seconds or HTTP date, or retry-after-ms)."""
    headers = getattr(response, "headers", None) or {}
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


HTTP_CLIENTS = ("aiohttp", "httpx")


def _http_client(config: LLMConfig) -> Any:
    """The SDK's own aiohttp client (its documented extra), else its default httpx client.

    PERSONALOOM_HTTP_CLIENT=httpx picks the default outright (e.g. to compare them, bench/client_cpu.py).
    """
    choice = os.environ.get("PERSONALOOM_HTTP_CLIENT") or "aiohttp"
    if choice not in HTTP_CLIENTS:
        raise LLMError(f"PERSONALOOM_HTTP_CLIENT={choice!r}: use one of {', '.join(HTTP_CLIENTS)}")
    if choice == "aiohttp":
        try:
            return openai.DefaultAioHttpClient(timeout=config.timeout)
        except RuntimeError:  # the extra is missing: the SDK's default httpx client
            pass
    return None


def _backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * (0.5 + random.random())


class LLM:
    """Structured and plain calls through `openai.AsyncOpenAI`, shared by every stage of a run."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        base_url: str,
        api_key: str,
        cache: ResponseCache | None,
        prompts: PromptLibrary | None = None,
        checks: AnswerChecks | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint_label(base_url)
        self._api_key = api_key
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=config.timeout,
            http_client=_http_client(config),
            default_headers=_QUIET_HEADERS,
        )
        # Absolute: the SDK joins a relative path to its base URL on every call (a parse and a copy)
        self._chat_url = str(self.client.base_url).rstrip("/") + "/chat/completions"
        self.cache = cache
        self.prompts = prompts or PromptLibrary(prompt_set=config.prompt_set)
        self._checks = checks
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.budget = Budget.for_model(config.model, config.max_tokens, config.max_cost, config.prices)
        # USD per 1M tokens of each model the run may call (roles may have their own model): the spend
        # of a call is priced at the model actually called; an unpriced model fails here under --max-cost
        self.prices = {
            m: Budget.for_model(m, config.max_tokens, config.max_cost, config.prices).price
            for m in config.models()
        }
        self.usage: dict[str, StageUsage] = defaultdict(StageUsage)
        self._sem: asyncio.Semaphore | None = None
        self._formats: dict[type[BaseModel], _Format] = {}

    @property
    def sem(self) -> asyncio.Semaphore:
        # Created lazily so it binds to the loop that runs the calls.
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.concurrency)
        return self._sem

    @property
    def checks(self) -> AnswerChecks:
        """What declared calls' checks ask (personaloom.llm.checks); by default over this run's prompts."""
        if self._checks is None:
            from personaloom.filtering.grounding import ExampleIndex

            self._checks = AnswerChecks(ExampleIndex(self.prompts.examples()))
        return self._checks

    async def aclose(self) -> None:
        await self.client.close()
        if self.cache is not None:
            self.cache.close()

    # ------------------------------------------------------------------ public calls

    async def run(self, call: LLMCall[In, Out], item: In, *, stage: str | None = None) -> Out:
        """A declared call on one input: render, ask, validate (or keep the raw text), check, `call.build`.

        The call's role picks its model (`LLMConfig.model_for`: simulator → user_model, judge →
        judge_model, else model), on the same endpoint. An answer the call's `check` flags is drawn
        again with another sampling seed (`seed` 1, 2, … — part of the cache key, so a re-run replays
        the same draws), at most `llm.redraws` times; the last valid answer is the one built. At
        temperature 0 a redraw would repeat the answer: none is made.
        """
        variables = call.variables_for(item)
        key = stage or call.usage_key
        ask = partial(self._ask, call, item, variables, key)
        res = await ask(None)
        if call.check is None or res.value is None:
            return call.build(item, res)
        temp = self.config.temperature if call.temperature is None else call.temperature
        redraws = self.config.redraws if temp > 0 else 0
        usage = self.usage[key]
        for draw in range(1, redraws + 2):
            if call.check(item, res.value, self.checks) is None:
                break
            if draw > redraws:
                usage.flagged += 1  # handed over as it is: stage 5 drops the row, with its reason
                break
            usage.redraws += 1
            again = await ask(draw)
            if again.value is not None:
                res = again
        return call.build(item, res)

    async def _ask(
        self, call: LLMCall[In, Out], item: In, variables: dict[str, Any], stage: str, seed: int | None
    ) -> LLMResult[Any]:
        tokens, temp = call.tokens_for(item), call.temperature
        model = self.config.model_for(call.role)
        schema = call.response_for(item)
        if schema is None:
            return await self.text(
                call.name,
                stage=stage,
                max_tokens=tokens,
                temperature=temp,
                model=model,
                sampling_seed=seed,
                **variables,
            )
        return await self.structured(
            call.name,
            schema,
            stage=stage,
            max_tokens=tokens,
            temperature=temp,
            model=model,
            sampling_seed=seed,
            **variables,
        )

    async def structured(
        self,
        prompt: str,
        schema: type[T],
        *,
        stage: str,
        max_tokens: int = 512,
        temperature: float | None = None,
        model: str | None = None,
        sampling_seed: int | None = None,
        **variables: Any,
    ) -> LLMResult[T]:
        """Render `prompt`, ask for JSON matching `schema`, validate; one repair turn; raw kept on failure.

        `sampling_seed` (a redraw's) is sent as the request's `seed`; None sends none. (Not `seed`: a
        template variable may have that name.)"""
        rendered = self.prompts.render(prompt, **variables)
        messages = list(rendered.messages)
        fmt = self._response_format(schema)
        ask = partial(
            self._complete,
            rendered,
            stage=stage,
            max_tokens=max_tokens,
            temperature=temperature,
            model=model,
            response_format=fmt,
            seed=sampling_seed,
        )
        reply = await ask(messages)
        if reply is None:
            return LLMResult(None, "", error="endpoint failed after retries")
        value, error = self._validate(reply, schema)
        if value is not None:
            return LLMResult(value, reply.content, cached=reply.cached)
        self.usage[stage].repairs += 1
        messages += [
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": REPAIR_MESSAGE.format(error=error)},
        ]
        second = await ask(messages)
        if second is not None:
            value, error2 = self._validate(second, schema)
            if value is not None:
                return LLMResult(value, second.content, cached=second.cached)
            error = error2
        self.usage[stage].failures += 1
        raw = second.content if second is not None else reply.content
        return LLMResult(None, raw, error=error)

    async def text(
        self,
        prompt: str,
        *,
        stage: str,
        max_tokens: int = 512,
        temperature: float | None = None,
        model: str | None = None,
        sampling_seed: int | None = None,
        **variables: Any,
    ) -> LLMResult[Any]:
        """Plain text answer (chatbot turns, tool simulation)."""
        rendered = self.prompts.render(prompt, **variables)
        reply = await self._complete(
            rendered,
            list(rendered.messages),
            stage=stage,
            max_tokens=max_tokens,
            temperature=temperature,
            model=model,
            seed=sampling_seed,
        )
        if reply is None:
            self.usage[stage].failures += 1
            return LLMResult(None, "", error="endpoint failed after retries")
        return LLMResult(reply.content, reply.content, cached=reply.cached)  # type: ignore[arg-type]

    async def embed(self, texts: list[str], model: str, *, stage: str = "embedding") -> list[list[float]]:
        """Vectors from the endpoint's `/embeddings` API, through the response cache, with retries.

        An endpoint that keeps failing is an LLMError: an agent's memory cannot work without it.
        """
        params = {"model": model, "input": texts, "encoding_format": "float"}
        key = cache_key({"embeddings": params})
        usage = self.usage[stage]
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            usage.cache_hits += 1
            return hit["vectors"]
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                usage.retries += 1
            self.budget.check()
            started = time.perf_counter()
            try:
                async with self.sem:
                    raw = await self.client.post("/embeddings", body=params, cast_to=bytes)
                body = orjson.loads(raw)
                vectors = [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
                if len(vectors) != len(texts):
                    raise ValueError("wrong number of vectors")
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409, 429):
                    raise LLMError(self._fatal_message(e, model)) from None
                await asyncio.sleep(_retry_after(e.response) or _backoff(attempt))
                continue
            except (
                openai.APITimeoutError,
                openai.APIConnectionError,
                orjson.JSONDecodeError,
                KeyError,
                ValueError,
            ):
                await asyncio.sleep(_backoff(attempt))
                continue
            usage.calls += 1
            usage.seconds += time.perf_counter() - started
            tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
            usage.prompt_tokens += tokens
            usage.cost_usd += self.budget.spend(tokens, 0, self._price(model))
            if self.cache is not None:
                self.cache.put(key, {"vectors": vectors})
            return vectors
        usage.failures += 1
        raise LLMError(f"embeddings from {self.endpoint} with model {model!r} failed after retries")

    # ------------------------------------------------------------------ internals

    def _response_format(self, schema: type[BaseModel]) -> _Format:
        """The `response_format` of `schema`, serialized once per schema and run (not on every call)."""
        fmt = self._formats.get(schema)
        if fmt is None:
            js = schema.model_json_schema()
            if self.config.max_field_chars:
                js = clamp_schema(js, self.config.max_field_chars, self.config.max_list_items)
            if self.config.structured_output == "json_object":
                spec: dict[str, Any] = {"type": "json_object", "schema": js}
            else:
                spec = {
                    "type": "json_schema",
                    "json_schema": {"name": schema.__name__, "schema": js, "strict": False},
                }
            fmt = self._formats[schema] = _Format(
                orjson.Fragment(orjson.dumps(spec)),
                orjson.Fragment(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)),
            )
        return fmt

    @staticmethod
    def _validate(reply: _Reply, schema: type[T]) -> tuple[T | None, str | None]:
        if reply.finish_reason == "length":
            return None, "the answer was cut off at the token limit; keep every field shorter"
        text = _json_object(reply.content)
        try:
            return schema.model_validate_json(text), None
        except ValidationError as e:
            err = e
        if err.errors()[0]["type"] == "json_invalid":
            # small models put raw newlines inside strings; that much JSON leniency loses nothing
            try:
                return schema.model_validate(json.loads(text, strict=False)), None
            except ValueError:
                pass
            except ValidationError as e:
                err = e
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "root"
        return None, f"{where}: {first['msg']}"

    async def _complete(
        self,
        rendered: RenderedPrompt,
        messages: list[dict[str, str]],
        *,
        stage: str,
        max_tokens: int,
        temperature: float | None = None,
        model: str | None = None,
        response_format: _Format | None = None,
        seed: int | None = None,
    ) -> _Reply | None:
        params: dict[str, Any] = {
            "model": model or self.config.model,
            "messages": messages,
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:  # a redraw: its own request, so its own cache entry
            params["seed"] = seed
        keyed = {"template": rendered.name, "template_hash": rendered.template_hash, **params}
        if response_format is not None:
            params["response_format"] = response_format.body
            keyed["response_format"] = response_format.key
        key = cache_key(keyed)
        usage = self.usage[stage]
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            usage.cache_hits += 1
            return _Reply(hit["content"], hit.get("finish_reason"), cached=True)
        body = await self._post(params, usage)
        if body is None:
            return None
        choice = body["choices"][0]
        content = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        tokens = body.get("usage") or {}
        prompt_t, completion_t = (
            int(tokens.get("prompt_tokens") or 0),
            int(tokens.get("completion_tokens") or 0),
        )
        usage.prompt_tokens += prompt_t
        usage.completion_tokens += completion_t
        usage.cost_usd += self.budget.spend(prompt_t, completion_t, self._price(params["model"]))
        reply = _Reply(content, choice.get("finish_reason"), cached=False)
        if self.cache is not None:
            self.cache.put(key, {"content": content, "finish_reason": reply.finish_reason, "usage": tokens})
        return reply

    async def _post(self, params: dict[str, Any], usage: StageUsage) -> dict[str, Any] | None:
        """One request with retries; returns the parsed body, None when retries ran out."""
        estimate = sum(len(m["content"]) for m in params["messages"]) // 4 + params["max_tokens"]
        # Serialized once for every attempt, by orjson: the SDK's own encoder (stdlib json) costs more.
        payload = orjson.dumps(params)
        limited = self.limiter.active
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                usage.retries += 1
            self.budget.check()
            if limited:
                await self.limiter.acquire(estimate)
            delay: float | None = None
            started = time.perf_counter()
            try:
                async with self.sem:
                    # The SDK's documented raw-request path: same auth, base URL, errors and timeouts, but it
                    # skips the typed-params transform that walks the whole JSON schema (~2 ms CPU a call).
                    raw = await (
                        self.client.post(self._chat_url, content=payload, cast_to=bytes)
                        if _RAW_CONTENT
                        else self.client.post(self._chat_url, body=orjson.loads(payload), cast_to=bytes)
                    )
                body = orjson.loads(raw)
                usage.calls += 1
                usage.seconds += time.perf_counter() - started
                spent = int((body.get("usage") or {}).get("total_tokens") or estimate)
                if limited:
                    self.limiter.settle(estimate, spent)
                if body.get("choices"):
                    return body
                delay = _backoff(attempt)  # 200 with no choices: treat as a transient server fault
            except openai.RateLimitError as e:
                delay = _retry_after(e.response) or _backoff(attempt)
            except openai.APIStatusError as e:
                if e.status_code >= 500 or e.status_code in (408, 409):
                    delay = _retry_after(e.response) or _backoff(attempt)
                else:
                    raise LLMError(self._fatal_message(e, params["model"])) from None
            except (openai.APITimeoutError, openai.APIConnectionError):
                delay = _backoff(attempt)
            except orjson.JSONDecodeError:
                delay = _backoff(attempt)
            if attempt < self.config.max_retries:
                await asyncio.sleep(delay)
        return None

    def _price(self, model: str) -> tuple[float, float]:
        """USD per 1M tokens of `model`: known for every model of the config, else the run's price."""
        return self.prices.get(model, self.budget.price)

    def _model_flag(self, model: str) -> str:
        """The option(s) that chose `model`, for the one-line error."""
        c = self.config
        flags = [
            f for f, m in (("--user-model", c.user_model), ("--judge-model", c.judge_model)) if m == model
        ]
        return " / ".join(flags) if model != c.model and flags else "--model"

    def _fatal_message(self, e: openai.APIStatusError, model: str) -> str:
        status = e.status_code
        if status == 401:
            return (
                f"{self.endpoint} rejected the API key (401): "
                "set OPENAI_API_KEY to a valid key for this endpoint"
            )
        if status == 403:
            return f"{self.endpoint} refused access (403): check the key's permissions for model {model!r}"
        if status == 404:
            return (
                f"model {model!r} not found at {self.endpoint} (404): "
                f"check {self._model_flag(model)} or --base-url"
            )
        detail = str(getattr(e, "message", "") or "").replace(self._api_key, "***") if self._api_key else ""
        return f"{self.endpoint} answered {status}: {detail[:200]}".rstrip(": ")


def clamp_schema(node: Any, max_chars: int, max_items: int) -> Any:
    """Tighten string and list bounds in the schema sent to the server (not the one we validate with).

    Under grammar-constrained decoding (llama.cpp) the bounds become the grammar: a small model then
    cannot ramble past its token budget, and every field still gets written.
    """
    if isinstance(node, list):
        return [clamp_schema(n, max_chars, max_items) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: clamp_schema(v, max_chars, max_items) for k, v in node.items()}
    if out.get("type") == "string" and "enum" not in out:
        out["maxLength"] = min(out.get("maxLength", max_chars), max_chars)
        out["minLength"] = min(out.get("minLength", 0), out["maxLength"])
    if out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", max_items), max_items)
        out["minItems"] = min(out.get("minItems", 0), out["maxItems"])
    return out


def _json_object(text: str) -> str:
    """The JSON object inside a reply: models sometimes wrap it in prose or ``` fences."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if start != -1 and end > start else text
