"""The benchmark's webhook receiver, in its own process, and a client that measures it.

`skor_bridge.tools.receiver` (http.server, a thread per connection) tops out at a few thousand
requests a second, which would make the receiver, not the bridge, the figure measured.
This one is an asyncio Protocol that parses only what it must: the header block, the
Content-Length, and the row's `"id":` in the body. Every request is answered 200 with
keep-alive, and its arrival time and row id are kept in flat arrays.

The parent reads the running count from shared memory (no round trip) and asks for
summaries or the arrivals themselves over a pipe.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import random
import re
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.sharedctypes import Synchronized

#: The only answer the receiver gives.
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

_ROW_ID = re.compile(rb'"id"\s*:\s*(-?\d+)')
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)

#: Seconds the parent waits for the receiver process to start listening.
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Summary:
    """What arrived: requests, distinct row ids, and the first and last arrival (epoch s)."""

    count: int
    distinct: int
    first: float
    last: float


class _Log:
    def __init__(self, count: Any, below: Any) -> None:
        self.count = count
        #: Requests for row ids up to `limit` (a backfill's rows), counted live.
        self.below = below
        self.limit = -1
        self.ids = array.array("q")
        self.times = array.array("d")
        #: Seconds every answer waits, and the share of answers that wait `slow_delay`.
        self.delay = 0.0
        self.slow_share = 0.0
        self.slow_delay = 0.0
        self.random = random.Random(1)

    def reset(self) -> None:
        self.ids = array.array("q")
        self.times = array.array("d")
        self.count.value = 0
        self.below.value = 0
        self.limit = -1


class _Connection(asyncio.Protocol):
    def __init__(self, log: _Log, connections: set[_Connection]) -> None:
        self.log = log
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connections = connections
        connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        now = time.time()
        answered = 0
        start = 0
        log = self.log
        while True:
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                break
            match = _LENGTH.search(buffer, start, end + 2)
            total = end + 4 + (int(match[1]) if match else 0)
            if len(buffer) < total:
                break
            found = _ROW_ID.search(buffer, end + 4, total)
            row_id = int(found[1]) if found else -1
            log.ids.append(row_id)
            if 0 <= row_id <= log.limit:
                log.below.value += 1
            log.times.append(now)
            answered += 1
            start = total
        if answered:
            del buffer[:start]
            log.count.value += answered
            assert self.transport is not None
            if not log.delay and not log.slow_share:
                self.transport.write(RESPONSE * answered)
                return
            loop = asyncio.get_running_loop()
            for _ in range(answered):
                late = log.slow_share and log.random.random() < log.slow_share
                loop.call_later(log.slow_delay if late else log.delay, self._answer)

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


def _serve(pipe: Connection, count: Any, below: Any) -> None:
    # Ctrl-C reaches the whole process group; the parent stops us in its own order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    log = _Log(count, below)
    connections: set[_Connection] = set()

    def listen(port: int) -> asyncio.Server:
        return loop.run_until_complete(
            loop.create_server(
                lambda: _Connection(log, connections),
                "127.0.0.1",
                port,
                backlog=1024,
                reuse_address=True,
            )
        )

    server = listen(0)
    port = server.sockets[0].getsockname()[1]
    pipe.send(port)

    def on_command() -> None:
        try:
            command = pipe.recv()
        except EOFError:
            loop.stop()
            return
        if command == "summary":
            ids = log.ids
            first = log.times[0] if log.times else 0.0
            last = log.times[-1] if log.times else 0.0
            pipe.send(Summary(len(ids), len(set(ids)), first, last))
        elif command == "arrivals":
            pipe.send((log.ids.tobytes(), log.times.tobytes()))
        elif command == "reset":
            log.reset()
            pipe.send(True)
        elif command == "stop":
            loop.stop()
        elif command == "down":  # as a crashed receiver: refuse and cut connections
            server.close()
            for connection in list(connections):
                if connection.transport is not None:
                    connection.transport.abort()
            pipe.send(True)
        elif command == "up":
            loop.create_task(_up())
        elif isinstance(command, tuple) and command[0] == "watch":
            log.limit = command[1]
            log.below.value = 0
            pipe.send(True)
        elif isinstance(command, tuple) and command[0] == "delay":
            log.delay, log.slow_share, log.slow_delay = command[1:]
            pipe.send(True)

    async def _up() -> None:
        nonlocal server
        await server.wait_closed()
        server = await loop.create_server(
            lambda: _Connection(log, connections),
            "127.0.0.1",
            port,
            backlog=1024,
            reuse_address=True,
        )
        pipe.send(True)

    loop.add_reader(pipe.fileno(), on_command)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


class FastReceiver:
    """A receiver process on 127.0.0.1; `count` is live, the rest comes over a pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._count: Synchronized[int] = context.RawValue("q", 0)
        self._below: Synchronized[int] = context.RawValue("q", 0)
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, self._count, self._below),
            name="bench-receiver",
            daemon=True,
        )
        self.port = 0

    def start(self) -> FastReceiver:
        self._process.start()
        if not self._pipe.poll(START_TIMEOUT):
            self.stop()
            raise RuntimeError("the benchmark receiver did not start")
        self.port = int(self._pipe.recv())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def count(self) -> int:
        return int(self._count.value)

    def watch(self, limit: int) -> None:
        """Count, from now on, the requests for row ids 0..`limit` (see `below`)."""
        self._pipe.send(("watch", limit))
        self._pipe.recv()

    @property
    def below(self) -> int:
        """Requests for row ids up to the watched limit since `watch`; live."""
        return int(self._below.value)

    def _ask(self, command: str) -> Any:
        self._pipe.send(command)
        return self._pipe.recv()

    def summary(self) -> Summary:
        result: Summary = self._ask("summary")
        return result

    def arrivals(self) -> dict[int, float]:
        """Row id -> first arrival time (epoch seconds)."""
        raw_ids, raw_times = self._ask("arrivals")
        ids, times = array.array("q"), array.array("d")
        ids.frombytes(raw_ids)
        times.frombytes(raw_times)
        first: dict[int, float] = {}
        for row_id, at in zip(ids, times, strict=True):
            first.setdefault(row_id, at)
        return first

    def reset(self) -> None:
        self._ask("reset")

    def set_delay(
        self, delay: float = 0.0, slow_share: float = 0.0, slow_delay: float = 0.0
    ) -> None:
        """Answer every request `delay` s late, and a `slow_share` of them `slow_delay` s."""
        self._pipe.send(("delay", delay, slow_share, slow_delay))
        self._pipe.recv()

    def down(self) -> None:
        """Stop listening and cut every connection, as a crashed receiver would."""
        self._ask("down")

    def up(self) -> None:
        """Listen again on the same port."""
        self._ask("up")

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self._pipe.send("stop")
            except OSError:
                pass
            self._process.join(2)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(2)

    def __enter__(self) -> FastReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- the receiver's own ceiling -----------------------------------------------------------------

