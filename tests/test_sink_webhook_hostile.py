"""Hostile HTTP servers against the webhook sink (issue 9, item 10).

Raw-socket servers answer with endless lines, endless bodies, bytes one at a time,
smuggling framing or nothing at all. Each must be a failed attempt (RETRY) with a one-line
error within the request timeout, with the bridge's memory bounded: the sink reads at most
MAX_BODY of an answer and caps every line, header count and framing element.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from skor_bridge.config import WebhookConfig
from skor_bridge.event import ChangeEvent
from skor_bridge.sinks.base import Outcome
from skor_bridge.sinks.webhook import WebhookSink

#: An answer: the bytes to stream (an iterator may be endless), written until the client
#: goes away or the test ends.
Answer = Callable[[], Iterator[bytes]]

CHUNK = b"x" * 65536


class HostileServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.stopped = threading.Event()
        self.sent = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook?token=s3cret"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request (small); its body is not needed
                for data in self.answer():
                    if self.stopped.is_set():
                        return
                    conn.sendall(data)
                    self.sent += len(data)
                time.sleep(30)  # then hang: the client must give up on its own
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


def forever(prefix: bytes, repeat: bytes) -> Answer:
    def answer() -> Iterator[bytes]:
        yield prefix
        while True:
            yield repeat

    return answer


def slowly(data: bytes, interval: float) -> Answer:
    def answer() -> Iterator[bytes]:
        for i in range(len(data)):
            yield data[i : i + 1]
            time.sleep(interval)

    return answer


def once(data: bytes) -> Answer:
    return lambda: iter([data])


HOSTILE = {
    "endless chunk-size line": forever(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1" * 65536
    ),
    "endless chunk extension": forever(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=", CHUNK
    ),
    "endless header line": forever(b"HTTP/1.1 200 OK\r\nX-Long: ", CHUNK),
    "endless status line": forever(b"HTTP/1.1 200 ", CHUNK),
    "endless headers": forever(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n" * 8192),
    "endless trailers": forever(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n",
        b"X-Trailer: b\r\n" * 4096,
    ),
    "slowloris status line": slowly(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1.0),
    "garbage": once(b"\x00\xff garbage \r\n\r\n" * 100),
    "content-length and chunked (smuggling)": once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    ),
    "two content-lengths": once(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "never answers": lambda: iter([]),
}


def event() -> ChangeEvent:
    return ChangeEvent(
        id="id-1",
        position=1,
        schema="public",
        table="t",
        op="INSERT",
        data='{"id":1}',
        key='{"id":1}',
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_server_is_a_failed_attempt_with_one_line_in_bounded_time_and_memory(name):
    # Given a server that answers in a hostile way, and a 2 s request timeout
    server = HostileServer(HOSTILE[name])
    sink = WebhookSink("webhook", WebhookConfig(url=server.url, timeout=2.0))
    before = peak_rss_mib()
    try:
        # When one event is sent
        started = time.monotonic()
        (result,) = sink.send([event()])
        took = time.monotonic() - started
    finally:
        sink.close()
        server.stop()
    # Then it is a failed attempt, said in one line without the URL's token
    assert result.outcome is Outcome.RETRY, (name, result)
    assert result.error and "\n" not in result.error and "s3cret" not in result.error
    # Within the request timeout, and the process did not grow with what was streamed
    assert took < 2.0 + 1.5, (name, took)
    assert peak_rss_mib() - before < 40, (name, server.sent)


def test_a_huge_body_after_a_2xx_is_read_no_further_than_the_cap():
    # Given a receiver that answers 200 and then streams an endless body
    server = HostileServer(
        forever(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n", CHUNK)
    )
    sink = WebhookSink("webhook", WebhookConfig(url=server.url, timeout=2.0))
    before = peak_rss_mib()
    try:
        started = time.monotonic()
        (result,) = sink.send([event()])
        took = time.monotonic() - started
    finally:
        sink.close()
        server.stop()
    # Then the 200 counts (the receiver accepted the event), its body is dropped with the
    # connection after MAX_BODY, and neither time nor memory followed the stream
    assert result.outcome is Outcome.DELIVERED
    assert took < 1.5
    assert peak_rss_mib() - before < 40
