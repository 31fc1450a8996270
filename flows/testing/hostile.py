"""A hostile OpenAI-compatible endpoint on loopback, for tests: it forwards to a `FakeOpenAI` and breaks
the chat replies it is told to break (server errors, malformed envelopes, bodies that are not UTF-8, a
slow drip of bytes, an echo of the caller's Authorization header).

`modes` are taken in order for the first chat requests, then `then` applies to every later one; "ok"
forwards the reply untouched. `/models` is always forwarded (the pre-flight passes: the breakage comes
mid-run, as an outage does).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from personaloom.testing.fake_openai import FakeOpenAI

# 200 replies whose body is not a chat completion a client can read as one
ENVELOPES: dict[str, bytes] = {
    "array": b"[1, 2, 3]",
    "choices_str": b'{"choices": ["str"]}',
    "content_int": b'{"choices": [{"message": {"role": "assistant", "content": 7}}]}',
    "choices_obj": b'{"choices": {}}',
    "usage_str": b'{"choices": [{"message": {"content": "{}"}}], "usage": "lots"}',
    "tokens_str": b'{"choices": [{"message": {"content": "{}"}}], "usage": {"prompt_tokens": "ten"}}',
    "bad_utf8": b'{"choices": [{"message": {"content": "\xff\xfe\xfa"}}]}',
    "torn": b'{"choices": [{"message": {"role": "assistant", "content": "{\\"verd',  # cut off
}
# a well-formed envelope whose JSON answer is cut off: a structured call's answer is then not JSON (a
# plain-text call cannot tell such an answer from any other, so its replies are forwarded untouched)
BROKEN_ANSWER = b'{"choices": [{"message": {"content": "{\\"broken\\": "}, "finish_reason": "stop"}]}'
MODES = {"ok", "500", "drip", "echo_auth", "broken_json", *ENVELOPES}


class HostileEndpoint:
    def __init__(
        self,
        fake: FakeOpenAI,
        modes: list[str] | None = None,
        then: str = "ok",
        once_per_request: bool = False,
    ) -> None:
        """`modes` are served in arrival order, then `then`. `once_per_request`: a request body already
        faulted once is answered (a transient fault hits a call once; without it, a call re-asked under
        load can draw fault after fault until its client gives up on it)."""
        unknown = {*(modes or []), then} - MODES
        if unknown:
            raise ValueError(f"unknown modes: {sorted(unknown)}")
        self.fake, self.then = fake, then
        self._modes = list(modes or [])
        self._lock = threading.Lock()
        self.chat_requests = 0
        self.once_per_request = once_per_request
        self._faulted: set[bytes] = set()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def next_mode(self, body: bytes = b"") -> str:
        with self._lock:
            self.chat_requests += 1
            if self.once_per_request:
                key = hashlib.sha256(body).digest()
                if key in self._faulted:
                    return "ok"
                self._faulted.add(key)
            return self._modes.pop(0) if self._modes else self.then

    def __enter__(self) -> Self:
        handler = _handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _with_echo(content: str, echo: str) -> str:
    """`echo` inside the first string value of a JSON answer (it stays valid), or before a text one."""
    try:
        value = json.loads(content)
    except ValueError:
        return f"{echo} {content}"
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                value[k] = f"{echo} {v}"
                return json.dumps(value)
    return content


def _handler(endpoint: HostileEndpoint) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(endpoint.fake.base_url)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _forward(self, body: bytes) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            path = upstream.path.rstrip("/") + self.path.removeprefix("/v1")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            conn.request(self.command, path, body=body or None, headers=headers)
            res = conn.getresponse()
            data = res.read()
            conn.close()
            return res.status, data

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(*self._forward(b""))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.endswith("/chat/completions"):
                self._send(*self._forward(body))
                return
            mode = endpoint.next_mode(body)
            if mode == "500":
                self._send(500, b'{"error": {"message": "upstream down", "type": "server_error"}}')
            elif mode in ENVELOPES:
                self._send(200, ENVELOPES[mode])
            elif mode == "broken_json" and b'"response_format"' in body:
                self._send(200, BROKEN_ANSWER)
            elif mode == "drip":  # a valid reply, one byte every 2 s: only a total deadline ends it
                status, data = self._forward(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(2)
                except OSError:
                    pass  # the client gave up: as it should
            elif mode == "echo_auth":  # the caller's credentials, back inside the answer
                status, data = self._forward(body)
                reply = json.loads(data)
                auth = self.headers.get("Authorization", "")
                message = reply["choices"][0]["message"]
                message["content"] = _with_echo(message["content"], auth)
                self._send(status, json.dumps(reply).encode())
            else:
                self._send(*self._forward(body))

    return Handler
