"""One async LLM client for every OpenAI-compatible backend: structured output, cache, limits, retries."""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import os
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai
import orjson
from openai._constants import RAW_RESPONSE_HEADER
from pydantic import BaseModel, ValidationError

from personaloom.llm.budget import Budget
from personaloom.llm.cache import ResponseCache, cache_key
from personaloom.llm.calls import CALL_HEADER, EMBEDDINGS_CALL, In, LLMCall, Out
from personaloom.llm.limits import RateLimiter
from personaloom.llm.prompts import PromptLibrary, RenderedPrompt
from personaloom.schemas.config import LLMConfig
from personaloom.schemas.manifest import StageUsage

T = TypeVar("T", bound=BaseModel)

REPAIR_MESSAGE = (
    "Your previous answer was not valid: {error}. "
    "Answer again with only the JSON object that matches the schema."
)
NO_KEY = "sk-no-key"  # local servers ignore the key but the client needs a non-empty one
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# A reply body larger than this is a broken or hostile endpoint, not an answer (replies are a few KB,
# an embeddings batch a few MB): it is cut off and the request retried.
MAX_REPLY_BYTES = 32 * 1024 * 1024
# Fresh requests for a reply that is not JSON at all (a torn or garbled body), before the repair turn:
# a transient fault, not the model's answer.
SYNTAX_RETRIES = 2
# The circuit breaker's memory: the share of failed calls is taken over the most recent ones.
BREAKER_SPAN = 100
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


class LLMError(Exception):
    """A fatal endpoint problem (bad key, unknown model, bad request): one line, no secret."""


class _Malformed(Exception):
    """A 200 reply that is not a chat completion: retried like a server fault."""


@dataclass
class FailedCalls:
    """Requests that ran out of retries within one unit of work (a stage on a shard), with the last error."""

    count: int = 0
    last_error: str | None = None


# The unit of work whose failed calls are counted (personaloom.pipeline.run_stage sets one per stage
# and shard): asyncio tasks inherit it, so the calls a stage fans out all report to it.
_failed_calls: contextvars.ContextVar[FailedCalls | None] = contextvars.ContextVar(
    "failed_calls", default=None
)


def count_failed_calls() -> FailedCalls:
    """From here on in this task (and the tasks it starts), count requests that failed after retries."""
    counter = FailedCalls()
    _failed_calls.set(counter)
    return counter


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
    key: str | None = None  # the cache key it is stored under once validated
    entry: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Completion:
    """The parts of a chat completion the client reads, each checked for its type."""

    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int | None


