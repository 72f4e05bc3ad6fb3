"""Readiness as /readyz computes it, from what each worker reports (no server, no database)."""

from __future__ import annotations

from skor_bridge.dispatch.delivery import Backlog
from skor_bridge.health import STUCK_AFTER, readiness


def test_a_standby_is_always_ready():
    ready, body = readiness(False, "i1", False, [])
    assert ready and body == {"ready": True, "role": "standby", "instance": "i1"}


def test_an_active_instance_is_ready_while_outputs_are_merely_behind():
    ready, body = readiness(True, "i1", True, [("hook", False, Backlog(500, 30.0, 5.0))])
    assert ready
    assert body["outputs"]["hook"] == {
        "ready": True,
        "pending": 500,
        "lag_seconds": 30.0,
        "failing_seconds": 5.0,
    }


def test_a_stuck_or_failed_output_or_a_lost_database_is_not_ready():
    stuck = Backlog(1, 1.0, STUCK_AFTER + 1)
    assert not readiness(True, "i1", True, [("hook", False, stuck)])[0]
    assert not readiness(True, "i1", True, [("hook", True, Backlog(0, 0.0, 0.0))])[0]
    assert not readiness(True, "i1", False, [("hook", False, Backlog(0, 0.0, 0.0))])[0]


def test_the_health_server_caps_connections_and_times_out_idle_ones(monkeypatch):
    import socket
    import time

    from prometheus_client import CollectorRegistry

    from skor_bridge import health

    monkeypatch.setattr(health, "READ_TIMEOUT", 0.5)
    server = health.HealthServer(CollectorRegistry(), lambda: (True, {"ready": True}), 0).start()
    sockets: list[socket.socket] = []

    def connect() -> socket.socket:
        sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        return sockets[-1]

    try:
        # Given as many idle connections as the server serves at once
        idle = [connect() for _ in range(health.MAX_CONNECTIONS)]
        time.sleep(0.2)
        # When one more arrives, Then it is closed at once rather than held
        extra = connect()
        assert extra.recv(1) == b""
        # And the idle ones are closed after the read timeout
        for sock in idle:
            assert sock.recv(1) == b""
        # Then a probe is answered, with keep-alive
        probe = connect()
        for _ in range(2):
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert probe.recv(1000).startswith(b"HTTP/1.1 200 OK")
        # And a request head over the limit is refused by closing the connection
        probe.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * health.MAX_HEAD + b"\r\n\r\n")
        assert probe.recv(1000) == b""
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