#: A body the size of a typical event, as the bridge would send it.
_SAMPLE_BODY = (
    b'{"data": {"id":1234567,"customer":4242,"amount":42.42,"status":"new",'
    b'"note":"benchmark row","created_at":"2026-01-01T00:00:00.000000+00:00"}, '
    b'"table": "skor_bench", "schema": "public", "op": "INSERT"}'
)


def _request(port: int) -> bytes:
    return (
        b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"webhook-id: 0b7e1c1e-1111-4c4c-8888-123456789abc\r\nContent-Length: %d\r\n\r\n"
        % (port, len(_SAMPLE_BODY))
    ) + _SAMPLE_BODY


class _Client(asyncio.Protocol):
    """One kept-alive connection sending the next request as soon as the answer is in."""

    def __init__(self, request: bytes, done: list[int]) -> None:
        self.request = request
        self.done = done
        self.pending = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        answers, self.pending = divmod(self.pending, len(RESPONSE))
        if answers:
            self.done[0] += answers
            assert self.transport is not None
            self.transport.write(self.request)


def _hammer(port: int, connections: int, seconds: float, result: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    done = [0]
    request = _request(port)

    async def main() -> tuple[int, float]:
        transports = []
        for _ in range(connections):
            transport, _ = await loop.create_connection(
                lambda: _Client(request, done), "127.0.0.1", port
            )
            transports.append(transport)
        await asyncio.sleep(0.2)  # let every connection get going
        start, before = time.monotonic(), done[0]
        await asyncio.sleep(seconds)
        counted, elapsed = done[0] - before, time.monotonic() - start
        for transport in transports:
            transport.close()
        return counted, elapsed

    try:
        result.send(loop.run_until_complete(main()))
    finally:
        loop.close()


def measure_ceiling(seconds: float, clients: int = 2, connections: int = 8) -> float:
    """Requests per second a fresh receiver answers, hammered by `clients` processes with
    `connections` kept-alive connections each (one request in flight per connection, as
    the bridge sends them)."""
    context = multiprocessing.get_context("spawn")
    with FastReceiver() as receiver:
        pipes, processes = [], []
        for _ in range(clients):
            parent, child = context.Pipe()
            process = context.Process(
                target=_hammer, daemon=True, args=(receiver.port, connections, seconds, child)
            )
            process.start()
            pipes.append(parent)
            processes.append(process)
        try:
            total = 0.0
            for pipe in pipes:
                if not pipe.poll(seconds + 30):
                    raise RuntimeError("the receiver's load client did not finish")
                counted, elapsed = pipe.recv()
                total += counted / elapsed
            return total
        finally:
            for process in processes:
                process.join(2)
                if process.is_alive():
                    process.terminate()
