"""The embedded model's server: llama.cpp behind OpenAI's `/v1/chat/completions`, on loopback.

Why not llama-cpp-python's own server: it runs one request at a time, re-reads the whole prompt unless
the previous request shared it, and applies a JSON grammar to every one of Gemma 3's 262k tokens at
every step (~60 ms a token on this machine, ten times the model's own decode). This server, in the
manner of llama.cpp's `llama-server`:

- runs up to `slots` requests in one batch: each decode step feeds one token per generating request,
  and prompts are read in the same batches (continuous batching);
- keeps each slot's tokens in the KV cache, and gives a new request the free slot that shares the
  longest prefix with its prompt, so a template's fixed preamble is read once, not once per call;
- samples without the grammar first and asks the grammar about that one token; when the grammar
  rejects it, draws again among the allowed of the 256 likeliest tokens, and filters the full
  vocabulary only when none of those is allowed (`Sampler.sample`).

It is started by `personaloom.llm.local.LocalServer` as `python -m personaloom.llm.embedded_server`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp as lc
import numpy as np
from llama_cpp import llama_grammar
from llama_cpp._internals import LlamaModel

from personaloom.paths import PROMPTS_DIR

CHAT_TEMPLATE = PROMPTS_DIR / "chat" / "alpaca.j2"
# llama_token_attr bits
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_CONTROL, ATTR_USER_DEFINED = 1 << 0, 1 << 1, 1 << 3, 1 << 4
TOP_CANDIDATES = 256  # a rejected token's redraw looks here first: 1/1000 of the vocabulary's grammar cost
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)


LAX_CHAR = r'char ::= [^"\\] |'
STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


class BadRequest(ValueError):
    """A request this server cannot serve: answered with HTTP 400 and OpenAI's error body."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- requests