def _tokens(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed(f"usage.{name} is not a count")
    return value


def parse_completion(raw: bytes) -> _Completion:
    """A chat completion body, or `_Malformed` naming what is wrong (any other shape: never a crash)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Malformed("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _Malformed("the body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else choice.get("text")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _Malformed("the message content is not text")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise _Malformed("finish_reason is not text")
    usage = body.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise _Malformed("usage is not an object")
    total = usage.get("total_tokens")
    return _Completion(
        content,
        finish,
        _tokens(usage, "prompt_tokens"),
        _tokens(usage, "completion_tokens"),
        _tokens(usage, "total_tokens") if total is not None else None,
    )


class CircuitBreaker:
    """Stops a run whose endpoint keeps failing, after NeMo Data Designer's early shutdown: once
    `window` calls have completed, a share of failed calls (out of retries) above `rate` among the
    most recent BREAKER_SPAN stops the run."""

    def __init__(self, rate: float, window: int) -> None:
        self.rate, self.window = rate, window
        self.recent: deque[bool] = deque(maxlen=max(BREAKER_SPAN, window))
        self.last_error: str | None = None

    def record(self, ok: bool, error: str | None = None) -> bool:
        """Count one completed call; True when the run must stop."""
        self.recent.append(ok)
        if not ok:
            self.last_error = error
        n = len(self.recent)
        return not ok and self.rate < 1 and n >= self.window and self.recent.count(False) / n > self.rate


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
        checks: Any | None = None,
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
        self._embed_url = str(self.client.base_url).rstrip("/") + "/embeddings"
        self.breaker = CircuitBreaker(config.shutdown_error_rate, config.shutdown_error_window)
        self.cache = cache
        self.prompts = prompts or PromptLibrary(prompt_set=config.prompt_set)
        # stage 5's checks a declared call asks of each answer (stages/filter/checks.AnswerChecks, handed
        # in by the run: llm/ knows no stage); None: answers are not checked, nor drawn again
        self.checks = checks
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
        if call.check is None or self.checks is None or res.value is None:
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

        A reply that is not JSON at all (a torn body) is asked again as a fresh request, up to
        SYNTAX_RETRIES times, before the repair turn. Only a validated answer is cached: a re-run asks
        again for everything that failed. `sampling_seed` (a redraw's) is sent as the request's `seed`;
        None sends none. (Not `seed`: a template variable may have that name.)"""
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
        usage = self.usage[stage]
        reply, value, error = None, None, "endpoint failed after retries"
        for attempt in range(SYNTAX_RETRIES + 1):
            reply = await ask(messages)
            if reply is None:
                return LLMResult(None, "", error=error)
            value, error, syntax = self._validate(reply, schema)
            if value is not None:
                self._store(reply)
                return LLMResult(value, reply.content, cached=reply.cached)
            if not syntax or attempt == SYNTAX_RETRIES:
                break
            usage.retries += 1
        assert reply is not None
        usage.repairs += 1
        messages += [
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": REPAIR_MESSAGE.format(error=error)},
        ]
        second = await ask(messages)
        if second is not None:
            value, error2, _ = self._validate(second, schema)
            if value is not None:
                self._store(second)
                return LLMResult(value, second.content, cached=second.cached)
            error = error2
        usage.failures += 1
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
        if reply.content.strip():  # an empty answer is asked again on a re-run
            self._store(reply)
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
        payload = orjson.dumps(params)

        def parse(raw: bytes) -> tuple[list[list[float]], int]:
            try:
                body = orjson.loads(raw)
                data = sorted(body["data"], key=lambda d: d["index"])
                vectors = [d["embedding"] for d in data]
                tokens = _tokens(body.get("usage") or {}, "prompt_tokens")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise _Malformed("not an embeddings reply") from None
            if len(vectors) != len(texts) or not all(
                isinstance(v, list) and all(isinstance(x, float | int) for x in v) for v in vectors
            ):
                raise _Malformed("wrong number or shape of vectors")
            return vectors, tokens

        got = await self._post(
            self._embed_url,
            payload,
            usage,
            model=model,
            estimate=len(payload) // 4,
            parse=parse,
            call=EMBEDDINGS_CALL,
        )
        if got is None:
            usage.failures += 1
            raise LLMError(
                f"embeddings from {self.endpoint} with model {model!r} failed after retries"
                + (f" (last error: {self.breaker.last_error})" if self.breaker.last_error else "")
            )
        vectors, tokens = got
        usage.prompt_tokens += tokens
        usage.cost_usd += self.budget.spend(tokens, 0, self._price(model))
        if self.cache is not None:
            self.cache.put(key, {"vectors": vectors})
        return vectors

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
    def _validate(reply: _Reply, schema: type[T]) -> tuple[T | None, str | None, bool]:
        """(value, error, whether the reply was not JSON at all)."""
        if reply.finish_reason == "length":
            return None, "the answer was cut off at the token limit; keep every field shorter", False
        text = _json_object(reply.content)
        try:
            return schema.model_validate_json(text), None, False
        except ValidationError as e:
            err = e
        if err.errors()[0]["type"] == "json_invalid":
            # small models put raw newlines inside strings; that much JSON leniency loses nothing
            try:
                return schema.model_validate(json.loads(text, strict=False)), None, False
            except ValueError:
                first = err.errors()[0]
                return None, f"root: {first['msg']}", True
            except ValidationError as e:
                err = e
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "root"
        return None, f"{where}: {first['msg']}", False

    def _store(self, reply: _Reply) -> None:
        """Cache a reply once it is known to be a valid answer."""
        if self.cache is not None and not reply.cached and reply.key is not None:
            self.cache.put(reply.key, reply.entry)

    def _scrub(self, text: str) -> str:
        """The API key, should an endpoint echo it, never reaches the cache, the tables or a log."""
        key = self._api_key
        return text.replace(key, "[redacted]") if len(key) >= 8 and key != NO_KEY and key in text else text

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
        """One chat completion, from the cache or the endpoint; the caller caches it once validated."""
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
            content, finish = hit.get("content"), hit.get("finish_reason")
            if isinstance(content, str) and (finish is None or isinstance(finish, str)):
                usage.cache_hits += 1
                return _Reply(content, finish, cached=True)
        estimate = sum(len(m["content"]) for m in messages) // 4 + max_tokens
        # Serialized once for every attempt, by orjson: the SDK's own encoder (stdlib json) costs more.
        got = await self._post(
            self._chat_url,
            orjson.dumps(params),
            usage,
            model=params["model"],
            estimate=estimate,
            call=rendered.name,
        )
        if got is None:
            return None
        usage.prompt_tokens += got.prompt_tokens
        usage.completion_tokens += got.completion_tokens
        usage.cost_usd += self.budget.spend(
            got.prompt_tokens, got.completion_tokens, self._price(params["model"])
        )
        content = self._scrub(got.content)
        tokens = {"prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens}
        entry = {"content": content, "finish_reason": got.finish_reason, "usage": tokens}
        return _Reply(content, got.finish_reason, cached=False, key=key, entry=entry)

    async def _post(
        self,
        url: str,
        payload: bytes,
        usage: StageUsage,
        *,
        model: str,
        estimate: int,
        parse: Callable[[bytes], Any] = parse_completion,
        call: str,
    ) -> Any:
        """One request with retries: `parse`'s result, or None when retries ran out (a failed call, which
        the circuit breaker and the unit of work's FailedCalls count; the breaker may stop the run).

        `llm.timeout` bounds each attempt as a whole (connecting, waiting, reading), not the gap between
        bytes; the body is read up to MAX_REPLY_BYTES. Any reply that is not what `parse` expects is
        retried like a server fault, never raised. `call` names the request's call in its CALL_HEADER."""
        limited = self.limiter.active
        error = "no attempt"
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
                    async with asyncio.timeout(self.config.timeout):
                        raw = await self._request(url, payload, call)
                usage.calls += 1  # a reply came: a call made (and paid), whatever its shape
                usage.seconds += time.perf_counter() - started
                got = parse(raw)
                if limited:
                    spent = getattr(got, "total_tokens", None)
                    self.limiter.settle(estimate, spent if spent is not None else estimate)
                self.breaker.record(True)
                return got
            except openai.RateLimitError as e:
                error, delay = "429 rate limited", _retry_after(e.response) or _backoff(attempt)
            except openai.APIStatusError as e:
                if e.status_code >= 500 or e.status_code in (408, 409):
                    error, delay = f"HTTP {e.status_code}", _retry_after(e.response) or _backoff(attempt)
                else:
                    raise LLMError(self._fatal_message(e, model)) from None
            except (TimeoutError, openai.APITimeoutError):
                error, delay = f"no reply within {self.config.timeout:g} s", _backoff(attempt)
            except openai.APIConnectionError as e:
                error, delay = f"connection failed ({type(e.__cause__ or e).__name__})", _backoff(attempt)
            except _Malformed as e:
                error, delay = f"malformed reply: {e}", _backoff(attempt)
            if attempt < self.config.max_retries:
                await asyncio.sleep(delay)
        usage.errors += 1
        if (failed := _failed_calls.get()) is not None:
            failed.count += 1
            failed.last_error = error
        if self.breaker.record(False, error):
            raise LLMError(self.failing_message())  # the run stops; a re-run resumes
        return None

    async def _request(self, url: str, payload: bytes, call: str) -> bytes:
        """POST `payload`, its header naming `call`; the body, read at most MAX_REPLY_BYTES (the SDK's own
        auth, errors, client)."""
        # The SDK's raw path: same auth, base URL, errors; it skips the typed-params transform that walks
        # the whole JSON schema (~2 ms CPU a call). Streamed, so a huge body is cut off, not buffered.
        response = await self.client.post(
            url,
            content=payload,
            cast_to=httpx2.Response,
            options={"headers": {RAW_RESPONSE_HEADER: "stream", CALL_HEADER: call}},
        )
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
                raise _Malformed(f"a body of {int(declared):,} bytes")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise _Malformed(f"a body over {MAX_REPLY_BYTES:,} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except httpx2.HTTPError as e:  # the connection broke while reading (or a bad gzip stream)
            raise _Malformed(f"the body broke off ({type(e).__name__})") from None
        finally:
            await response.aclose()

    def failing_message(self) -> str:
        b = self.breaker
        failed = b.recent.count(False)
        return (
            f"{self.endpoint} is failing: {failed} of the last {len(b.recent)} calls failed after "
            f"{self.config.max_retries} retries (last error: {b.last_error}); nothing was published: "
            "fix the endpoint and run the same command to resume"
        )

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
