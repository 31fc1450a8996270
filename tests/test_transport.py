"""The lean HTTP/1.1 transport under the SDK, against scripted servers on real loopback sockets.

Each server reads one request at a time (head, then a Content-Length body) and answers with the raw bytes
its script returns, in as many writes as the script asks for: how real servers split, chunk, close and
stall is what the transport must survive.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
import openai
import pytest

from personaloom.llm import transport
from personaloom.llm.client import LLM, LLMError
from personaloom.schemas.config import LLMConfig
from personaloom.testing.fake_openai import FakeOpenAI
from tests.test_llm_client import ask, make

OK = b'{"ok": true}'


def reply(body: bytes = OK, status: str = "200 OK", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Content-Type: application/json", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class Scripted:
    """A loopback server: `script(seen, n)` gives the bytes (or list of pieces) of the n-th reply;
    None closes the connection without a reply; a float piece sleeps that long between writes; an empty
    piece closes the connection there."""

    script: Callable[[Seen, int], bytes | list[bytes | float] | None]
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body, conn)
                self.seen.append(seen)
                out = self.script(seen, len(self.seen))
                if out is None:
                    break
                for piece in out if isinstance(out, list) else [out]:
                    if isinstance(piece, float):
                        await writer.drain()
                        await asyncio.sleep(piece)
                    elif piece:
                        writer.write(piece)
                    else:
                        return  # (finally) closes the connection here
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def client(**kw: object) -> transport.LeanHttpClient:
    return transport.LeanHttpClient(timeout=kw.pop("timeout", 5.0), **kw)  # type: ignore[arg-type]


def run(coro_fn: Callable[[], object]) -> object:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_keeps_one_connection_alive_across_requests() -> None:
    async def go() -> None:
        async with Scripted(lambda s, n: reply(json.dumps({"n": n}).encode())) as srv:
            async with client() as c:
                for i in range(1, 6):
                    r = await c.post(srv.url + "/v1/x?q=1", content=b'{"a": 1}')
                    assert r.status_code == 200 and r.json() == {"n": i}
            assert srv.connections == 1
            first = srv.seen[0]
            assert (first.method, first.target, first.body) == ("POST", "/v1/x?q=1", b'{"a": 1}')
            assert first.headers["content-length"] == "8" and first.headers["host"].startswith("127.0.0.1:")

    run(go)


def test_chunked_reply_split_across_writes_with_extensions_and_trailers() -> None:
    body = json.dumps({"text": "x" * 3000}).encode()
    chunks = [body[:1000], body[1000:1001], body[1001:]]
    raw = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces: list[bytes | float] = [head[:10], 0.01, head[10:] + raw[:7], 0.01]
    pieces += [raw[i : i + 3] for i in range(7, len(raw), 3)]

    async def go() -> None:
        async with Scripted(lambda s, n: pieces) as srv:
            async with client() as c:
                for _ in range(2):
                    r = await c.post(srv.url, content=b"{}")
                    assert r.content == body
            assert srv.connections == 1

    run(go)


def test_interim_reply_gzip_and_a_reply_read_until_close() -> None:
    zipped = gzip.compress(OK)

    def script(s: Seen, n: int) -> bytes | None:
        if n == 1:
            return b"HTTP/1.1 100 Continue\r\n\r\n" + reply(zipped, "200 OK", "Content-Encoding: gzip")
        return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK  # no length: until close

    async def go() -> None:
        async with Scripted(script) as srv:
            async with client() as c:
                r = await c.post(srv.url, content=b"{}")
                assert r.status_code == 200 and r.json() == {"ok": True}

        async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(script(None, 2))  # type: ignore[arg-type]
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(until_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with client() as c:
            for _ in range(2):  # the closed connection is not reused: a new one each time
                r = await c.get(f"http://127.0.0.1:{port}/")
                assert r.json() == {"ok": True}
        server.close()

    run(go)


def test_connections_the_server_closed_are_replaced() -> None:
    """Closed while idle (after a reply without `Connection: close`), or on receiving the next request
    without replying: either way the next request succeeds on a new connection."""

    def script(s: Seen, n: int) -> list[bytes | float] | None:
        if n == 1:
            return [reply(), b""]  # replies, then closes: the transport sees it before the next request
        if n == 3:
            return None  # takes the request, closes without a reply: the request is sent again
        return [reply()]

    async def go() -> None:
        async with Scripted(script) as srv:
            async with client() as c:
                assert (await c.post(srv.url, content=b"{}")).status_code == 200
                await asyncio.sleep(0.05)
                assert (await c.post(srv.url, content=b"{}")).status_code == 200
                assert (await c.post(srv.url, content=b"{}")).status_code == 200
            assert srv.connections == 3 and len(srv.seen) == 4

    run(go)


@pytest.mark.parametrize(
    "script, error",
    [
        (lambda s, n: reply()[:-3], httpx2.RemoteProtocolError),  # closes in the middle of the body
        (lambda s, n: b"SPDY/3 200 OK\r\n\r\n", httpx2.RemoteProtocolError),
        (lambda s, n: b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", httpx2.RemoteProtocolError),
        (lambda s, n: [reply()[:20], 1.0, reply()[20:]], httpx2.ReadTimeout),  # stalls past the timeout
    ],
    ids=["truncated", "not-http", "bad-length", "stall"],
)
def test_broken_replies_raise_the_httpx_error_the_sdk_maps(script, error) -> None:
    def closing(s: Seen, n: int) -> list[bytes | float]:
        out = script(s, n)
        return [*out, 0.01, b""] if isinstance(out, list) else [out, 0.01, b""]

    async def go() -> None:
        async with Scripted(closing) as srv:
            async with client(timeout=httpx2.Timeout(5.0, read=0.3)) as c:
                with pytest.raises(error):
                    await c.post(srv.url, content=b"{}")

    async def refused() -> None:
        async with client() as c:
            with pytest.raises(httpx2.ConnectError, match="cannot connect to 127.0.0.1"):
                await c.get("http://127.0.0.1:9/")

    run(go)
    run(refused)


def test_head_no_content_and_redirects() -> None:
    def script(s: Seen, n: int) -> bytes:
        if s.target == "/old":
            return reply(b"", "307 Temporary Redirect", "Location: /new")
        if s.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"  # the length of a body not sent
        if s.target == "/empty":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return reply(json.dumps({"target": s.target, "body": s.body.decode()}).encode())

    async def go() -> None:
        async with Scripted(script) as srv:
            async with client() as c:
                r = await c.post(srv.url + "/old", content=b'{"x": 1}')
                assert r.json() == {"target": "/new", "body": '{"x": 1}'} and r.history[0].status_code == 307
                assert (await c.head(srv.url + "/")).content == b""
                assert (await c.post(srv.url + "/empty", content=b"{}")).status_code == 204
                assert (await c.get(srv.url + "/after")).json()["target"] == "/after"
            assert srv.connections == 1

    run(go)


def test_the_sdk_maps_transport_failures_and_statuses() -> None:
    """Through `openai.AsyncOpenAI`: statuses become its typed errors, a dead socket a connection error."""

    def script(s: Seen, n: int) -> bytes | None:
        if n == 1:
            return reply(b'{"error": {"message": "slow down"}}', "429 Too Many Requests", "Retry-After: 0")
        return None

    async def go() -> None:
        async with Scripted(script) as srv:
            sdk = openai.AsyncOpenAI(
                base_url=srv.url + "/v1", api_key="sk-x", max_retries=0, http_client=client()
            )
            with pytest.raises(openai.RateLimitError):
                await sdk.post("/chat/completions", content=b"{}", cast_to=bytes)
            with pytest.raises(openai.APIConnectionError):
                await sdk.post("/chat/completions", content=b"{}", cast_to=bytes)
            await sdk.close()
            assert srv.seen[0].headers["authorization"] == "Bearer sk-x"

    run(go)


def test_llm_uses_it_by_default_and_calls_go_through(fake: FakeOpenAI) -> None:
    llm = make(fake)
    assert isinstance(llm.client._client, transport.LeanHttpClient)  # noqa: SLF001
    results = ask(llm, 40)
    assert all(r.ok for r in results) and len({r.raw for r in results}) > 1
    assert llm.usage["t"].calls == 40 and fake.requests[-1]["headers"]["authorization"] == "Bearer sk-test"


def test_proxy_env_and_explicit_choice(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    def kind() -> type:
        llm = LLM(LLMConfig(model="fake"), base_url=fake.base_url, api_key="sk-test", cache=None)
        asyncio.run(llm.aclose())
        return type(llm.client._client)  # noqa: SLF001

    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert kind() is not transport.LeanHttpClient  # the proxy is honoured by the SDK's own client
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert kind() is transport.LeanHttpClient
    monkeypatch.delenv("http_proxy")
    monkeypatch.setenv("PERSONALOOM_HTTP_CLIENT", "aiohttp")
    assert kind() is not transport.LeanHttpClient
    monkeypatch.setenv("PERSONALOOM_HTTP_CLIENT", "curl")
    with pytest.raises(LLMError, match="PERSONALOOM_HTTP_CLIENT='curl': use one of lean, aiohttp, httpx"):
        kind()


LOOPBACK = "127.0.0.1"


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def test_https_verifies_the_certificate_and_keeps_the_connection(tmp_path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def go() -> None:
        srv = Scripted(lambda s, n: reply(json.dumps({"n": n}).encode()))
        srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=server_ctx)
        url = srv.url.replace("http://", "https://")
        trusting = ssl.create_default_context(cafile=cert)
        async with client(verify=trusting) as c:
            assert [(await c.post(url, content=b"{}")).json()["n"] for _ in range(3)] == [1, 2, 3]
        assert srv.connections == 1
        async with client() as c:  # the system's trust store does not know this certificate
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
                await c.post(url, content=b"{}")
        srv.server.close()

    run(go)
