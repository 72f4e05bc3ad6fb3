"""A small, bounded HTTP/1.1 client for the webhook sink: POST to one origin, many at once.

Why hand-written: measured in one run against the benchmark's receiver, aiohttp's client
cost 1.5-2.0 CPU-s per 10,000 POSTs and drained 4,300-6,000 events/s; this client costs
about 0.5 CPU-s and drains 13,000-22,000 events/s; driving requests by callbacks over one
shared read buffer later halved its cost again (README, dependency notes). It
drives kept-alive connections from the caller's asyncio loop and parses only what delivery
needs: the status line, Content-Length, Transfer-Encoding and Connection.

It treats the receiver as untrusted. Every line of an answer is capped (status line,
header and trailer lines, chunk-size lines with their extensions), as are the number of
header and trailer lines and interim (1xx) answers; parsing is incremental (each byte is
scanned once, whatever the receiver sends in how many pieces); at most `MAX_BODY` bytes of
a body are read, after which the status stands and the connection is dropped; framing
that could smuggle a second answer (Content-Length with Transfer-Encoding, differing
Content-Lengths) is refused; every request is bounded by one deadline. A violation fails
the attempt with a one-line `ProtocolError` and the connection is dropped.

What it does not do, on purpose: follow redirects (a 3xx is the answer), use proxies or
.netrc, retry a request that the receiver may have seen. The one exception to the last:
a request on a reused connection that fails before a single byte of the answer arrived is
sent once more on a new connection, since the receiver had closed the idle connection
(the same id is sent either way, so a duplicate is recognisable, as at-least-once implies).
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
import urllib.parse
from collections import deque
from typing import TYPE_CHECKING, Protocol

import certifi

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    #: What the client tells its owner when a request ends: the token given to `start()`,
    #: and the answer's status and Retry-After, or the error when there was no answer.
    Answer = Callable[[int, int, str | None, BaseException | None], None]

#: Most bytes of an answer's body read; the status is all delivery needs.
MAX_BODY = 64 * 1024
#: Longest status, header or trailer line, and most header (or trailer) lines per answer.
MAX_LINE = 8190
MAX_HEADERS = 128
#: Longest chunk-size line, extensions included (real ones are a few bytes).
MAX_CHUNK_LINE = 1024
#: Most interim (1xx) answers before the real one.
MAX_INTERIM = 8
#: Bytes read from a socket at once (into one buffer the connections share).
READ_SIZE = 64 * 1024
#: A request this close to its deadline when the timer fires is timed out with it.
DEADLINE_SLACK = 0.001

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ProtocolError(Exception):
    """The receiver answered something that is not HTTP/1.x, or broke a limit."""


class _Waiter(Protocol):
    """Who learns how a request ended: a future, or the client's `_Request`."""

    def done(self) -> bool: ...

    def set_result(self, result: int, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Connection(asyncio.BufferedProtocol):
    """One kept-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scratch: memoryview | None = None) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: _Waiter | None = None
        self._scratch = scratch if scratch is not None else memoryview(bytearray(READ_SIZE))
        self.closed = False
        self.reusable = True
        #: Bytes of the current answer received so far (0: the receiver said nothing yet).
        self.received = 0
        self._reset()

    def _reset(self) -> None:
        self._state = _HEAD
        self._status = 0
        self.retry_after: str | None = None
        self._left = 0
        self._body = 0
        self._scanned = 0  # bytes of `buffer` already searched for the current terminator
        self._line_start = 0  # where the head's current (unfinished) line starts
        self._lines = 0
        self._interim = 0

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool | None:
        self.closed = True  # seen even before connection_lost runs: never reuse it
        self.reusable = False
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._state == _UNTIL_CLOSE:
            self._finish()
        else:
            self._fail(exc or ConnectionResetError("connection closed by the receiver"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._scratch[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.waiter is None or self.waiter.done():
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.reusable = False
            return
        self.received += len(data)
        self.buffer += data
        try:
            self._parse()
        except (ProtocolError, ValueError) as exc:
            self._fail(ProtocolError(f"invalid HTTP response: {exc}"))
            self.abort()

    # -- requests ---------------------------------------------------------------------------

    def request(self, payload: bytes) -> asyncio.Future[int]:
        """Send one request; its status (or error) comes as the future's result."""
        future: asyncio.Future[int] = self.loop.create_future()
        self.send(payload, future)
        return future

    def send(self, payload: bytes, waiter: _Waiter) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.received = 0
        self.buffer.clear()
        self._reset()
        self.transport.write(payload)

    def abort(self) -> None:
        self.reusable = False
        self.buffer.clear()
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _finish(self, drop: bool = False) -> None:
        self._state = _DONE
        if self.buffer or drop:
            self.reusable = False  # more than one answer to one request, or a body left
            self.buffer.clear()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self._status)

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self) -> None:
        while self.buffer and self._state != _DONE:
            state = self._state
            if state == _HEAD:
                if not self._head():
                    return
            elif state in (_LENGTH, _CHUNK_DATA, _UNTIL_CLOSE):
                taken = (
                    len(self.buffer) if state == _UNTIL_CLOSE else min(self._left, len(self.buffer))
                )
                del self.buffer[:taken]
                self._left -= taken
                self._body += taken
                if state != _UNTIL_CLOSE and self._left == 0:
                    if state == _LENGTH:
                        self._finish()
                        return
                    self._state = _CHUNK_END
                if self._body > MAX_BODY:
                    self._finish(drop=True)  # the status stands; the rest is not read
                    return
            elif state == _CHUNK_END:
                if len(self.buffer) < 2:
                    return
                if self.buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                del self.buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                line = self._line(MAX_CHUNK_LINE, "chunk-size line")
                if line is None:
                    return
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 15 or size.strip(b"0123456789abcdefABCDEF"):
                    raise ProtocolError(f"chunk size {bytes(size[:20])!r}")
                self._left = int(size, 16)
                self._state = _CHUNK_DATA if self._left else _TRAILERS
                self._lines = 0
            else:  # _TRAILERS: lines up to an empty one
                line = self._line(MAX_LINE, "trailer line")
                if line is None:
                    return
                if not line:
                    self._finish()
                    return
                self._lines += 1
                if self._lines > MAX_HEADERS:
                    raise ProtocolError("too many trailer lines")

    def _line(self, cap: int, what: str) -> bytearray | None:
        """The next CRLF-terminated line (taken from the buffer), or None until it is
        complete. Resumes its search where the last one stopped."""
        buffer = self.buffer
        end = buffer.find(b"\r\n", max(0, self._scanned - 1))
        if end < 0 or end > cap:
            if end > cap or len(buffer) > cap:
                raise ProtocolError(f"{what} longer than {cap} bytes")
            self._scanned = len(buffer)
            return None
        line = buffer[:end]
        del buffer[: end + 2]
        self._scanned = 0
        return line

    def _head(self) -> bool:
        """Parse a complete response head if the buffer holds one; check the limits on
        what arrived so far otherwise (each byte is looked at once)."""
        buffer = self.buffer
        start = max(0, self._scanned - 3)
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            size = len(buffer)
            self._lines += buffer.count(b"\n", self._scanned, size)
            newline = buffer.rfind(b"\n", self._scanned, size)
            if newline >= 0:
                self._line_start = newline + 1
            self._scanned = size
            if size - self._line_start > MAX_LINE:
                raise ProtocolError(f"status or header line longer than {MAX_LINE} bytes")
            if self._lines > MAX_HEADERS + 1:
                raise ProtocolError(f"more than {MAX_HEADERS} header lines")
            return False
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        self._scanned = self._line_start = self._lines = 0
        if len(lines) > MAX_HEADERS + 1:
            raise ProtocolError(f"more than {MAX_HEADERS} header lines")
        if any(len(line) > MAX_LINE for line in lines):
            raise ProtocolError(f"status or header line longer than {MAX_LINE} bytes")
        self._parse_head(lines)
        return True

    def _parse_head(self, lines: list[bytes]) -> None:
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if (
            version not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(code) != 3
            or not code.isdigit()
            or rest[3:4] not in (b"", b" ")
        ):
            raise ProtocolError(f"status line {lines[0][:40]!r}")
        status = int(code)
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise ProtocolError("too many interim answers")
            return
        length: int | None = None
        encoding: bytes | None = None
        close = version == b"HTTP/1.0"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"header line {line[:40]!r}")  # also obsolete folding
            name = name.lower()
            if name == b"content-length":
                for item in value.split(b","):  # "5, 5" is one length said twice
                    item = item.strip()
                    if not item.isdigit() or len(item) > 18:
                        raise ProtocolError(f"Content-Length {value[:40]!r}")
                    if length is not None and int(item) != length:
                        raise ProtocolError("two different Content-Lengths")
                    length = int(item)
            elif name == b"transfer-encoding":
                encoding = value if encoding is None else encoding + b"," + value
            elif name == b"retry-after":
                self.retry_after = value.strip().decode("latin-1")
            elif name == b"connection":
                tokens = value.lower()
                close = b"close" in tokens or (close and b"keep-alive" not in tokens)
        if encoding is not None and length is not None:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        self._status = status
        self._body = 0
        self.reusable = self.reusable and not close
        if encoding is not None:
            if encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                self._state, self._scanned, self._lines = _CHUNK_SIZE, 0, 0
            else:  # another final coding: the body ends with the connection
                self._state, self.reusable = _UNTIL_CLOSE, False
        elif status in (204, 304) or length == 0:
            self._finish()
        elif length is not None:
            self._state, self._left = _LENGTH, length
            if length > MAX_BODY:
                self._finish(drop=True)  # not worth reading: the status is all we need
        else:
            self._state, self.reusable = _UNTIL_CLOSE, False


