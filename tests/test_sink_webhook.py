"""The webhook sink's HTTP/1.1 client against a scripted server: framing, keep-alive,
closed connections, timeouts and status classification."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from skor_bridge.config import WebhookConfig
from skor_bridge.event import ChangeEvent
from skor_bridge.sinks.base import Outcome
from skor_bridge.sinks.webhook import WebhookSink

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Request:
    connection: int
    head: str
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


@dataclass
class ScriptedServer:
    """Answers each request with `answer(request)` -> (bytes, close_after)."""

    answer: Callable[[Request], tuple[bytes, bool]]
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook?x=1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            self._exchange(conn, number)
        except OSError:
            pass  # the client gave up on this connection (a timeout test), or we closed it

    def _exchange(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                request = Request(number, head.decode("latin-1"), b"")
                length = int(request.header("content-length") or 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                request.body, buffer = buffer[:length], buffer[length:]
                self.requests.append(request)
                reply, close = self.answer(request)
                conn.sendall(reply)
                if close:
                    return

    def close_idle(self) -> None:
        """Close every connection, as a server with a short keep-alive timeout does."""
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(0.1)

    def stop(self) -> None:
        self.sock.close()
        self.close_idle()


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(answer: Callable[[Request], tuple[bytes, bool]]) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sinks():
    made: list[WebhookSink] = []

    def make(url: str, **settings) -> WebhookSink:
        made.append(WebhookSink("webhook", WebhookConfig(url=url, **settings)))
        made[-1].open()
        return made[-1]

    yield make
    for sink in made:
        sink.close()


def events(count: int, start: int = 0) -> list[ChangeEvent]:
    return [
        ChangeEvent(
            id=f"id-{i}",
            position=i + 1,
            schema="public",
            table="t",
            op="INSERT",
            data=f'{{"id":{i}}}',
            key=f'{{"id":{i}}}',
        )
        for i in range(start, start + count)
    ]


def outcomes(results) -> list[Outcome]:
    return [r.outcome for r in results]


def test_chunked_answers_with_trailers_keep_the_connection_alive(serve, sinks):
    # Given a receiver answering with chunked bodies and a trailer
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    server = serve(lambda request: (chunked, False))
    sink = sinks(server.url, concurrency=1)
    # When two batches are sent over one connection
    first, second = sink.send(events(3)), sink.send(events(3, 3))
    # Then every event is delivered and the one connection was reused throughout
    assert outcomes(first + second) == [Outcome.DELIVERED] * 6
    assert server.connections == 1 and len(server.requests) == 6


def test_connection_close_and_http10_bodies_until_close_open_new_connections(serve, sinks):
    # Given a receiver that closes after each answer, once without any length
    answers = iter(
        [
            (b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", True),
            (b"HTTP/1.0 200 OK\r\n\r\nbody until close", True),
            (OK, False),
        ]
    )
    server = serve(lambda request: next(answers))
    sink = sinks(server.url, concurrency=1)
    # When three events are sent one after the other
    results = sink.send(events(3))
    # Then all are delivered, over three connections
    assert outcomes(results) == [Outcome.DELIVERED] * 3
    assert [r.connection for r in server.requests] == [1, 2, 3]


def test_idle_connections_the_receiver_closed_are_replaced_without_a_failure(serve, sinks):
    # Given kept-alive connections from a first batch
    server = serve(lambda request: (OK, False))
    sink = sinks(server.url, concurrency=4)
    assert outcomes(sink.send(events(8))) == [Outcome.DELIVERED] * 8
    # When the receiver closes them while the sink is idle
    server.close_idle()
    # Then the next batch is delivered on new connections, without a retry
    results = sink.send(events(8, 8))
    assert outcomes(results) == [Outcome.DELIVERED] * 8, [r.error for r in results]
    assert len({r.body for r in server.requests}) == 16


def test_an_interim_100_continue_is_skipped(serve, sinks):
    server = serve(lambda request: (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False))
    assert outcomes(sinks(server.url).send(events(2))) == [Outcome.DELIVERED] * 2


def test_statuses_are_classified_and_redirects_are_not_followed(serve, sinks):
    # Given a receiver answering per event with a redirect, 503, 501 and 400
    statuses = {"id-0": 302, "id-1": 503, "id-2": 501, "id-3": 400, "id-4": 200}

    def answer(request: Request) -> tuple[bytes, bool]:
        status = statuses[request.header("webhook-id") or ""]
        extra = b"Location: http://example.invalid/\r\n" if status == 302 else b""
        return b"HTTP/1.1 %d X\r\n%bContent-Length: 0\r\n\r\n" % (status, extra), False

    server = serve(answer)
    results = sinks(server.url).send(events(5))
    # Then only 503 is retried, the redirect is an answer, and errors name the status
    assert outcomes(results) == [
        Outcome.REJECTED,
        Outcome.RETRY,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.DELIVERED,
    ]
    assert results[1].error is not None and results[1].error.startswith("HTTP 503")
    assert len(server.requests) == 5


def test_a_receiver_that_does_not_answer_times_out_as_retry(serve, sinks):
    server = serve(lambda request: (time.sleep(1.0), (OK, False))[1])
    started = time.monotonic()
    results = sinks(server.url, timeout=0.3).send(events(2))
    assert outcomes(results) == [Outcome.RETRY] * 2
    assert results[0].error == "timed out after 0.3s"
    assert time.monotonic() - started < 0.9


def test_a_refused_connection_is_retry_and_says_so(sinks):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    results = sinks(f"http://127.0.0.1:{port}/").send(events(1))
    assert outcomes(results) == [Outcome.RETRY]
    assert "Connection refused" in (results[0].error or "")


def test_garbage_instead_of_http_is_retry(serve, sinks):
    server = serve(lambda request: (b"SSH-2.0-OpenSSH\r\n\r\n", True))
    results = sinks(server.url).send(events(1))
    assert outcomes(results) == [Outcome.RETRY]
    assert "invalid HTTP response" in (results[0].error or "")


def test_request_line_and_headers(serve, sinks):
    # Given credentials in the URL and custom headers, one of them the content type
    server = serve(lambda request: (OK, False))
    url = server.url.replace("http://", "http://user:p%40ss@")
    sink = sinks(url, headers=(("X-Team", "orders"), ("content-type", "text/plain")))
    # When one event is sent
    assert outcomes(sink.send(events(1))) == [Outcome.DELIVERED]
    request = server.requests[0]
    # Then the target keeps its query, and the headers are Skor's plus the configured ones
    assert request.head.startswith("POST /hook?x=1 HTTP/1.1\r\n")
    port = server.url.split(":")[2].split("/")[0]
    assert request.header("host") == f"127.0.0.1:{port}"
    assert request.header("content-type") == "application/json"
    assert request.header("x-team") == "orders"
    assert request.header("webhook-id") == "id-0"
    assert request.header("webhook-position") == "1"
    assert request.header("webhook-captured-at") == ""  # unknown for this test event
    assert request.header("authorization") == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert request.body == events(1)[0].body()


def test_a_header_value_with_a_line_break_is_refused():
    from skor_bridge.errors import SinkError

    sink = WebhookSink(
        "webhook",
        WebhookConfig(url="http://127.0.0.1:9/", headers=(("X-Evil", "a\r\nX-Injected: 1"),)),
    )
    with pytest.raises(SinkError):
        sink.open()


def test_more_events_than_connections_wait_for_a_free_one(serve, sinks):
    # Given a receiver answering 50 ms late and a sink allowed two connections
    server = serve(lambda request: (time.sleep(0.05), (OK, False))[1])
    sink = sinks(server.url, concurrency=2)
    # When ten events are submitted at once
    results = sink.send(events(10))
    # Then all are delivered over the two connections, each event once
    assert outcomes(results) == [Outcome.DELIVERED] * 10
    assert server.connections == 2
    assert sorted(r.header("webhook-id") or "" for r in server.requests) == sorted(
        f"id-{i}" for i in range(10)
    )


def test_events_waiting_for_a_connection_time_out_by_their_own_deadline(serve, sinks):
    # Given a receiver that never answers in time, and one connection for three events
    server = serve(lambda request: (time.sleep(1.0), (OK, False))[1])
    started = time.monotonic()
    # When they are submitted together with a 0.3 s timeout
    results = sinks(server.url, concurrency=1, timeout=0.3).send(events(3))
    # Then the two that never got the connection time out with the one that did
    assert outcomes(results) == [Outcome.RETRY] * 3
    assert {r.error for r in results} == {"timed out after 0.3s"}
    assert time.monotonic() - started < 0.9


def test_the_capture_time_header_is_rfc3339_rounded_as_datetime_rounds():
    import datetime
    import random

    from skor_bridge.sinks.base import captured_at_text

    draw = random.Random(7)
    moments = [draw.uniform(1e9, 2e9) for _ in range(20_000)]
    # values on and around a half microsecond, where rounding goes either way
    moments += [round(draw.uniform(1.7e9, 1.8e9), 6) + k * 5e-7 for k in (-1, 1) for _ in range(5)]
    moments += [1_700_000_000.9999996, 1_700_000_000.0000005]
    for at in moments:
        expected = datetime.datetime.fromtimestamp(at, datetime.UTC)
        event = ChangeEvent("i", 1, "s", "t", "INSERT", "{}", captured_at=at)
        assert captured_at_text(event) == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), at
