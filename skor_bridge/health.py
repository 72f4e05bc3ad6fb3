"""What a bridge reports about itself over HTTP: /metrics, /healthz and /readyz.

    /metrics  Prometheus text of the bridge's registry
    /healthz  200 while the process runs (liveness)
    /readyz   200 when ready, 503 otherwise; a JSON body says why (readiness)

Ready means: a standby is always ready (its body says `"role": "standby"`), so probes keep
it in service to take over. The active instance is ready while its capture connection to
PostgreSQL works and no output's oldest in-flight event has been failing for longer than
`STUCK_AFTER` (an output that is merely behind, or retrying briefly, is still ready).

The server listens on 0.0.0.0 so that probes and scrapers from outside a container or pod
reach it; it serves nothing but these figures. It starts before leader election, so a
standby answers probes too.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from skor_bridge.errors import StartupError

if TYPE_CHECKING:
    from skor_bridge.bridge import Bridge
    from skor_bridge.capture.base import Source
    from skor_bridge.dispatch.delivery import OutputWorker, Pending

log = logging.getLogger("skor_bridge.health")

#: An output whose oldest in-flight event has failed for this long makes /readyz fail.
STUCK_AFTER = 300.0

#: Address the server binds to; every interface, see the module docstring.
HOST = "0.0.0.0"


@dataclass(frozen=True)
class OutputState:
    """One output's backlog as its worker sees it, read from another thread."""

    #: Events in the worker's window not finished yet, log events it has not read, and
    #: parked events.
    pending: int
    #: Age of the oldest event the worker holds; 0 when it holds none.
    lag_seconds: float
    #: How long the oldest failing in-flight event has been failing; 0 when none fails.
    failing_seconds: float


def source_head(source: Source | None) -> int | None:
    """The newest position the source has produced, when it knows one."""
    return None if source is None else source.head


def output_state(worker: OutputWorker, head: int | None) -> OutputState:
    """Read a worker's lanes without locking: they change under us, so copy first and
    accept a figure that is a moment old."""
    now_wall, now_mono = time.time(), time.monotonic()
    lanes: list[list[Pending]] = []
    for _ in range(3):
        try:
            lanes = [list(lane) for lane in list(worker.lanes.values())]
            break
        except RuntimeError:  # changed size while copied
            continue
    heads = [lane[0] for lane in lanes if lane]
    # Parked events (a stuck row set aside) are finished for the window but not delivered;
    # an operator's retry or replay is extra work, not backlog, and its age is not lag.
    parked = sum(1 for lane in lanes for p in lane if p.parked)
    window = worker.window
    unfinished = max(0, len(window) - len(window.finished))
    unread = max(0, head - worker.read_position) if head is not None else 0
    captured = [p.event.captured_at for p in heads
                if (p.redelivery_id is None or p.parked)
                and p.event.captured_at]
    failing = [now_mono - p.first_try for p in heads if p.attempts > 0 and p.last_error]
    return OutputState(
        pending=unfinished + unread + parked,
        lag_seconds=max(0.0, now_wall - min(captured)) if captured else 0.0,
        failing_seconds=max(failing, default=0.0),
    )


def readiness(bridge: Bridge) -> tuple[bool, dict[str, Any]]:
    """(ready, body) as /readyz reports them; see the module docstring."""
    if not bridge.active:
        return True, {"ready": True, "role": "standby", "instance": bridge.instance}
    source = bridge.source
    database = source is not None and source.healthy()
    head = source_head(source)
    outputs: dict[str, Any] = {}
    for worker in list(bridge.workers):
        state = output_state(worker, head)
        ok = worker.failed is None and state.failing_seconds < STUCK_AFTER
        outputs[worker.name] = {"ready": ok, "pending": state.pending,
                                "lag_seconds": round(state.lag_seconds, 3),
                                "failing_seconds": round(state.failing_seconds, 3)}
    ready = database and all(o["ready"] for o in outputs.values())
    return ready, {"ready": ready, "role": "active", "instance": bridge.instance,
                   "database": database, "outputs": outputs}


class HealthServer:
    """Serves the bridge's figures from a daemon thread until `stop()`."""

    def __init__(self, bridge: Bridge, port: int, host: str = HOST) -> None:
        self.bridge = bridge
        try:
            self._server = http.server.ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise StartupError(f"metrics port {port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", HOST, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        bridge = self.bridge

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(bridge.metrics.registry),
                                CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ready, body = readiness(bridge)
                    self._reply(200 if ready else 503, json.dumps(body).encode() + b"\n",
                                "application/json")
                else:
                    self._reply(404, b"not found\n", "text/plain; charset=utf-8")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapers poll every few seconds; their requests are not news

        return Handler
