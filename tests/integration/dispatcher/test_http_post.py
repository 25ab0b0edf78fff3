"""The delivery HTTP client (tidings.dispatcher.http_post) against real loopback
servers: a raw asyncio server whose answers each test writes byte for byte
(keep-alive, closes, chunked and malformed answers), and TLS servers with a
test CA (custom CA, client certificates)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from pki import TestCA
from tidings.api.attempts import BODY_LIMIT
from tidings.api.destinations import CLUSTER, LOCAL
from tidings.api.tls import client_context
from tidings.dispatcher import delivery
from tidings.dispatcher.guard import DestinationRefused, Guard
from tidings.dispatcher.http_post import (
    DRAIN_LIMIT,
    HEAD_LIMIT,
    Client,
    Disconnected,
    RequestError,
    ResponseError,
    Target,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# An answer: the bytes to write and whether to close the connection after them;
# None: never answer.
Answer = tuple[bytes, bool] | None


class RawServer:
    """Loopback HTTP/1.1: reads each request whole, records it, answers with
    what `answer` returns; counts the connections it accepted."""

    def __init__(self, answer: Callable[[bytes, bytes], Answer] = lambda h, b: (OK, False)):
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handlers: set[asyncio.Task[object]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, tls: ssl.SSLContext | None = None) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/hook", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(found.group(1)) if found else 0)
                self.requests.append((head, body))
                answer = self.answer(head, body)
                if answer is None:
                    await reader.read()  # until the client gives up
                    return
                data, close = answer
                writer.write(data)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    http = Client(Guard(LOCAL))
    yield http
    await http.close()


async def serve(answer: Callable[[bytes, bytes], Answer] | None = None) -> RawServer:
    return await (RawServer(answer) if answer else RawServer()).start()


def request(**headers: str) -> delivery.Request:
    return delivery.Request(
        headers={"Content-Type": "application/json", "ce-id": "e-1", **headers},
        body=b'{"n": 1}',
    )


async def test_the_request_arrives_as_built_and_keep_alive_reuses_one_connection(
    client: Client,
) -> None:
    server = await serve()
    for _ in range(5):
        result = await delivery.send(client, server.url("/hook?x=1"), request(), 5)
        assert result.ok and result.status == 200 and result.body == b"ok"
    assert server.connections == 1 and client.idle_connections() == 1
    head, body = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "Content-Type: application/json" in lines and "ce-id: e-1" in lines
    assert "Content-Length: 8" in lines and body == b'{"n": 1}'
    await server.stop()


async def test_concurrent_posts_open_one_connection_each_and_keep_them(client: Client) -> None:
    server = await serve()
    results = await asyncio.gather(
        *(delivery.send(client, server.url(), request(), 5) for _ in range(10))
    )
    assert all(r.ok for r in results)
    assert server.connections == 10 and client.idle_connections() == 10
    await asyncio.gather(*(delivery.send(client, server.url(), request(), 5) for _ in range(10)))
    assert server.connections == 10
    await server.stop()


async def test_connection_close_answers_and_server_closes_open_a_new_connection(
    client: Client,
) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = await serve(lambda h, b: (closing, True))
    for _ in range(3):
        assert (await delivery.send(client, server.url(), request(), 5)).ok
    assert server.connections == 3 and client.idle_connections() == 0
    await server.stop()

    # A server that closes an idle keep-alive connection without saying so.
    quiet = await serve(lambda h, b: (OK, True))
    assert (await delivery.send(client, quiet.url(), request(), 5)).ok
    await asyncio.sleep(0.1)  # the close arrives while the connection is idle
    assert (await delivery.send(client, quiet.url(), request(), 5)).ok
    assert quiet.connections == 2
    await quiet.stop()


async def test_chunked_and_end_of_connection_bodies_are_read(client: Client) -> None:
    chunked = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nmissi\r\n9\r\nng email!\r\n0\r\n\r\n"
    )
    server = await serve(lambda h, b: (chunked, False))
    result = await delivery.send(client, server.url(), request(), 5)
    assert result.status == 400 and result.body == b"missing email!"
    assert result.failure is not None and result.failure.message == "HTTP 400: missing email!"
    assert client.idle_connections() == 1  # a chunked answer keeps the connection
    await server.stop()

    until_eof = await serve(lambda h, b: (b"HTTP/1.0 503 Busy\r\n\r\ntry later", True))
    result = await delivery.send(client, until_eof.url(), request(), 5)
    assert result.status == 503 and result.body == b"try later"
    assert client.idle_connections() == 1  # the other server's; this one is closed
    await until_eof.stop()


async def test_status_reason_retry_after_and_redirects_not_followed(client: Client) -> None:
    answers = iter(
        [
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ]
    )
    server = await serve(lambda h, b: (next(answers), False))
    limited = await delivery.send(client, server.url(), request(), 5)
    assert limited.failure is not None and limited.failure.kind == "status"
    assert limited.failure.message == "HTTP 429: Too Many Requests"
    assert limited.failure.retry_after == 7
    moved = await delivery.send(client, server.url(), request(), 5)
    assert moved.status == 302 and moved.failure is not None
    assert len(server.requests) == 2  # the Location was not visited
    interim = await delivery.send(client, server.url(), request(), 5)
    assert interim.ok and interim.status == 204
    assert server.connections == 1
    await server.stop()


async def test_a_body_beyond_the_limits_is_kept_short_and_a_huge_one_not_read_on(
    client: Client,
) -> None:
    big = b"x" * 200_000
    huge = b"y" * 5_000_000
    answers = iter([big, huge])

    def answer(head: bytes, body: bytes) -> Answer:
        payload = next(answers)
        return b"HTTP/1.1 500 Boom\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload, False

    server = await serve(answer)
    result = await delivery.send(client, server.url(), request(), 5)
    assert result.status == 500 and result.body == big[:BODY_LIMIT]
    assert client.idle_connections() == 1  # read to its end: the connection is kept
    result = await delivery.send(client, server.url(), request(), 5)
    assert result.status == 500 and result.body == huge[:BODY_LIMIT]
    assert client.idle_connections() == 0  # past the drain limit: closed, not read on
    await server.stop()


async def test_timeouts_count_from_the_start_of_the_attempt(client: Client) -> None:
    server = await serve(lambda h, b: None)
    started = time.monotonic()
    result = await delivery.send(client, server.url(), request(), 0.5)
    assert result.failure is not None and result.failure.kind == "timeout"
    assert result.failure.message == "no answer within 0.5s"
    assert 0.4 < time.monotonic() - started < 5
    assert client.idle_connections() == 0
    await server.stop()


async def test_malformed_answers_and_early_closes_are_clear_network_failures(
    client: Client,
) -> None:
    answers = iter(
        [
            (b"HTTP/1.1 abc OK\r\n\r\n", False),
            (b"", True),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", True),
        ]
    )
    server = await serve(lambda h, b: next(answers))
    malformed = await delivery.send(client, server.url(), request(), 5)
    assert malformed.failure is not None and malformed.failure.kind == "network"
    assert malformed.failure.message.startswith("ResponseError: malformed HTTP response")
    closed = await delivery.send(client, server.url(), request(), 5)
    assert closed.failure is not None and closed.failure.kind == "network"
    assert closed.failure.message == (
        "Disconnected: the subscriber closed the connection before answering"
    )
    cut = await delivery.send(client, server.url(), request(), 5)
    assert cut.failure is not None and cut.failure.message == (
        "Disconnected: the subscriber closed the connection in the middle of the answer"
    )
    assert server.connections == 3 and client.idle_connections() == 0
    await server.stop()

    with pytest.raises(ResponseError):
        broken = await serve(lambda h, b: (b"NOT HTTP AT ALL\r\n\r\n", False))
        await client.post(broken.url(), {}, b"", 5)
    await broken.stop()


async def test_nothing_listening_is_a_network_failure(client: Client) -> None:
    server = await serve()
    url = server.url()
    await server.stop()
    result = await delivery.send(client, url, request(), 5)
    assert result.failure is not None and result.failure.kind == "network"
    assert result.failure.message.startswith("ConnectionError: cannot connect to 127.0.0.1:")


async def test_a_header_that_would_split_the_request_is_refused_unsent(client: Client) -> None:
    server = await serve()
    with pytest.raises(RequestError, match="X-Evil"):
        await client.post(server.url(), {"X-Evil": "a\r\nHost: elsewhere"}, b"", 5)
    result = await delivery.send(client, server.url(), request(**{"X-Evil": "a\nb"}), 5)
    assert result.failure is not None and result.failure.kind == "request"
    assert server.requests == []
    # Framing stays ours: a custom header cannot replace Content-Length or Host.
    await client.post(
        server.url(), {"Content-Length": "0", "Transfer-Encoding": "chunked"}, b"12", 5
    )
    head, body = server.requests[0]
    assert b"Transfer-Encoding" not in head and b"Content-Length: 2\r\n" in head
    assert body == b"12"
    await server.stop()


async def test_the_destination_policy_refuses_before_connecting() -> None:
    server = await serve()
    refusing = Client(Guard(CLUSTER))  # loopback is not a cluster destination
    result = await delivery.send(refusing, server.url(), request(), 5)
    assert result.failure is not None and result.failure.kind == "destination"
    assert result.failure.message.startswith("DestinationNotAllowed: ")
    with pytest.raises(DestinationRefused):
        await refusing.post(server.url(host="localhost"), {}, b"", 5)
    assert server.connections == 0
    await refusing.close()
    await server.stop()


async def test_tls_with_a_custom_ca_and_a_client_certificate(
    client: Client, tmp_path: Path
) -> None:
    ca = TestCA()
    plain = await RawServer().start(ca.server_context(tmp_path, require_client_cert=False))
    # The system CAs do not know the test CA: verification fails, nothing is sent.
    unknown = await delivery.send(client, plain.url(scheme="https"), request(), 5)
    assert unknown.failure is not None and unknown.failure.kind == "network"
    assert "CERTIFICATE_VERIFY_FAILED" in unknown.failure.message
    trusted = client_context(ca_pem=ca.cert)
    for host in ("127.0.0.1", "localhost"):
        url = plain.url(scheme="https", host=host)
        assert (await delivery.send(client, url, request(), 5, tls=trusted)).ok
    assert plain.requests and all(b"ce-id: e-1" in head for head, _ in plain.requests)

    mutual = await RawServer().start(ca.server_context(tmp_path, require_client_cert=True))
    issued = ca.issue("tidings-dispatcher", server=False, client=True)
    with_cert = client_context(ca_pem=ca.cert, cert_pem=issued.cert, key_pem=issued.key)
    assert (await delivery.send(client, mutual.url(scheme="https"), request(), 5, tls=with_cert)).ok
    # Connections are pooled per TLS context: the certificate-less context opens
    # its own, and the server turns it away.
    without = await delivery.send(client, mutual.url(scheme="https"), request(), 5, tls=trusted)
    assert without.failure is not None and without.failure.kind == "network"
    # (asyncio's server counts only connections whose handshake succeeded.)
    assert mutual.connections == 1 and len(mutual.requests) == 1
    await plain.stop()
    await mutual.stop()


def test_a_url_becomes_the_request_line_host_and_credentials_as_aiohttp_sent_them() -> None:
    target = Target.parse("https://us%40er:pa:ss@[::1]:8443/a b?q=ä#fragment")
    assert (target.host, target.port, target.tls, target.literal) == ("::1", 8443, True, True)
    assert target.head.startswith(b"POST /a%20b?q=%C3%A4 HTTP/1.1\r\nHost: [::1]:8443\r\n")
    assert target.authorization == "Basic " + base64.b64encode(b"us@er:pa:ss").decode()
    named = Target.parse("http://b\u00fccher.example/x")
    assert named.host == "xn--bcher-kva.example" and not named.literal and named.port == 80
    assert b"Host: xn--bcher-kva.example\r\n" in named.head and named.authorization is None
    for bad in ("ftp://example.com/", "http:///nohost", "http://example.com:99999/"):
        with pytest.raises(RequestError, match="URL"):
            Target.parse(bad)


async def test_credentials_in_the_url_are_sent_unless_the_trigger_sets_authorization(
    client: Client,
) -> None:
    server = await serve()
    url = f"http://user:secret@127.0.0.1:{server.port}/hook"
    await client.post(url, {}, b"", 5)
    await client.post(url, {"authorization": "Bearer t"}, b"", 5)
    first, second = (head.decode() for head, _ in server.requests)
    assert "\r\nAuthorization: Basic " + base64.b64encode(b"user:secret").decode() in first
    assert "\r\nauthorization: Bearer t\r\n" in second and "Basic" not in second
    await server.stop()


async def test_a_second_answer_to_one_request_retires_the_connection(client: Client) -> None:
    server = await serve(lambda h, b: (OK + OK, False))
    for _ in range(2):
        result = await delivery.send(client, server.url(), request(), 5)
        assert result.ok and result.body == b"ok"
    assert server.connections == 2  # the first could no longer be trusted
    await server.stop()


async def test_an_answer_head_over_the_limit_fails_fast_and_its_connection_is_dropped(
    client: Client,
) -> None:
    endless_header = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (HEAD_LIMIT * 4)  # never ends
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 5000
    huge_trailer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
        + b"X-Trailer: "
        + b"t" * (DRAIN_LIMIT + HEAD_LIMIT)
        + b"\r\n\r\n"
    )
    answers = iter([endless_header, early_hints + OK, huge_trailer])
    server = await serve(lambda h, b: (next(answers), False))
    started = time.monotonic()
    for what in ("the answer's head is over", "the answer's head is over", "the answer is over"):
        with pytest.raises(ResponseError, match=what):
            await client.post(server.url(), {}, b"", 30)
    assert time.monotonic() - started < 20  # not the deadline: at the limit
    assert server.connections == 3 and client.idle_connections() == 0
    await server.stop()


async def test_answers_aiohttp_read_leniently_are_read(client: Client) -> None:
    answers = iter(
        [
            b"HTTP/1.1 429 Slow\nRetry-After: 7\nContent-Length: 2\n\nno",  # LF-only lines
            b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\r\nContent-Length: 2\r\n\r\nok",  # a control char
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n0\r\n\r\n",
        ]
    )
    server = await serve(lambda h, b: (next(answers), False))
    limited = await delivery.send(client, server.url(), request(), 5)
    assert limited.status == 429 and limited.body == b"no"
    assert limited.failure is not None and limited.failure.retry_after == 7
    for _ in range(2):
        result = await delivery.send(client, server.url(), request(), 5)
        assert result.ok and result.body == b"ok"
    await server.stop()


async def test_a_body_with_a_final_coding_other_than_chunked_is_read_to_the_close(
    client: Client,
) -> None:
    gzip_to_eof = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip"
    server = await serve(lambda h, b: (gzip_to_eof, True))
    result = await delivery.send(client, server.url(), request(), 5)
    assert result.status == 500 and result.body == b"not really gzip"
    assert client.idle_connections() == 0
    await server.stop()


class OneName(AbstractResolver):
    """Resolves `name` alone, to 127.0.0.1."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.name:
            raise OSError(f"test resolver: no such name {host}")
        address = {"hostname": host, "host": "127.0.0.1", "port": port}
        return [{**address, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def test_tls_to_a_fully_qualified_name_with_its_final_dot(tmp_path: Path) -> None:
    ca = TestCA()
    server = await RawServer().start(ca.server_context(tmp_path, require_client_cert=False))
    client = Client(Guard(LOCAL, OneName("localhost.")))
    url = server.url(scheme="https", host="localhost.")
    result = await delivery.send(client, url, request(), 5, tls=client_context(ca_pem=ca.cert))
    assert result.ok, result.failure
    assert f"Host: localhost.:{server.port}\r\n".encode() in server.requests[0][0]
    await client.close()
    await server.stop()


async def test_a_name_that_does_not_resolve_is_named_in_the_failure(client: Client) -> None:
    # .invalid never resolves (RFC 6761) and the system resolver answers that locally.
    result = await delivery.send(client, "http://nonexistent.invalid/hook", request(), 10)
    assert result.failure is not None and result.failure.kind == "network"
    assert result.failure.message.startswith(
        "ConnectionError: cannot resolve nonexistent.invalid: "
    ), result.failure.message


async def test_header_names_that_are_not_tokens_and_values_that_are_not_text_are_refused(
    client: Client,
) -> None:
    server = await serve()
    for name in ("Host:admin.internal", "Transfer-Encoding:", "X Y", "Ümlaut", ""):
        with pytest.raises(RequestError, match="a header name is"):
            await client.post(server.url(), {name: "x"}, b"", 5)
    surrogate = await delivery.send(client, server.url(), request(tracestate="a=\ud800"), 5)
    assert surrogate.failure is not None and surrogate.failure.kind == "request"
    assert surrogate.failure.message.startswith("RequestError: header 'tracestate': ")
    assert server.requests == [] and server.connections == 0
    await server.stop()


async def test_an_answer_before_the_body_is_all_sent_does_not_pool_the_connection(
    client: Client,
) -> None:
    connections = 0

    async def answer_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers on the request line, reads no body: the client's writes back up.
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(30)

    server = await asyncio.start_server(answer_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    for _ in range(2):
        response = await client.post(url, {}, b"x" * 20_000_000, 10)
        assert response.status == 200
    assert connections == 2 and client.idle_connections() == 0
    server.close()
    await client.close()


async def test_a_kept_connection_closed_as_the_request_goes_out_is_retried_once_anew(
    client: Client,
) -> None:
    # The server idles the kept connection out just as the second request arrives
    # (read, then closed unanswered); the client sends it again on a new one.
    answers = iter([(OK, False), (b"", True), (OK, False), (b"", True), (b"", True)])
    server = await serve(lambda h, b: next(answers))
    for _ in range(2):
        assert (await client.post(server.url(), {}, b"x", 5)).status == 200
    assert server.connections == 2 and len(server.requests) == 3
    # Only once, and never for a new connection: the subscriber is down, not idle.
    with pytest.raises(Disconnected, match="before answering"):
        await client.post(server.url(), {}, b"x", 5)
    assert server.connections == 3 and len(server.requests) == 5
    await server.stop()
