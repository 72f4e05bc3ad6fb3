"""What a bridge reports about itself over HTTP: /metrics, /healthz and /readyz.

    /metrics  Prometheus text of the bridge's registry
    /healthz  200 while the process runs (liveness)
    /readyz   200 when ready, 503 otherwise; a JSON body says why (readiness)

Ready means: a standby is always ready (its body says `"role": "standby"`), so probes keep
it in service to take over. The active instance is ready while its capture connection to
PostgreSQL works and no output's oldest in-flight event has been failing for longer than
`STUCK_AFTER` (an output that is merely behind, or retrying briefly, is still ready), and
no output is so far behind that it holds the log over `--retention-size`.

The server listens on 0.0.0.0 so that probes and scrapers from outside a container or pod
reach it; it serves nothing but these figures. It starts before leader election, so a
standby answers probes too.
"""

from __future__ import annotations

import http.server
import json
import logging
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

#: Address the server binds to; every interface, see the module docstring.
HOST = "0.0.0.0"


def readiness(active: bool, instance: str, database: bool,
              outputs: list[tuple[str, bool, Backlog]],
              holding: list[str] | None = None) -> tuple[bool, dict[str, Any]]:
    """(ready, body) as /readyz reports them; see the module docstring. `outputs` holds
    (name, failed, backlog) per output of the active instance; `holding`, the outputs that
    keep the log over --retention-size."""
    if not active:
        return True, {"ready": True, "role": "standby", "instance": instance}
    body: dict[str, Any] = {}
    for name, failed, state in outputs:
        held = name in (holding or [])
        ok = not failed and state.failing_seconds < STUCK_AFTER and not held
        body[name] = {"ready": ok, "pending": state.pending,
                      "lag_seconds": round(state.lag_seconds, 3),
                      "failing_seconds": round(state.failing_seconds, 3)}
        if held:
            body[name]["holding_log"] = True
    ready = database and all(o["ready"] for o in body.values())
    return ready, {"ready": ready, "role": "active", "instance": instance,
                   "database": database, "outputs": body}


class HealthServer:
    """Serves the bridge's figures from a daemon thread until `stop()`."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], Readiness],
                 port: int, host: str = HOST) -> None:
        self.registry = registry
        self.ready = ready
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
        registry, ready_now = self.registry, self.ready

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry),
                                CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ready, body = ready_now()
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
