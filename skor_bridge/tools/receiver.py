"""A small webhook receiver: the demo's built-in endpoint, the benchmark's, the tests'.

It records every request (arrival time, headers, body) and answers with a status chosen
by a callable, so a test can make it fail for a while. HTTP/1.1 with keep-alive, so the
bridge's connection pool is exercised as it would be against a real service.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True, slots=True)
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    #: socketserver's default backlog is 5: hundreds of connections opened at once by the
    #: bridge would overflow it and wait for SYN retransmits (1 s, 3 s, ...).
    request_queue_size = 1024

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open_sockets: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.open_sockets.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        for sock in list(self.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Receiver:
    """Serve on 127.0.0.1:`port` (0 picks a free one) in a background thread."""

    def __init__(
        self,
        port: int = 0,
        respond: Callable[[Received], int] | None = None,
        on_request: Callable[[Received], None] | None = None,
        keep: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[Received] = []
        self.count = 0
        self.respond = respond or (lambda _request: 200)
        self.on_request = on_request
        self.keep = keep
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server = _Server(("127.0.0.1", port), self._handler())
        self.scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections, as a crashed receiver would."""
        self._server.shutdown()
        self._server.server_close()
        self._server.cut_connections()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def delivered(self) -> list[Received]:
        """Requests answered with 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.headers.get("x-receiver-status", "200")[0] == "2"]

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Block until `count` requests were answered 2xx (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._ok_count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    _ok_count = 0

    def _record(self, request: Received, status: int) -> None:
        with self._changed:
            self.count += 1
            if 200 <= status < 300:
                self._ok_count += 1
            if self.keep:
                request.headers["x-receiver-status"] = str(status)
                self.requests.append(request)
            self._changed.notify_all()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = self.rfile.read(length)
                except OSError:
                    body = b""
                if len(body) < length:
                    # The sender died mid-request: nothing was delivered, nothing to answer.
                    self.close_connection = True
                    return
                request = Received(
                    at=time.time(),
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                status = receiver.respond(request)
                if receiver.on_request is not None and 200 <= status < 300:
                    receiver.on_request(request)
                receiver._record(request, status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