class _Request:
    """One POST on its way: the waiter its connection completes (like a future, without
    the loop round trip a future's callbacks cost)."""

    __slots__ = ("client", "token", "payload", "deadline", "conn", "reused", "finished")

    def __init__(self, client: Http1Client, token: int, payload: bytes, deadline: float) -> None:
        self.client = client
        self.token = token
        self.payload = payload
        self.deadline = deadline
        self.conn: _Connection | None = None
        self.reused = False
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, status: int) -> None:
        self.client._answered(self, status, None)

    def set_exception(self, exc: BaseException) -> None:
        self.client._answered(self, 0, exc)


class Http1Client:
    """POSTs bodies to one URL over at most `connections` kept-alive connections.

    Driven by the caller's asyncio loop, from one thread: `start()` sends a request at
    once (or queues it until a connection is free) and never blocks; `on_answer` is called
    from inside the loop when it ends. No task, future or timer per request: a busy output
    sends thousands a second, and each of those costs more CPU than the request itself.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        headers: Sequence[tuple[str, str]],
        connections: int,
        timeout: float,
        on_answer: Answer,
        ca_file: str | None = None,
    ) -> None:
        self.loop = loop
        self.on_answer = on_answer
        self.ca_file = ca_file
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.connections = connections
        self.timeout = timeout
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        fields = [("Host", host if default_port else f"{host}:{self.port}"), *headers]
        if parts.username is not None:
            # As requests did: credentials in the URL become Basic authentication.
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            fields = [(k, v) for k, v in fields if k.lower() != "authorization"]
            fields.append(("Authorization", f"Basic {token}"))
        self._prefix = (
            f"POST {target} HTTP/1.1\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in fields)
        ).encode("latin-1")
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        #: Requests holding one of the `connections` slots (sending, answered, connecting).
        self._busy: set[_Request] = set()
        #: Requests waiting for a slot, oldest first.
        self._waiting: deque[_Request] = deque()
        self._connecting: set[asyncio.Task[None]] = set()
        #: One timer for every deadline: it fires at the earliest and looks at them all.
        self._timer: asyncio.TimerHandle | None = None
        self._pump_due = False
        #: Every connection reads into this one buffer (the loop serves one at a time), so
        #: an answer costs no allocation of the transport's 256 KiB default read size.
        self._scratch = memoryview(bytearray(READ_SIZE))

    @property
    def active(self) -> int:
        """Requests started and not answered yet."""
        return len(self._busy) + len(self._waiting)

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # A private CA (common for internal receivers) replaces the public bundle.
            self._ssl = ssl.create_default_context(cafile=self.ca_file or certifi.where())
        return self._ssl

    def start(self, token: int, head: bytes, body: bytes) -> None:
        """POST `body` with the extra header lines `head` (CRLF-terminated, Latin-1).

        `on_answer(token, ...)` follows exactly once, within the timeout: the answer's
        status and Retry-After, or TimeoutError, OSError (ssl.SSLError included) or
        ProtocolError when there was no answer."""
        loop = self.loop
        payload = b"".join((self._prefix, head, b"Content-Length: %d\r\n\r\n" % len(body), body))
        request = _Request(self, token, payload, loop.time() + self.timeout)
        if not self._busy:
            self._drop_closed_idle()
        if self._timer is None:
            self._timer = loop.call_at(request.deadline, self._expire)
        if len(self._busy) < self.connections:
            self._busy.add(request)
            self._run(request)
        else:
            self._waiting.append(request)

    def _run(self, request: _Request) -> None:
        conn = self._idle.pop() if self._idle else None
        while conn is not None and (conn.closed or not conn.reusable):
            conn.abort()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            self._spawn_connect(request)
            return
        request.conn, request.reused = conn, True
        conn.send(request.payload, request)

    def _spawn_connect(self, request: _Request) -> None:
        task = self.loop.create_task(self._connect(request))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, request: _Request) -> None:
        loop = self.loop
        try:
            async with asyncio.timeout_at(request.deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._scratch),
                    self.host,
                    self.port,
                    ssl=self._context() if self.tls else None,
                    server_hostname=self.host if self.tls else None,
                )
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the answer
            self._answered(request, 0, exc)
            return
        if request.finished:  # timed out meanwhile: the connection serves the next one
            if len(self._idle) < self.connections:
                self._idle.append(conn)
            else:
                conn.abort()
            return
        request.conn, request.reused = conn, False
        conn.send(request.payload, request)

    def _answered(self, request: _Request, status: int, exc: BaseException | None) -> None:
        if request.finished:
            return
        conn = request.conn
        retry_after = None
        if conn is not None:
            if exc is None and conn.reusable and not conn.closed:
                retry_after = conn.retry_after
                self._idle.append(conn)
            else:
                retry_after = conn.retry_after if exc is None else None
                conn.abort()
                if (
                    exc is not None
                    and request.reused
                    and not conn.received
                    and not isinstance(exc, TimeoutError)
                ):
                    # A reused connection the receiver had closed: try once on a new one.
                    request.conn, request.reused = None, False
                    self._spawn_connect(request)
                    return
        self._end(request)
        self.on_answer(request.token, status, retry_after, exc)

    def _end(self, request: _Request) -> None:
        request.finished = True
        request.payload = b""
        self._busy.discard(request)
        if self._waiting and not self._pump_due:
            # Not at once: we may be inside the parser of the connection just freed.
            self._pump_due = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_due = False
        while self._waiting and len(self._busy) < self.connections:
            request = self._waiting.popleft()
            self._busy.add(request)
            self._run(request)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        earliest: float | None = None
        for request in [*self._busy, *self._waiting]:
            if request.deadline <= now + DEADLINE_SLACK:
                self._time_out(request)
            elif earliest is None or request.deadline < earliest:
                earliest = request.deadline
        if earliest is not None:
            self._timer = self.loop.call_at(earliest, self._expire)

    def _time_out(self, request: _Request) -> None:
        conn = request.conn
        if request in self._busy:
            self._end(request)
        else:
            request.finished = True
            self._waiting.remove(request)
        if conn is not None:
            conn.abort()  # its waiter is done: what the connection says now is ignored
        self.on_answer(request.token, 0, None, TimeoutError())

    def _drop_closed_idle(self) -> None:
        """Forget idle connections the receiver closed (or wrote to) while we were idle:
        the loop did not run meanwhile, so nothing told them."""
        if not self._idle:
            return
        fds: dict[int, _Connection] = {}
        for conn in self._idle:
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if conn.closed or not conn.reusable or sock is None:
                conn.abort()
            else:
                fds[sock.fileno()] = conn
        poller = select.poll()  # not select(): descriptors past 1024 are fine
        for fd in fds:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):  # EOF or stray bytes: not usable for a new request
            fds.pop(fd).abort()
        self._idle = list(fds.values())

    async def aclose(self) -> None:
        """Abandon every request (no answer follows) and drop every connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        requests = [*self._busy, *self._waiting]
        self._busy, self._waiting = set(), deque()
        for request in requests:
            request.finished = True
            if request.conn is not None:
                request.conn.abort()
        tasks, self._connecting = list(self._connecting), set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
