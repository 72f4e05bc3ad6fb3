"""A webhook receiver for the compose example: one printed line per event, always 200.

GET /healthz answers 200 for the compose healthcheck. Standard library only, so it runs
in the plain python image.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            event = json.loads(body)
            line = (
                f"{event['op']:<6} {event['schema']}.{event['table']} "
                f"{json.dumps(event['data'], ensure_ascii=False)}"
            )
        except (ValueError, KeyError, TypeError):
            line = f"not a Skor body: {body[:200]!r}"
        print(f"{self.headers.get('webhook-id', '-')} {line}", flush=True)
        self._answer(200)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200 if self.path == "/healthz" else 404)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    # As PID 1 in a container, Python would ignore SIGTERM and be killed after a timeout.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"receiving webhooks on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
