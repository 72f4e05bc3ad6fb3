"""The webhook client's response parser, fed piece by piece (pure logic, no server).

The hostile-server tests (test_sink_webhook_hostile.py) check the limits end to end; these
check that an answer split anywhere parses the same, and the framing edge cases."""

from __future__ import annotations

import asyncio

import pytest

from skor_bridge.sinks import http1
from skor_bridge.sinks.http1 import ProtocolError


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


def answer(pieces: list[bytes]) -> tuple[int | BaseException, bool]:
    """Feed `pieces` to a connection; (status or error, whether it may be reused)."""
    loop = asyncio.new_event_loop()
    try:
        conn = http1._Connection(loop)
        conn.connection_made(_Transport())
        waiter = conn.request(b"POST / HTTP/1.1\r\n\r\n")
        for piece in pieces:
            conn.data_received(piece)
        assert waiter.done(), "no answer parsed"
        exc = waiter.exception()
        return (exc if exc is not None else waiter.result()), conn.reusable
    finally:
        loop.close()


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Pad: "
    + b"p" * 8000
    + b"\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


@pytest.mark.parametrize("split", ["whole", "bytewise", "pairs"])
def test_an_answer_split_anywhere_parses_the_same(split):
    pieces = {
        "whole": [CHUNKED],
        "bytewise": bytewise(CHUNKED),
        "pairs": [CHUNKED[i : i + 2] for i in range(0, len(CHUNKED), 2)],
    }[split]
    assert answer(pieces) == (200, True)


def test_the_same_content_length_said_twice_is_one_length():
    data = b"HTTP/1.1 201 X\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok"
    assert answer(bytewise(data)) == (201, True)


def test_a_body_past_the_cap_keeps_the_status_and_drops_the_connection():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    assert answer([head] + [chunk] * 8) == (200, False)
    # and a declared length past the cap is not waited for
    assert answer([b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n"]) == (200, False)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",  # no CRLF after data
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a hex size
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n Content-Length: 2\r\n\r\n",  # folded line
        b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",  # space before the colon
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 9,
    ],
)
def test_malformed_framing_is_a_protocol_error(data):
    result, reusable = answer(bytewise(data))
    assert isinstance(result, ProtocolError), result
    assert not reusable
