"""The health port cannot stop delivery: idle connections are capped and timed out, so a
thousand of them under a 1024-descriptor limit leave the bridge its PostgreSQL sessions."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import execute, wait_until
from tests.test_metrics import free_port, get

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def _limit_descriptors() -> None:
    """Runs in the bridge's process before exec: the common 1024 soft limit."""
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


@pytest.mark.slow
def test_delivery_continues_with_a_thousand_idle_connections_on_the_health_port(
    dsn, capture_table, receiver, tmp_path
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip("this test needs 1,200 descriptors for its own idle connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    # Given a bridge limited to 1024 descriptors, serving its health port
    capture_table(TABLE, "items")
    port = free_port()
    log_path = tmp_path / "bridge.log"
    with log_path.open("ab") as log:
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skor_bridge",
                "run",
                "--dsn",
                dsn,
                "--webhook",
                f"hook={receiver.url}",
                "--metrics-port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_descriptors,
        )
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: "is now active" in log_path.read_text(), message="active")
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10) g")
        assert receiver.wait_for(10, timeout=30)

        # When a thousand connections to the health port stay open, sending nothing
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            idle.append(sock)
        time.sleep(1)
        # And every PostgreSQL session of the bridge is cut, so it must open new ones
        execute(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'skor-bridge%' AND datname = current_database()",
        )
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(11, 110) g")

        # Then delivery goes on
        wait_until(
            lambda: (
                {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}
                >= set(range(1, 111))
            ),
            timeout=60,
            message=f"rows 11-110 delivered; bridge log:\n{log_path.read_text()[-3000:]}",
        )

        # And the health port answers probes again once the idle connections timed out
        def healthz() -> bool:
            try:
                return get(f"http://127.0.0.1:{port}/healthz")[0] == 200
            except OSError:
                return False

        wait_until(healthz, timeout=30, message="/healthz answering")
        assert bridge.poll() is None
    finally:
        for sock in idle:
            sock.close()
        bridge.terminate()
        try:
            bridge.wait(30)
        except subprocess.TimeoutExpired:
            bridge.kill()