@dataclass
class Job:
    """One chat completion: its prompt tokens and sampling settings in, text and counts out."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    seed: int
    grammar: str | None
    out: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    error: str | None = None
    status: int = 200  # 400 for a request it cannot serve, 500 when llama.cpp failed
    done: threading.Event = field(default_factory=threading.Event)


class Sampler:
    """Per-job sampling: a repetition-penalty/top-k/top-p/temperature chain, and a GBNF grammar.

    The chain draws over the raw logits and the grammar is asked about that one token (a
    single-candidate `apply`). Only a rejected token costs more: the chain draws again among the
    allowed tokens of the `TOP_CANDIDATES` most likely ones, and over the whole vocabulary only when
    none of those is allowed. llama.cpp's own server samples the same way; llama-cpp-python's filters
    all 262k tokens through the grammar at every step.
    """

    def __init__(self, vocab: Any, ids: np.ndarray, job: Job) -> None:
        self.ids = ids  # 0..n_vocab-1, shared
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        # llama-cpp-python's server defaults, which the embedded build's prompts were tuned with
        lc.llama_sampler_chain_add(self.chain, lc.llama_sampler_init_penalties(len(ids), 64, 1.1, 0.0, 0.0))
        if job.temperature <= 0:
            lc.llama_sampler_chain_add(self.chain, lc.llama_sampler_init_greedy())
        else:
            for s in (
                lc.llama_sampler_init_top_k(40),
                lc.llama_sampler_init_top_p(0.95, 1),
                lc.llama_sampler_init_min_p(0.05, 1),
                lc.llama_sampler_init_temp(job.temperature),
                lc.llama_sampler_init_dist(job.seed & 0xFFFFFFFF),
            ):
                lc.llama_sampler_chain_add(self.chain, s)
        self.grammar = None
        if job.grammar is not None:
            self.grammar = lc.llama_sampler_init_grammar(vocab, job.grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise BadRequest("response_format: the JSON schema did not compile to a grammar")
        self.one = np.zeros(1, dtype=TOKEN_DATA)
        self.top = np.zeros(TOP_CANDIDATES, dtype=TOKEN_DATA)
        self.redraws = 0

    def sample(self, logits: np.ndarray, vocab_buf: np.ndarray) -> int:
        """The next token from one position's logits; `vocab_buf` is scratch space of n_vocab entries.

        The chain sees only the `TOP_CANDIDATES` highest logits: its first step, the repetition
        penalty, only lowers logits, and top-k keeps 40, so the rest could never be drawn."""
        top = np.argpartition(logits, -TOP_CANDIDATES)[-TOP_CANDIDATES:]
        token = self._draw(_fill(self.top, top, logits[top]), grammar=False)
        if self.grammar is not None and self._draw(_fill(self.one, [token], 0.0), grammar=True) is None:
            self.redraws += 1
            token = self._draw(_fill(self.top, top, logits[top]), grammar=True)
            if token is None:  # none of the likeliest is allowed: filter the whole vocabulary
                token = self._draw(_fill(vocab_buf, self.ids, logits), grammar=True)
            if token is None:
                raise RuntimeError("the grammar allows no token here")
        lc.llama_sampler_accept(self.chain, token)  # the repetition penalty's history
        if self.grammar is not None:
            lc.llama_sampler_accept(self.grammar, token)
        return token

    def _draw(self, cands: np.ndarray, *, grammar: bool) -> int | None:
        """With `grammar`: None when the grammar allows none of `cands` (a one-entry `cands` is only
        checked, not drawn from); else the chain's pick among what is left."""
        arr = lc.llama_token_data_array(
            data=cands.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)),
            size=len(cands),
            selected=-1,
            sorted=False,
        )
        if grammar:
            lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
            if not np.isfinite(cands["logit"]).any():
                return None
            if len(cands) == 1:
                return int(cands["id"][0])
        lc.llama_sampler_apply(self.chain, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        for s in (self.chain, self.grammar):
            if s:
                lc.llama_sampler_free(s)
        self.chain = self.grammar = None


@dataclass
class Slot:
    """One sequence of the KV cache: the tokens it holds, and the job it is running, if any."""

    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose keys/values are in the cache
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to read
    next_token: int | None = None  # sampled, not yet fed
    sampler: Sampler | None = None
    last_used: float = 0.0


def _fill(buf: np.ndarray, ids: Any, logits: Any) -> np.ndarray:
    """Candidates for llama.cpp's samplers, which reorder them in place: every field is rewritten."""
    buf["id"], buf["logit"], buf["p"] = ids, logits, 0.0
    return buf


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


# ---------------------------------------------------------------- the engine


class Engine:
    """Owns the model and its context; one thread runs every decode (llama.cpp is not re-entrant)."""

    def __init__(self, model_path: str, *, slots: int, ctx_per_slot: int, threads: int, batch: int) -> None:
        lc.llama_backend_init()
        self.model = LlamaModel(path_model=model_path, params=lc.llama_model_default_params(), verbose=False)
        self.vocab = self.model.vocab
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        params = lc.llama_context_default_params()
        params.n_ctx = slots * ctx_per_slot
        params.n_batch = params.n_ubatch = batch
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # one stream a slot: a token attends over its own sequence only
        params.swa_full = True  # keep sliding-window layers whole, so a cached prefix can be reused
        self.ctx = lc.llama_init_from_model(self.model.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = lc.llama_get_memory(self.ctx)
        self.ctx_per_slot = ctx_per_slot
        self.batch_size = batch
        self.batch = lc.llama_batch_init(batch, 0, 1)
        self.slots = [Slot(seq=i) for i in range(slots)]
        self.candidates = np.zeros(self.n_vocab, dtype=TOKEN_DATA)  # samplers' scratch, reused
        self.ids = np.arange(self.n_vocab, dtype=np.int32)
        self.banned = self._markup_tokens()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.stats = {"jobs": 0, "prompt_tokens": 0, "prompt_tokens_read": 0, "completion_tokens": 0}
        self.stats |= {
            "grammar_redraws": 0,
            "decode_steps": 0,
            "decode_seconds": 0.0,
            "sample_seconds": 0.0,
        }
        self.thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)

    def _markup_tokens(self) -> np.ndarray:
        """Tokens never drawn: control and unused ones (but end-of-generation), and Gemma's user-defined
        markup (`<start_of_image>`, `<td>`, `[multimodal]`); a base model sprinkles them into text."""
        out = []
        for t in range(self.n_vocab):
            attr = lc.llama_vocab_get_attr(self.vocab, t)
            if lc.llama_vocab_is_eog(self.vocab, t):
                continue
            if attr & (ATTR_UNKNOWN | ATTR_UNUSED | ATTR_CONTROL):
                out.append(t)
            elif attr & ATTR_USER_DEFINED and self.model.token_to_piece(t, special=True).strip(b"\0 \t\r\n"):
                out.append(t)
        return np.array(out, dtype=np.int64)

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens).decode("utf-8", errors="replace")

    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> Job:
        if len(job.prompt) >= self.ctx_per_slot:
            raise BadRequest(
                f"the prompt is {len(job.prompt)} tokens; this model's context is {self.ctx_per_slot}",
                "context_length_exceeded",
            )
        job.max_tokens = max(1, min(job.max_tokens, self.ctx_per_slot - len(job.prompt)))
        self.queue.put(job)
        return job

    # -- the loop

    def _run(self) -> None:
        waiting: deque[Job] = deque()  # arrived, no free slot yet: served in arrival order
        while True:
            busy = any(s.job is not None for s in self.slots)
            arrived: list[Job | None] = []
            if not busy and not waiting:
                arrived.append(self.queue.get())  # idle: sleep until a request comes
            while True:
                try:
                    arrived.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for job in arrived:
                if job is None:
                    return
                waiting.append(job)
            try:
                while waiting and self._assign(waiting[0]):
                    waiting.popleft()
                if any(s.job is not None for s in self.slots):
                    self._step()
            except Exception as e:  # a bug must fail the requests in flight, not hang them forever
                for slot in self.slots:
                    if slot.job is not None:
                        self._finish(slot, error=f"embedded server error: {type(e).__name__}: {e}")

    def _assign(self, job: Job) -> bool:
        free = [s for s in self.slots if s.job is None]
        if not free:
            return False
        slot = max(free, key=lambda s: (common_prefix(s.cached, job.prompt), -s.last_used))
        keep = min(common_prefix(slot.cached, job.prompt), len(job.prompt) - 1)  # re-read >= 1 token
        if keep < len(slot.cached) and not lc.llama_memory_seq_rm(self.memory, slot.seq, keep, -1):
            lc.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            keep = 0
        try:
            slot.sampler = Sampler(self.vocab, self.ids, job)
        except Exception as e:  # BadRequest: the schema's grammar; anything else is ours
            job.status = 400 if isinstance(e, BadRequest) else 500
            job.error = str(e) if isinstance(e, BadRequest) else f"embedded server error: {e}"
            job.done.set()
            return True
        slot.cached = slot.cached[:keep]
        slot.pending = job.prompt[keep:]
        slot.job, slot.next_token = job, None
        self.stats["jobs"] += 1
        self.stats["prompt_tokens"] += len(job.prompt)
        self.stats["prompt_tokens_read"] += len(slot.pending)
        return True

    def _step(self) -> None:
        """One llama_decode: a token for every generating slot, then prompt chunks while room is left."""
        b, n = self.batch, 0
        outputs: list[tuple[Slot, int]] = []

        def add(slot: Slot, token: int, logits: bool) -> None:
            nonlocal n
            b.token[n], b.pos[n], b.n_seq_id[n] = token, len(slot.cached), 1
            b.seq_id[n][0], b.logits[n] = slot.seq, int(logits)
            slot.cached.append(token)
            if logits:
                outputs.append((slot, n))
            n += 1

        for slot in self.slots:
            if slot.job is not None and slot.next_token is not None:
                add(slot, slot.next_token, True)
                slot.next_token = None
        for slot in self.slots:
            if slot.job is None or not slot.pending or n >= self.batch_size:
                continue
            chunk, slot.pending = slot.pending[: self.batch_size - n], slot.pending[self.batch_size - n :]
            for i, token in enumerate(chunk):
                add(slot, token, i == len(chunk) - 1 and not slot.pending)
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = lc.llama_decode(self.ctx, b)
        t1 = time.perf_counter()
        self.stats["decode_steps"] += 1
        self.stats["decode_seconds"] += t1 - t0
        if rc != 0:
            for slot, _ in outputs:
                self._finish(slot, error=f"llama_decode failed with code {rc}")
            return
        for slot, idx in outputs:
            self._sample(slot, idx)
        self.stats["sample_seconds"] += time.perf_counter() - t1

    def _sample(self, slot: Slot, idx: int) -> None:
        job, sampler = slot.job, slot.sampler
        assert job is not None and sampler is not None
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
        logits[self.banned] = -np.inf
        try:
            token = sampler.sample(logits, self.candidates)
        except RuntimeError as e:
            self._finish(slot, error=str(e))
            return
        if lc.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, reason="stop")
            return
        job.out.append(token)
        if len(job.out) >= job.max_tokens:
            self._finish(slot, reason="length")
        else:
            slot.next_token = token

    def _finish(self, slot: Slot, *, reason: str = "stop", error: str | None = None) -> None:
        job, sampler = slot.job, slot.sampler
        assert job is not None
        job.finish_reason, job.error = reason, error
        if error is not None:
            job.status = 500
        self.stats["completion_tokens"] += len(job.out)
        if sampler is not None:
            self.stats["grammar_redraws"] += sampler.redraws
            sampler.close()
        slot.job, slot.sampler, slot.pending, slot.next_token = None, None, [], None
        slot.last_used = time.monotonic()
        if error is not None:  # the cache may hold a half-read batch: start this slot afresh
            lc.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            slot.cached = []
        job.done.set()


