"""A lean HTTP/1.1 keep-alive transport under the OpenAI SDK's httpx client.

The SDK's documented way to change how requests travel is `http_client=` with an httpx client whose
`transport=` is ours; the SDK still builds every request, authenticates, maps errors and parses. What
this replaces is the aiohttp (or httpcore) layer: a profiled build spent ~0.25 ms of CPU a call there,
for requests that are one small JSON body out and one buffered JSON body back. Here a call is one
`write` of the head and body and one parse of the reply as it arrives, on an `asyncio.Protocol`.

What it does not do, and who does: proxies (httpx mounts its own transport for the env's proxies
before ours is asked), HTTP/2, streaming a reply while it arrives (a reply is buffered whole, then
handed over; `stream=True` still works, just not incrementally).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict
from typing import Any

import httpx2
import openai

# Idle connections older than this are dropped, not reused: servers close idle keep-alive
# connections after ~5 s (uvicorn's default), and a request sent on a half-closed one fails.
KEEPALIVE_EXPIRY = 4.0
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_CRLF2 = b"\r\n\r\n"


class _Reply:
    """One response being parsed: status, headers, then the body by length, chunks, or until close."""

    __slots__ = ("status", "reason", "headers", "length", "chunked", "keep")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.length = -1
        self.chunked = False
        self.keep = True


class _Connection(asyncio.Protocol):
    """One socket, one request at a time; the reply is complete when its body is."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._reply: _Reply | None = None
        self._waiter: asyncio.Future[tuple[_Reply, bytes]] | None = None
        self._no_body = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes nobody asked for: do not reuse it
            self.close()
            return
        self._buf += data
        self._last_read = self.loop.time()
        try:
            done = self._parse(eof=False)
        except httpx2.RemoteProtocolError as e:
            self._fail(e)
            return
        if done is not None:
            self._finish(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        try:
            done = self._parse(eof=True) if self._reply is not None else None
        except httpx2.RemoteProtocolError as e:
            self._fail(e)
            return
        if done is not None:
            self._finish(done)
        elif not self._buf:
            self._fail(_ClosedBeforeReply("server closed the connection before replying"))
        else:
            self._fail(httpx2.RemoteProtocolError("server closed the connection in the middle of a reply"))

    # ------------------------------------------------------------------ one request

    async def exchange(self, head: bytes, body: bytes, no_body: bool, read_timeout: float | None) -> Any:
        assert self.transport is not None
        self._buf.clear()
        self._reply = None
        self._no_body = no_body
        self._waiter = self.loop.create_future()
        self._read_timeout = read_timeout
        self._last_read = self.loop.time()
        if read_timeout is not None:
            self._timer = self.loop.call_at(self._last_read + read_timeout, self._check_timeout)
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _check_timeout(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done() or self._read_timeout is None:
            return
        due = self._last_read + self._read_timeout
        if self.loop.time() < due:  # bytes arrived since: the timeout counts from the last read
            self._timer = self.loop.call_at(due, self._check_timeout)
            return
        self._fail(httpx2.ReadTimeout(f"no reply within {self._read_timeout:g} s"))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _finish(self, result: tuple[_Reply, bytes]) -> None:
        assert self._waiter is not None
        if not result[0].keep:
            self.close()
        self._waiter.set_result(result)

    # ------------------------------------------------------------------ parsing

    def _parse(self, eof: bool) -> tuple[_Reply, bytes] | None:
        """The reply and its body once both are complete in the buffer, else None."""
        while self._reply is None:
            end = self._buf.find(_CRLF2)
            if end < 0:
                if len(self._buf) > 1 << 16:
                    raise httpx2.RemoteProtocolError("reply headers longer than 64 KiB")
                return None
            reply = _head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
            if 100 <= reply.status < 200:  # an interim reply (100 Continue): the real one follows
                continue
            self._reply = reply
            if self._no_body or reply.status in (204, 304):
                reply.length, reply.chunked = 0, False
            elif reply.length < 0 and not reply.chunked:  # no length: the body ends when the server closes
                reply.keep = False
        reply = self._reply
        if reply.length >= 0:
            if len(self._buf) < reply.length:
                if eof:
                    raise httpx2.RemoteProtocolError("server closed the connection in the middle of a reply")
                return None
            if len(self._buf) > reply.length:  # more than the reply: we never pipeline, so this is junk
                reply.keep = False
            return reply, bytes(self._buf[: reply.length])
        if reply.chunked:
            body = _dechunk(self._buf)
            if body is None and eof:
                raise httpx2.RemoteProtocolError("server closed the connection in the middle of a reply")
            return (reply, body) if body is not None else None
        return (reply, bytes(self._buf)) if eof else None


class _ClosedBeforeReply(httpx2.RemoteProtocolError):
    """A reused connection the server had already closed: safe to send again on a new one."""


def _head(raw: bytes) -> _Reply:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx2.RemoteProtocolError(f"not an HTTP/1.x reply: {lines[0][:80]!r}")
    reply = _Reply()
    reply.status = int(parts[1])
    reply.reason = parts[2] if len(parts) > 2 else b""
    reply.keep = parts[0] == b"HTTP/1.1"
    headers = reply.headers
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx2.RemoteProtocolError(f"malformed reply header: {line[:80]!r}")
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        low = name.lower()
        if low == b"content-length":
            if not value.isdigit():
                raise httpx2.RemoteProtocolError(f"bad Content-Length: {value[:40]!r}")
            reply.length = int(value)
        elif low == b"transfer-encoding":
            reply.chunked = value.lower().endswith(b"chunked")
        elif low == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                reply.keep = False
            elif b"keep-alive" in tokens:
                reply.keep = True
    if reply.chunked:
        reply.length = -1  # chunked wins over a Content-Length (RFC 9112 6.3)
    return reply


def _dechunk(buf: bytearray) -> bytes | None:
    """The body of a complete chunked message in `buf`, or None while chunks are still arriving."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise httpx2.RemoteProtocolError(f"bad chunk size: {size_field[:20]!r}") from None
        start = eol + 2
        if size == 0:  # trailers, then an empty line
            return b"".join(out) if buf.find(_CRLF2, eol) >= 0 else None
        if len(buf) < start + size + 2:
            return None
        out.append(bytes(buf[start : start + size]))
        pos = start + size + 2


class LeanTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 with a keep-alive pool per host; one request per connection at a time."""

    def __init__(self, *, verify: ssl.SSLContext | str | bool = True) -> None:
        self._verify = verify
        # built on the first https connection: loading the CA bundle costs ~20 ms, and most endpoints
        # a build talks to (the embedded model, a local server) are plain http
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = defaultdict(list)
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        key = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        timeout = request.extensions.get("timeout") or {}
        try:
            body = request.content
        except httpx2.RequestNotRead:
            body = await request.aread()
        head = _request_head(request, body)
        no_body = request.method == "HEAD"
        while True:
            conn = self._reuse(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, timeout.get("connect"))
            try:
                reply, data = await conn.exchange(head, body, no_body, timeout.get("read"))
            except _ClosedBeforeReply:
                self._open.discard(conn)
                if reused:  # the server had closed it while idle: once more on a fresh connection
                    continue
                raise
            except BaseException:
                conn.close()
                self._open.discard(conn)
                raise
            break
        if conn.closed:
            self._open.discard(conn)
        else:
            conn.idle_since = time.monotonic()
            self._idle[key].append(conn)
        return httpx2.Response(
            reply.status,
            headers=reply.headers,
            stream=httpx2.ByteStream(data),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reply.reason},
        )

    def _reuse(self, key: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_EXPIRY:
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(self, key: tuple[bytes, bytes, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = scheme == b"https"
        name = host.decode("ascii")
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    name,
                    port,
                    ssl=self._tls_context() if tls else None,
                    server_hostname=name if tls else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {name}:{port} took over {timeout:g} s") from None
        except OSError as e:
            raise httpx2.ConnectError(f"cannot connect to {name}:{port}: {e.strerror or e}") from None
        self._open.add(conn)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx2.create_ssl_context(verify=self._verify)
        return self._ssl

    async def aclose(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()


def _request_head(request: httpx2.Request, body: bytes) -> bytes:
    target = request.url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    has_length = False
    for name, value in request.headers.raw:
        low = name.lower()
        if low == b"content-length":
            has_length = True
        elif low == b"transfer-encoding":  # the body is in memory: we send it with its length instead
            continue
        lines.append(name + b": " + value)
    if not has_length and (body or request.method not in ("GET", "HEAD")):
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + _CRLF2


def sdk_uses_httpx2() -> bool:
    """Whether the installed openai SDK sends through httpx2 (older SDKs: httpx), so this client fits."""
    return issubclass(openai.DefaultAsyncHttpxClient, httpx2.AsyncClient)


class LeanHttpClient(httpx2.AsyncClient):
    """The SDK's httpx client, with the per-call work of a plain JSON POST cut to what it needs.

    Two public httpx methods are narrowed, each falling back to httpx's own when a call needs more:
    - `build_request`: the SDK passes an absolute URL string and a header list on every call; the URL's
      parse is cached and the client's default headers are merged once into a list (httpx merges by
      building three `Headers` objects a call).
    - `send`: straight to the transport. No auth (the SDK authenticates by header), no cookie jar, no
      event hooks on this client; a redirect is handed to httpx's full `send`, which follows it.
    Proxies: `personaloom.llm.client` does not pick this client where the environment sets one.
    """

    def __init__(
        self, *, timeout: httpx2.Timeout | float | None, verify: ssl.SSLContext | bool = True
    ) -> None:
        self._lean = LeanTransport(verify=verify)
        super().__init__(timeout=timeout, transport=self._lean, follow_redirects=True, trust_env=False)
        self._urls: dict[str, httpx2.URL] = {}
        # the client's own defaults (Accept, Accept-Encoding, User-Agent ...) that a call may override
        self._defaults = {k.lower(): (k, v) for k, v in self.headers.raw}

    def build_request(  # type: ignore[override]
        self,
        method: str,
        url: httpx2.URL | str,
        *,
        content: Any = None,
        headers: Any = None,
        timeout: Any = httpx2.USE_CLIENT_DEFAULT,
        extensions: Any = None,
        **other: Any,
    ) -> httpx2.Request:
        plain = (
            isinstance(url, str)
            and not any(v is not None for v in other.values())
            and extensions is None
            and not self.base_url.raw_path.strip(b"/")
            and not self.base_url.host
            and not self.params
            and not self.cookies
            and (headers is None or isinstance(headers, list))
        )
        if not plain:
            return super().build_request(
                method, url, content=content, headers=headers, timeout=timeout, extensions=extensions, **other
            )
        parsed = self._urls.get(url)  # type: ignore[arg-type]
        if parsed is None:
            if len(self._urls) > 256:
                self._urls.clear()
            parsed = self._urls[url] = httpx2.URL(url)  # type: ignore[index]
        merged = dict(self._defaults)
        for name, value in headers or ():
            low = name.lower() if isinstance(name, str) else name.decode("latin-1").lower()
            merged[low] = (name, value)
        limit = self.timeout if timeout is httpx2.USE_CLIENT_DEFAULT else httpx2.Timeout(timeout)
        return httpx2.Request(
            method,
            parsed,
            content=content,
            headers=list(merged.values()),
            extensions={"timeout": limit.as_dict()},
        )

    async def send(  # type: ignore[override]
        self,
        request: httpx2.Request,
        *,
        stream: bool = False,
        auth: Any = httpx2.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx2.USE_CLIENT_DEFAULT,
    ) -> httpx2.Response:
        if auth is not httpx2.USE_CLIENT_DEFAULT or self.is_closed:
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        if "timeout" not in request.extensions:
            request.extensions = {**request.extensions, "timeout": self.timeout.as_dict()}
        response = await self._lean.handle_async_request(request)
        response.request = request
        if response.is_redirect and follow_redirects is not False:
            # nothing was acted on: httpx's own send follows the redirect (method, body, history)
            await response.aclose()
            return await super().send(request, stream=stream, follow_redirects=follow_redirects)
        if not stream:
            response.read()  # the body is in memory already: the sync read skips async generators
        return response
