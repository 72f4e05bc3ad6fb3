"""What a bridge reports about itself over HTTP: /metrics, /healthz and /readyz.

    /metrics  Prometheus text of the bridge's registry
    /healthz  200 while the process runs (liveness)
    /readyz   200 when ready, 503 otherwise; a JSON body says why (readiness)

Ready means: a standby is always ready (its body says `"role": "standby"`), so probes keep
it in service to take over. The active instance is ready while its capture connection to
PostgreSQL works and no output's oldest in-flight event has been failing for longer than
`STUCK_AFTER` (an output that is merely behind, or retrying briefly, is still ready), and
no output is so far behind that it holds the log over `--retention-size`.

The server listens on 127.0.0.1 unless `--metrics-host` says otherwise (the container
images set 0.0.0.0 so that probes and scrapers from outside the pod reach it); it serves
nothing but these figures, and is bounded (see HealthServer) so that no number of clients
can take the descriptors delivery needs. It starts before leader election, so a standby
answers probes too.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from skor_bridge.errors import StartupError

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry

    from skor_bridge.dispatch.delivery import Backlog

#: What /readyz serves: (ready, JSON body).
Readiness = tuple[bool, dict[str, Any]]

log = logging.getLogger(__name__)

#: An output whose oldest in-flight event has failed for this long makes /readyz fail.
STUCK_AFTER = 300.0

#: Address the server binds to unless --metrics-host says otherwise: this machine only.
HOST = "127.0.0.1"

#: Connections served at once; more are closed on arrival (see HealthServer).
MAX_CONNECTIONS = 32

#: Seconds a connection may take to send a request, and to take its answer.
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0

#: Largest request head (request line and headers) accepted, in bytes.
MAX_HEAD = 8192

#: Connections the kernel queues before the server accepts them.
BACKLOG = 128

_TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def readiness(
    active: bool,
    instance: str,
    database: bool,
    outputs: list[tuple[str, bool, Backlog]],
    holding: list[str] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(ready, body) as /readyz reports them; see the module docstring. `outputs` holds
    (name, failed, backlog) per output of the active instance; `holding`, the outputs that
    keep the log over --retention-size."""
    if not active:
        return True, {"ready": True, "role": "standby", "instance": instance}
    body: dict[str, Any] = {}
    for name, failed, state in outputs:
        held = name in (holding or [])
        ok = not failed and state.failing_seconds < STUCK_AFTER and not held
        body[name] = {
            "ready": ok,
            "pending": state.pending,
            "lag_seconds": round(state.lag_seconds, 3),
            "failing_seconds": round(state.failing_seconds, 3),
        }
        if held:
            body[name]["holding_log"] = True
    ready = database and all(o["ready"] for o in body.values())
    return ready, {
        "ready": ready,
        "role": "active",
        "instance": instance,
        "database": database,
        "outputs": body,
    }


class HealthServer:
    """Serves the bridge's figures from one asyncio thread until `stop()`.

    Bounded so that the port can never starve delivery of file descriptors: at most
    `MAX_CONNECTIONS` connections are served at once (more are closed as soon as they are
    accepted), a connection that sends no complete request within `READ_TIMEOUT` (or does
    not take its answer within `WRITE_TIMEOUT`) is closed, and a request head larger than
    `MAX_HEAD` is refused. Keep-alive works, so a scraper reuses one connection.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], Readiness],
        port: int,
        host: str = HOST,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.host = host
        self._open = 0
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, host, port, limit=MAX_HEAD, backlog=BACKLOG)
            )
        except OSError as exc:
            self._loop.close()
            raise StartupError(f"metrics port {port}: {explain_os_error(exc)}") from None
        self._thread = threading.Thread(target=self._loop.run_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """One line, never a traceback: the likely cause is running out of descriptors."""
        exc = context.get("exception")
        detail = explain_os_error(exc) if isinstance(exc, OSError) else (exc or "")
        log.warning(
            "health port: %s%s", context.get("message", "error"), f": {detail}" if detail else ""
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.transport.abort()  # frees the descriptor at once
            return
        self._open += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                parts = head.split(b"\r\n", 1)[0].split()
                method = parts[0] if parts else b""
                path = parts[1].decode("latin-1").split("?", 1)[0] if len(parts) > 1 else ""
                status, body, content_type = self._answer(method, path)
                close = b"connection: close" in head.lower() or (
                    len(parts) > 2 and parts[2] == b"HTTP/1.0"
                )
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + (body if method != b"HEAD" else b"")
                )
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                if close:
                    return
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            OSError,
        ):
            return  # idle, too big, gone: the connection is simply closed
        finally:
            self._open -= 1
            writer.transport.abort()

    def _answer(self, method: bytes, path: str) -> tuple[int, bytes, str]:
        if method not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", _TEXT
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return 200, b"ok\n", _TEXT
        if path == "/readyz":
            ready, body = self.ready()
            return 200 if ready else 503, json.dumps(body).encode() + b"\n", "application/json"
        return 404, b"not found\n", _TEXT


def explain_os_error(exc: BaseException) -> str:
    """An OSError's text, saying so when the cause is running out of file descriptors."""
    # asyncio rewords bind errors; the errno's own text is the one line we want.
    text = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return (
            f"{text} (EMFILE: the process is out of file descriptors; raise its limit, "
            "e.g. ulimit -n)"
        )
    return text