# ---------------------------------------------------------------- OpenAI's API over HTTP


class ChatFormat:
    """Chat messages to the one prompt text the model continues (`prompts/chat/alpaca.j2`)."""

    def __init__(self, path: Path = CHAT_TEMPLATE) -> None:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
        self.template = env.from_string(path.read_text(encoding="utf-8"))

    def render(self, messages: list[dict[str, Any]]) -> str:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise BadRequest(f"messages[{i}]: role must be system, user or assistant")
            if not isinstance(m.get("content"), str):
                raise BadRequest(f"messages[{i}].content: this server takes text content only")
        return self.template.render(messages=messages)


def grammar_for(fmt: Any, cache: dict[str, str]) -> str | None:
    """GBNF for a `response_format`: json_object (with or without a schema) or json_schema."""
    if fmt is None or fmt == {"type": "text"}:
        return None
    if not isinstance(fmt, dict):
        raise BadRequest("response_format must be an object")
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
    elif kind == "json_object":
        schema = fmt.get("schema")
    else:
        raise BadRequest(f"response_format.type {kind!r} is not supported: use json_object or json_schema")
    text = json.dumps(schema if schema is not None else {"type": "object"}, sort_keys=False)
    if text not in cache:
        try:
            gbnf = llama_grammar.json_schema_to_gbnf(text)
        except Exception as e:  # the converter raises bare exceptions on schemas it cannot express
            raise BadRequest(f"response_format schema: {e}") from None
        # JSON forbids raw control characters in strings; the converter's `char` lets them through, and
        # a reply with a raw newline in a string fails to parse: constrain what must be constrained
        cache[text] = gbnf.replace(LAX_CHAR, STRICT_CHAR)
    return cache[text]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per request would drown the log that LocalServer shows on failure

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send(status, {"error": {"message": message, "type": kind, "code": code, "param": None}})

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.server.alias, "object": "model", "created": 0, "owned_by": "personaloom"}
            self._send(200, {"object": "list", "data": [model]})
        elif self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send(200, {"status": "ok", **self.server.engine.stats})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}: this server answers /v1/chat/completions")
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            job = self._job(body, zlib.crc32(raw))
        except json.JSONDecodeError:
            self._error(400, "the request body is not valid JSON")
            return
        except BadRequest as e:
            self._error(400, str(e), e.code)
            return
        job.done.wait()
        if job.error is not None:
            self._error(job.status, job.error)
            return
        text = self.server.engine.detokenize(job.out)
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.server.alias,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": job.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(job.prompt),
                    "completion_tokens": len(job.out),
                    "total_tokens": len(job.prompt) + len(job.out),
                },
            },
        )

    def _job(self, body: dict[str, Any], default_seed: int) -> Job:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        if body.get("stream"):
            raise BadRequest("stream is not supported by the embedded server")
        if (n := body.get("n", 1)) != 1:
            raise BadRequest(f"n={n} is not supported: one choice a request")
        prompt = self.server.engine.tokenize(self.server.chat.render(messages))
        try:
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 512)
            temperature = float(body["temperature"]) if body.get("temperature") is not None else 1.0
            # no seed given: one from the request's bytes, so the same request draws the same reply when
            # its prompt is read alike (a cached prefix changes the batch shape, and with it the last bits)
            seed = int(body["seed"]) if body.get("seed") is not None else default_seed
        except (TypeError, ValueError) as e:
            raise BadRequest(f"max_tokens, temperature and seed must be numbers ({e})") from None
        grammar = grammar_for(body.get("response_format"), self.server.grammars)
        job = Job(prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, grammar=grammar)
        return self.server.engine.submit(job)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, alias: str) -> None:
        super().__init__(address, Handler)
        self.engine, self.alias = engine, alias
        self.chat = ChatFormat()
        self.grammars: dict[str, str] = {}  # schema text -> GBNF: a run sends few distinct schemas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m personaloom.llm.embedded_server", description=__doc__)
    p.add_argument("--model", required=True, help="path of a GGUF file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--alias", default="local", help="the model name /v1/models reports")
    p.add_argument("--slots", type=int, default=1, help="requests decoded together in one batch")
    p.add_argument("--ctx", type=int, default=4096, help="context tokens of each slot")
    p.add_argument("--batch", type=int, default=512, help="tokens per llama_decode")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = p.parse_args(argv)
    if not Path(a.model).is_file():
        print(f"--model {a.model}: no such file", file=sys.stderr)
        return 2
    engine = Engine(a.model, slots=a.slots, ctx_per_slot=a.ctx, threads=a.threads, batch=a.batch).start()
    server = Server((a.host, a.port), engine, a.alias)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving {a.alias} on http://{a.host}:{server.server_port}/v1 ({a.slots} slots)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
